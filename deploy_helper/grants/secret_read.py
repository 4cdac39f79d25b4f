"""``secret-read``: one managed statement in a Secrets Manager secret's resource policy.

Typical use: a secret in a shared-services account that each target account's deploy
role (or workload role) must read. Every put sends ``BlockPublicPolicy=True``, so
Secrets Manager itself refuses a policy that would grant broad access, and the
bootstrap role denies a put without it. (Reading the secret across accounts also
needs its KMS key: a ``kms-key-policy`` or ``kms-grant`` grant on that key.)

Size limit: ``PutResourcePolicy``'s ``ResourcePolicy`` is at most 20,480 characters
(AWS Secrets Manager API Reference, PutResourcePolicy, "Length Constraints: Minimum
length of 1. Maximum length of 20480."). The broker counts bytes of compact JSON,
never fewer than characters.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError

from deploy_helper.grants.base import GrantSpec
from deploy_helper.grants.resource_policy import ResourcePolicyKind, principal_block
from deploy_helper.trust.identifiers import AccountId, RoleArn, StrictStr, arn_matcher, service_arn_re

SECRETS_POLICY_LIMIT = 20_480
SECRET_ARN_RE = service_arn_re("secretsmanager", r"secret:(?P<name>[A-Za-z0-9/_+=.@-]{1,512})-[A-Za-z0-9]{6}")
SecretArn = Annotated[
    StrictStr,
    arn_matcher(
        SECRET_ARN_RE,
        "Secrets Manager secret ARN (the full ARN, with the 6-character suffix)",
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db/password-AbC123",
    ),
]
#: The only actions a secret-read grant can carry.
ACCESS_LEVELS: dict[str, tuple[str, ...]] = {
    "read": ("secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"),
}


class SecretReadGrant(GrantSpec):
    """Permission for ``principal`` to read ``secret``.

    Example::

        kind: secret-read
        secret: arn:aws:secretsmanager:us-east-1:111111111111:secret:deploy/token-AbC123
        principal: arn:aws:iam::333333333333:role/deploy
        access: read
    """

    kind: Literal["secret-read"]
    secret: SecretArn
    principal: RoleArn | AccountId
    access: Literal["read"]


class SecretRead(ResourcePolicyKind[SecretReadGrant]):
    """A statement in a secret's resource policy (``Get/Put/DeleteResourcePolicy``)."""

    kind: ClassVar[str] = "secret-read"
    spec: ClassVar[type[GrantSpec]] = SecretReadGrant
    service: ClassVar[str] = "secretsmanager"
    permissions: ClassVar[tuple[str, ...]] = (
        "secretsmanager:GetResourcePolicy",
        "secretsmanager:PutResourcePolicy",
        "secretsmanager:DeleteResourcePolicy",
    )
    size_limit: ClassVar[int | None] = SECRETS_POLICY_LIMIT
    access_levels: ClassVar[dict[str, tuple[str, ...]]] = ACCESS_LEVELS
    policy_name: ClassVar[str] = "resource policy"
    limit_owner: ClassVar[str] = "Secrets Manager"
    example: ClassVar[dict[str, Any]] = {
        "kind": "secret-read",
        "secret": "arn:aws:secretsmanager:us-east-1:111111111111:secret:deploy/token-AbC123",
        "principal": "arn:aws:iam::333333333333:role/deploy",
        "access": "read",
    }
    variants: ClassVar[dict[str, Any]] = {
        "principal": "333333333333",
        "secret": "arn:aws:secretsmanager:us-east-1:111111111111:secret:deploy/other-AbC123",
    }

    def target_account(self, spec: SecretReadGrant) -> str:
        return _arn(spec.secret).group("account")

    def region(self, spec: SecretReadGrant) -> str | None:
        return _arn(spec.secret).group("region")

    def resource(self, spec: SecretReadGrant) -> str:
        return spec.secret

    def principal(self, spec: SecretReadGrant) -> str:
        return spec.principal

    def resource_label(self, resource: str) -> str:
        return f"secret {_arn(resource).group('name')}"

    def statement(self, spec: SecretReadGrant) -> dict[str, Any]:
        return {
            "Sid": self.grant_id(spec),
            "Effect": "Allow",
            "Principal": principal_block(spec.principal),
            "Action": list(ACCESS_LEVELS[spec.access]),
            "Resource": spec.secret,
        }

    def get_policy_text(self, client: Any, resource: str) -> str | None:
        return str(client.get_resource_policy(SecretId=resource).get("ResourcePolicy") or "") or None

    def put_policy_text(self, client: Any, resource: str, text: str) -> None:
        client.put_resource_policy(SecretId=resource, ResourcePolicy=text, BlockPublicPolicy=True)

    def delete_policy(self, client: Any, resource: str) -> None:
        try:
            client.delete_resource_policy(SecretId=resource)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise


def _arn(arn: str) -> Any:
    m = SECRET_ARN_RE.fullmatch(arn)
    if m is None:
        raise RuntimeError(f"unparsed secret ARN reached a grant kind: {arn!r}")
    return m
