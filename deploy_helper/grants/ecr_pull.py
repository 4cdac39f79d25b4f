"""``ecr-pull``: one managed statement in an ECR repository policy.

Typical use: the image a pipeline builds in the tooling account, pulled by each
target account's deploy role -- or by Lambda itself for a container-image function,
through the service principal ``lambda.amazonaws.com`` bound to the function's
account (``aws:SourceAccount``) or ARN (``aws:SourceArn``).

Size limit: ``SetRepositoryPolicy``'s ``policyText`` is at most 10,240 characters
(Amazon ECR API Reference, SetRepositoryPolicy, "Length Constraints: Minimum length
of 0. Maximum length of 10240."). The broker writes compact JSON and counts bytes,
which are never fewer than characters.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import model_validator

from deploy_helper.grants.base import GrantSpec
from deploy_helper.grants.resource_policy import ResourcePolicyKind, check_binding, principal_block, source_condition
from deploy_helper.trust.identifiers import (
    AccountId,
    RoleArn,
    SourceArn,
    StrictStr,
    arn_matcher,
    service_arn_re,
)

ECR_POLICY_LIMIT = 10_240
REPOSITORY_ARN_RE = service_arn_re(
    "ecr", r"repository/(?P<name>[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*)"
)
RepositoryArn = Annotated[
    StrictStr,
    arn_matcher(REPOSITORY_ARN_RE, "ECR repository ARN", "arn:aws:ecr:eu-west-1:123456789012:repository/service-a/api"),
]
#: The only actions an ecr-pull grant can carry.
ACCESS_LEVELS: dict[str, tuple[str, ...]] = {
    "pull": ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"),
}


class EcrPullGrant(GrantSpec):
    """Permission for ``principal`` to pull images from ``repository``.

    Example::

        kind: ecr-pull
        repository: arn:aws:ecr:us-east-1:111111111111:repository/service-a/api
        principal: arn:aws:iam::333333333333:role/deploy
        access: pull
    """

    kind: Literal["ecr-pull"]
    repository: RepositoryArn
    principal: RoleArn | AccountId | Literal["lambda.amazonaws.com"]
    access: Literal["pull"]
    source_arn: SourceArn | None = None
    source_account: AccountId | None = None

    @model_validator(mode="after")
    def _bound(self) -> EcrPullGrant:
        check_binding(self.principal, self.source_arn, self.source_account)
        return self


class EcrPull(ResourcePolicyKind[EcrPullGrant]):
    """A statement in an ECR repository policy (``Get/Set/DeleteRepositoryPolicy``)."""

    kind: ClassVar[str] = "ecr-pull"
    spec: ClassVar[type[GrantSpec]] = EcrPullGrant
    service: ClassVar[str] = "ecr"
    permissions: ClassVar[tuple[str, ...]] = (
        "ecr:GetRepositoryPolicy",
        "ecr:SetRepositoryPolicy",
        "ecr:DeleteRepositoryPolicy",
    )
    size_limit: ClassVar[int | None] = ECR_POLICY_LIMIT
    access_levels: ClassVar[dict[str, tuple[str, ...]]] = ACCESS_LEVELS
    principal_forms: ClassVar[frozenset[str]] = frozenset({"roles", "accounts", "services"})
    policy_name: ClassVar[str] = "repository policy"
    limit_owner: ClassVar[str] = "ECR"
    example: ClassVar[dict[str, Any]] = {
        "kind": "ecr-pull",
        "repository": "arn:aws:ecr:us-east-1:111111111111:repository/service-a/api",
        "principal": "arn:aws:iam::333333333333:role/deploy",
        "access": "pull",
    }
    variants: ClassVar[dict[str, Any]] = {
        "principal": "333333333333",
        "repository": "arn:aws:ecr:us-east-1:111111111111:repository/service-a/worker",
    }

    def target_account(self, spec: EcrPullGrant) -> str:
        return _arn(spec.repository).group("account")

    def region(self, spec: EcrPullGrant) -> str | None:
        return _arn(spec.repository).group("region")

    def resource(self, spec: EcrPullGrant) -> str:
        return spec.repository

    def principal(self, spec: EcrPullGrant) -> str:
        return spec.principal

    def resource_label(self, resource: str) -> str:
        return _arn(resource).group("name")

    def statement(self, spec: EcrPullGrant) -> dict[str, Any]:
        # A repository policy's statements apply to the repository itself: no Resource element.
        statement: dict[str, Any] = {
            "Sid": self.grant_id(spec),
            "Effect": "Allow",
            "Principal": principal_block(spec.principal),
            "Action": list(ACCESS_LEVELS[spec.access]),
        }
        condition = source_condition(spec.source_arn, spec.source_account)
        if condition:
            statement["Condition"] = condition
        return statement

    def get_policy_text(self, client: Any, resource: str) -> str | None:
        m = _arn(resource)
        try:
            response = client.get_repository_policy(registryId=m.group("account"), repositoryName=m.group("name"))
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "RepositoryPolicyNotFoundException":
                return None
            raise
        return str(response.get("policyText") or "") or None

    def put_policy_text(self, client: Any, resource: str, text: str) -> None:
        m = _arn(resource)
        client.set_repository_policy(registryId=m.group("account"), repositoryName=m.group("name"), policyText=text)

    def delete_policy(self, client: Any, resource: str) -> None:
        m = _arn(resource)
        try:
            client.delete_repository_policy(registryId=m.group("account"), repositoryName=m.group("name"))
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "RepositoryPolicyNotFoundException":
                raise


def _arn(arn: str) -> Any:
    m = REPOSITORY_ARN_RE.fullmatch(arn)
    if m is None:
        raise RuntimeError(f"unparsed repository ARN reached a grant kind: {arn!r}")
    return m
