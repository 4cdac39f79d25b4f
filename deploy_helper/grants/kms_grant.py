"""``kms-grant``: a KMS grant on a customer managed key.

Typical use: a pipeline's artifact key that each target account's deploy
role must be able to decrypt with. Grants are separate objects on the key
(no policy document to rewrite), identified by a deterministic ``Name``;
``CreateGrant`` with the same name and parameters is idempotent in AWS, and
the broker lists grants first so it reports ``unchanged`` without a write.
Removal uses ``RevokeGrant`` (the broker acts in the key's account).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, get_args

from botocore.exceptions import ClientError
from pydantic import Field, field_validator

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.grants.base import Allowed, GrantKind, GrantSpec, ItemPlan, Operation, ResourcePlan, in_parallel
from deploy_helper.trust.identifiers import KMS_KEY_ARN_RE, AccountId, KmsKeyArn, RoleArn

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Operations a grant may carry. Grant-management operations (CreateGrant,
#: RetireGrant) are deliberately absent: a grantee must never be able to pass
#: access on.
KmsOperation = Literal[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "DescribeKey",
]


class KmsGrantSpec(GrantSpec):
    """A grant of ``operations`` on ``key`` to ``grantee``.

    Example::

        kind: kms-grant
        key: arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab
        grantee: arn:aws:iam::333333333333:role/deploy
        operations: [Decrypt, DescribeKey]
    """

    kind: Literal["kms-grant"]
    key: KmsKeyArn
    grantee: RoleArn | AccountId
    operations: Annotated[list[KmsOperation], Field(min_length=1, max_length=7)]

    @field_validator("operations")
    @classmethod
    def _unique_sorted(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("operations must not repeat")
        return sorted(value)


class KmsGrant(GrantKind[KmsGrantSpec]):
    """A named KMS grant (``ListGrants``/``CreateGrant``/``RevokeGrant``)."""

    kind: ClassVar[str] = "kms-grant"
    spec: ClassVar[type[GrantSpec]] = KmsGrantSpec
    service: ClassVar[str] = "kms"
    permissions: ClassVar[tuple[str, ...]] = ("kms:ListGrants", "kms:CreateGrant", "kms:RevokeGrant")
    operation_names: ClassVar[tuple[str, ...]] = get_args(KmsOperation)
    variants: ClassVar[dict[str, Any]] = {
        "operations": ["Decrypt"],
        "grantee": "arn:aws:iam::333333333333:role/other",
    }
    example: ClassVar[dict[str, Any]] = {
        "kind": "kms-grant",
        "key": "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "grantee": "arn:aws:iam::333333333333:role/deploy",
        "operations": ["Decrypt", "DescribeKey"],
    }

    def target_account(self, spec: KmsGrantSpec) -> str:
        return _arn(spec.key).group("account")

    def region(self, spec: KmsGrantSpec) -> str | None:
        return _arn(spec.key).group("region")

    def resource(self, spec: KmsGrantSpec) -> str:
        return spec.key

    def principal(self, spec: KmsGrantSpec) -> str:
        return spec.grantee

    def grantee_principal(self, spec: KmsGrantSpec) -> str:
        return f"arn:aws:iam::{spec.grantee}:root" if spec.grantee.isdigit() else spec.grantee

    def read(self, client: Any, resource: str) -> list[dict[str, Any]]:
        grants: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"KeyId": resource, "Limit": 100}
        while True:
            page = client.list_grants(**kwargs)
            grants.extend(page.get("Grants", []))
            marker = page.get("NextMarker")
            if not page.get("Truncated") or not marker:
                return grants
            kwargs["Marker"] = marker

    def plan(
        self,
        state: list[dict[str, Any]],
        resource: str,
        items: Sequence[tuple[KmsGrantSpec, Operation]],
        allowed: Sequence[Allowed] | None = None,
    ) -> ResourcePlan:
        # A name may be carried by more than one grant (KMS does not make names unique):
        # every copy that is not exactly the designed grant is revoked with it.
        managed: dict[str, list[dict[str, Any]]] = {}
        for g in state:
            if g.get("Name", "").startswith("DeployHelper"):
                managed.setdefault(g["Name"], []).append(g)
        before = _summary(g for copies in managed.values() for g in copies)
        plans: list[ItemPlan] = []
        writes: list[tuple[str, Any]] = []
        for spec, operation in items:
            name = self.grant_id(spec)
            copies = managed.get(name, [])
            stale = [g for g in copies if not self._same(g, spec)]
            if operation == "apply":
                if copies and not stale:
                    plans.append(ItemPlan(spec, operation, "unchanged", "grant already present"))
                    continue
                if len(stale) == len(copies):
                    writes.append(("create", spec))
                writes.extend(("revoke", g["GrantId"]) for g in stale if g.get("GrantId"))
                managed[name] = [
                    {
                        "Name": name,
                        "GranteePrincipal": self.grantee_principal(spec),
                        "Operations": list(spec.operations),
                    }
                ]
                plans.append(ItemPlan(spec, operation, "applied"))
            else:
                if not copies:
                    plans.append(ItemPlan(spec, operation, "absent", "grant not present"))
                    continue
                writes.extend(("revoke", g["GrantId"]) for g in copies if g.get("GrantId"))
                managed.pop(name)
                plans.append(ItemPlan(spec, operation, "revoked"))
        after = _summary(g for copies in managed.values() for g in copies)
        return ResourcePlan(resource, before, after, plans, writes, state)

    def write(self, client: Any, plan: ResourcePlan) -> None:
        """One call per grant; grants are separate objects on the key, so calls run concurrently."""

        def create(spec: KmsGrantSpec) -> None:
            client.create_grant(
                KeyId=plan.resource,
                GranteePrincipal=self.grantee_principal(spec),
                Operations=list(spec.operations),
                Name=self.grant_id(spec),
            )

        def revoke(grant_id: str) -> None:
            try:
                client.revoke_grant(KeyId=plan.resource, GrantId=grant_id)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "NotFoundException":
                    raise

        in_parallel([functools.partial(create if op == "create" else revoke, value) for op, value in plan.writes])

    def present(self, state: list[dict[str, Any]], spec: KmsGrantSpec) -> bool:
        name = self.grant_id(spec)
        return any(g.get("Name") == name and self._same(g, spec) for g in state)

    # -- drift (pure): grants are keyed by GrantId (KMS does not make names unique) --
    def managed(self, state: list[dict[str, Any]]) -> dict[str, Any]:
        return {g["GrantId"]: g for g in state if str(g.get("Name", "")).startswith(PRODUCT_PREFIX)}

    def accounts_for(
        self, state: list[dict[str, Any]], spec: KmsGrantSpec, references: dict[str, list[str]] | None = None
    ) -> set[str]:
        """The exact copies when the grant is in force (other copies are unexplained); else every copy."""
        name = self.grant_id(spec)
        copies = [g for g in state if g.get("Name") == name and g.get("GrantId")]
        exact = [g for g in copies if self._same(g, spec)]
        return {g["GrantId"] for g in (exact or copies)}

    def altered(self, state: list[dict[str, Any]], spec: KmsGrantSpec, references: Any = None) -> bool:
        return any(g.get("Name") == self.grant_id(spec) for g in state)

    def foreign(self, state: list[dict[str, Any]], specs: Sequence[KmsGrantSpec]) -> list[dict[str, Any]]:
        wanted = {self.grantee_principal(s) for s in specs}
        return [
            g
            for g in state
            if not str(g.get("Name", "")).startswith(PRODUCT_PREFIX) and g.get("GranteePrincipal") in wanted
        ]

    def plan_removal(self, state: list[dict[str, Any]], resource: str, ids: Sequence[str]) -> ResourcePlan:
        gone = set(ids)
        managed = self.managed(state)
        before = _summary(managed.values())
        after = _summary(g for gid, g in managed.items() if gid not in gone)
        writes = [("revoke", gid) for gid in sorted(gone) if gid in managed]
        return ResourcePlan(resource, before, after, [], writes, state)

    def _same(self, grant: dict[str, Any], spec: KmsGrantSpec) -> bool:
        return grant.get("GranteePrincipal") == self.grantee_principal(spec) and sorted(
            grant.get("Operations", [])
        ) == list(spec.operations)


def _summary(grants: Any) -> list[dict[str, Any]]:
    """The broker's grants on a key, in a stable order, for digests and diffs."""
    return sorted(
        (
            {
                "Name": g["Name"],
                "GranteePrincipal": g.get("GranteePrincipal"),
                "Operations": sorted(g.get("Operations", [])),
            }
            for g in grants
        ),
        key=lambda g: (g["Name"], g["GranteePrincipal"] or "", g["Operations"]),
    )


def _arn(arn: str) -> Any:
    m = KMS_KEY_ARN_RE.fullmatch(arn)
    if m is None:
        raise RuntimeError(f"unparsed key ARN reached a grant kind: {arn!r}")
    return m
