"""``kms-key-policy``: one managed statement in a KMS key policy.

For what a KMS grant cannot do (DESIGN §5): a principal that uses the key through a
service that needs key-policy access (``kms:ViaService``), or a key shared with a
whole account. Deny by default holds as for every kind: only a rule of this kind
lets a caller ask for it, so key-policy statements exist only where a rule asks.

Lockout safety: the broker adds and removes only statements whose ``Sid`` it owns,
so the key's own statements -- the administrators' and the account root's -- are
never touched, and every put sends ``BypassPolicyLockoutSafetyCheck=False`` (the
bootstrap role also denies a put that bypasses the check). A key policy cannot be
deleted: the key's own statements always remain.

Size limit: 32 KB (32,768 bytes), the key policy document size quota on KMS's
quotas page; the current API model allows longer documents, so the figure is marked
*check*: the broker refuses past 32,768 bytes before sending, and also turns a
``LimitExceededException`` from KMS into the same size error.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from botocore.exceptions import ClientError

from deploy_helper.exceptions import ExecutionError, PolicySizeError
from deploy_helper.grants.base import GrantSpec
from deploy_helper.grants.resource_policy import ResourcePolicyKind, principal_block
from deploy_helper.trust.identifiers import KMS_KEY_ARN_RE, AccountId, KmsKeyArn, RoleArn, ServicePrincipal

KMS_KEY_POLICY_LIMIT = 32 * 1024
#: The only actions a key-policy grant can carry. Never key administration, never
#: ``kms:CreateGrant``: a grantee must not be able to pass access on.
ACCESS_LEVELS: dict[str, tuple[str, ...]] = {
    "decrypt": ("kms:Decrypt", "kms:DescribeKey"),
    "encrypt-decrypt": (
        "kms:Decrypt",
        "kms:DescribeKey",
        "kms:Encrypt",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
    ),
}


class KmsKeyPolicyGrant(GrantSpec):
    """A statement letting ``principal`` use ``key`` at a named level, optionally only via a service.

    Example::

        kind: kms-key-policy
        key: arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab
        principal: arn:aws:iam::333333333333:role/deploy
        access: decrypt
        via_service: secretsmanager.us-east-1.amazonaws.com
    """

    kind: Literal["kms-key-policy"]
    key: KmsKeyArn
    principal: RoleArn | AccountId
    access: Literal["decrypt", "encrypt-decrypt"]
    #: Only when the request comes through this service (``kms:ViaService``).
    via_service: ServicePrincipal | None = None


class KmsKeyPolicy(ResourcePolicyKind[KmsKeyPolicyGrant]):
    """A statement in a KMS key policy (``GetKeyPolicy``/``PutKeyPolicy``)."""

    kind: ClassVar[str] = "kms-key-policy"
    spec: ClassVar[type[GrantSpec]] = KmsKeyPolicyGrant
    service: ClassVar[str] = "kms"
    permissions: ClassVar[tuple[str, ...]] = ("kms:GetKeyPolicy", "kms:PutKeyPolicy")
    size_limit: ClassVar[int | None] = KMS_KEY_POLICY_LIMIT
    access_levels: ClassVar[dict[str, tuple[str, ...]]] = ACCESS_LEVELS
    policy_name: ClassVar[str] = "key policy"
    limit_owner: ClassVar[str] = "KMS"
    example: ClassVar[dict[str, Any]] = {
        "kind": "kms-key-policy",
        "key": "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "principal": "arn:aws:iam::333333333333:role/deploy",
        "access": "decrypt",
        "via_service": "secretsmanager.us-east-1.amazonaws.com",
    }
    variants: ClassVar[dict[str, Any]] = {
        "access": "encrypt-decrypt",
        "principal": "333333333333",
        "via_service": "s3.us-east-1.amazonaws.com",
    }

    def target_account(self, spec: KmsKeyPolicyGrant) -> str:
        return _arn(spec.key).group("account")

    def region(self, spec: KmsKeyPolicyGrant) -> str | None:
        return _arn(spec.key).group("region")

    def resource(self, spec: KmsKeyPolicyGrant) -> str:
        return spec.key

    def principal(self, spec: KmsKeyPolicyGrant) -> str:
        return spec.principal

    def resource_label(self, resource: str) -> str:
        return f"key {_arn(resource).group('key_id')}"

    def statement(self, spec: KmsKeyPolicyGrant) -> dict[str, Any]:
        # In a key policy, Resource "*" means "this key" (it cannot name another).
        statement: dict[str, Any] = {
            "Sid": self.grant_id(spec),
            "Effect": "Allow",
            "Principal": principal_block(spec.principal),
            "Action": list(ACCESS_LEVELS[spec.access]),
            "Resource": "*",
        }
        if spec.via_service:
            statement["Condition"] = {"StringEquals": {"kms:ViaService": spec.via_service}}
        return statement

    def get_policy_text(self, client: Any, resource: str) -> str | None:
        return str(client.get_key_policy(KeyId=resource, PolicyName="default").get("Policy") or "") or None

    def put_policy_text(self, client: Any, resource: str, text: str) -> None:
        try:
            client.put_key_policy(
                KeyId=resource, PolicyName="default", Policy=text, BypassPolicyLockoutSafetyCheck=False
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "LimitExceededException":
                raise PolicySizeError(
                    f"KMS refused the key policy of {self.resource_label(resource)} as too large "
                    f"({len(text.encode())} bytes); grant to fewer, broader principals or remove unused statements"
                ) from exc
            raise

    def delete_policy(self, client: Any, resource: str) -> None:
        raise ExecutionError(
            f"the key policy of {self.resource_label(resource)} would have no statement left; a key policy "
            "cannot be removed, and the broker never removes the key's own statements: check the key policy by hand"
        )


def _arn(arn: str) -> Any:
    m = KMS_KEY_ARN_RE.fullmatch(arn)
    if m is None:
        raise RuntimeError(f"unparsed key ARN reached a grant kind: {arn!r}")
    return m
