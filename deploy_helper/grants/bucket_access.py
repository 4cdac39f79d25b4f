"""``bucket-access``: one managed statement in an S3 bucket policy.

Typical use: a pipeline's artifact bucket that every target account's deploy
role must read. Access is one of the named levels below, never free-form
actions. The bucket policy is read-modify-written as a whole, so the broker
holds a per-bucket lock around read → plan → write (see ``deploy_helper.locks``)
and only ever adds or removes statements whose ``Sid`` it owns; every other
statement is written back exactly as AWS returned it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from botocore.exceptions import ClientError

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.exceptions import PolicySizeError
from deploy_helper.grants.base import (
    MERGE_PRINCIPALS,
    Allowed,
    GrantKind,
    GrantSpec,
    ItemPlan,
    Operation,
    ResourcePlan,
    managed_id,
)
from deploy_helper.identifiers import AccountId, BucketName, Region, RoleArn, S3Prefix
from deploy_helper.policydoc import compact_size, find_statement, load_policy, normalize_principal

if TYPE_CHECKING:
    from collections.abc import Sequence

S3_POLICY_LIMIT = 20 * 1024
#: Sid prefix of a statement shared by several grants (``merge-principals``).
SHARED_PREFIX = f"{PRODUCT_PREFIX}Shared"
AccessLevel = Literal["read", "write", "read-write"]

#: The only actions a bucket grant can carry: (object actions, bucket actions).
ACCESS_ACTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "read": (("s3:GetObject", "s3:GetObjectVersion"), ("s3:ListBucket", "s3:GetBucketLocation")),
    "write": (
        ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"),
        ("s3:ListBucketMultipartUploads", "s3:GetBucketLocation"),
    ),
    "read-write": (
        (
            "s3:GetObject",
            "s3:GetObjectVersion",
            "s3:PutObject",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
        ),
        ("s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetBucketLocation"),
    ),
}


class BucketAccessGrant(GrantSpec):
    """Access for ``principal`` to ``bucket`` (owned by ``account``) at a named level.

    Example::

        kind: bucket-access
        bucket: tooling-artifacts-111111111111
        account: "111111111111"
        principal: arn:aws:iam::333333333333:role/deploy
        access: read
        prefix: service-a/
    """

    kind: Literal["bucket-access"]
    bucket: BucketName
    account: AccountId
    principal: RoleArn | AccountId
    access: AccessLevel
    prefix: S3Prefix | None = None
    region: Region | None = None


class BucketAccess(GrantKind[BucketAccessGrant]):
    """A statement in a bucket policy (``Get/Put/DeleteBucketPolicy``)."""

    kind: ClassVar[str] = "bucket-access"
    spec: ClassVar[type[GrantSpec]] = BucketAccessGrant
    service: ClassVar[str] = "s3"
    permissions: ClassVar[tuple[str, ...]] = (
        "s3:GetBucketPolicy",
        "s3:PutBucketPolicy",
        "s3:DeleteBucketPolicy",
    )
    size_limit: ClassVar[int | None] = S3_POLICY_LIMIT
    compactions: ClassVar[tuple[str, ...]] = (MERGE_PRINCIPALS,)
    serialize_writes: ClassVar[bool] = True
    access_levels: ClassVar[dict[str, tuple[str, ...]]] = {
        level: tuple(sorted(set(objects + buckets))) for level, (objects, buckets) in ACCESS_ACTIONS.items()
    }
    resource_names_account: ClassVar[bool] = False
    variants: ClassVar[dict[str, Any]] = {"access": "write", "prefix": "x/", "principal": "333333333333"}
    example: ClassVar[dict[str, Any]] = {
        "kind": "bucket-access",
        "bucket": "tooling-artifacts-111111111111",
        "account": "111111111111",
        "principal": "arn:aws:iam::333333333333:role/deploy",
        "access": "read",
    }

    def target_account(self, spec: BucketAccessGrant) -> str:
        return spec.account

    def region(self, spec: BucketAccessGrant) -> str | None:
        return spec.region

    def resource(self, spec: BucketAccessGrant) -> str:
        return f"arn:aws:s3:::{spec.bucket}"

    def principal(self, spec: BucketAccessGrant) -> str:
        return spec.principal

    def statement(self, spec: BucketAccessGrant) -> dict[str, Any]:
        object_actions, bucket_actions = ACCESS_ACTIONS[spec.access]
        bucket_arn = self.resource(spec)
        if spec.prefix:
            # List permission cannot be limited to a prefix in the same statement
            # without a condition that would also apply to object actions.
            bucket_actions = tuple(a for a in bucket_actions if a == "s3:GetBucketLocation")
        objects = f"{bucket_arn}/{spec.prefix or ''}*"
        principal = _aws_principal(spec)
        return {
            "Sid": self.grant_id(spec),
            "Effect": "Allow",
            "Principal": {"AWS": principal},
            "Action": sorted(object_actions + bucket_actions),
            "Resource": [bucket_arn, objects],
        }

    def read(self, client: Any, resource: str) -> dict[str, Any] | None:
        bucket = resource.rsplit(":", 1)[1]
        try:
            text = client.get_bucket_policy(Bucket=bucket)["Policy"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchBucketPolicy":
                return None
            raise
        return load_policy(text)

    def plan(
        self,
        state: dict[str, Any] | None,
        resource: str,
        items: Sequence[tuple[BucketAccessGrant, Operation]],
        allowed: Sequence[Allowed] | None = None,
    ) -> ResourcePlan:
        """Apply or revoke ``items``; compact (merge principals) only if exact statements would not fit.

        Applying: a grant already in force (its own statement, or its principal in the
        shared statement of its access and prefix) is ``unchanged``. A grant whose rule
        allows ``merge-principals`` joins an existing shared statement of its access and
        prefix (it costs one principal's bytes instead of a statement's, and its shared
        statement is where its rule put its peers). The rest get their own statements if
        the whole policy then fits; if it does not, every grant of the request whose rule
        allows merging goes into the shared statement of its access and prefix (including
        those of the request that now have their own statement), and each other grant gets
        its own statement while it fits and is refused, naming the limit and the remedy,
        when it does not. Revoking removes the grant's own statement, or its principal
        from the shared statement (the statement goes with its last principal).
        """
        allowances = list(allowed) if allowed is not None else [None] * len(items)
        before = json.loads(json.dumps(state)) if state is not None else None
        after: dict[str, Any] = (
            json.loads(json.dumps(state)) if state is not None else {"Version": "2012-10-17", "Statement": []}
        )
        plans: list[ItemPlan | None] = [None] * len(items)
        merged: dict[int, str] = {}  # item -> Sid of the shared statement it went into
        changed = False

        def may_merge(i: int) -> bool:
            a = allowances[i]
            return a is not None and MERGE_PRINCIPALS in a.compaction

        pending: list[int] = []
        convertible: list[int] = []
        for i, (spec, operation) in enumerate(items):
            where = self._where(after, spec)
            if operation == "apply":
                if where is None:
                    pending.append(i)
                    continue
                plans[i] = ItemPlan(spec, operation, "unchanged", "statement already present")
                if where == "shared":
                    merged[i] = self.shared_sid(spec)
                elif may_merge(i):
                    convertible.append(i)
            elif where is None:
                plans[i] = ItemPlan(spec, operation, "absent", "statement not present")
            else:
                if where == "exact":
                    after["Statement"] = [s for s in after["Statement"] if s.get("Sid") != self.grant_id(spec)]
                else:
                    self._leave_shared(after, spec)
                    merged[i] = self.shared_sid(spec)
                plans[i] = ItemPlan(spec, "revoke", "revoked")
                changed = True

        # 1. grants whose rule allows merging join an existing shared statement of their kind
        rest: list[int] = []
        for i in pending:
            spec = items[i][0]
            if may_merge(i) and find_statement(after, self.shared_sid(spec)) is not None:
                candidate = self._join_shared(after, spec)
                if compact_size(candidate) <= S3_POLICY_LIMIT:
                    after = candidate
                    merged[i] = self.shared_sid(spec)
                    plans[i] = ItemPlan(spec, "apply", "applied")
                    changed = True
                    continue
            rest.append(i)
        # 2. the others each with its own statement, if the whole policy then fits
        exact = self._with_statements(after, [items[i][0] for i in rest])
        if compact_size(exact) <= S3_POLICY_LIMIT:
            after = exact
            for i in rest:
                plans[i] = ItemPlan(items[i][0], "apply", "applied")
            changed = changed or bool(rest)
        else:
            # 3. compaction: merge what the rules allow, then each other grant while it fits
            for i in convertible:
                spec = items[i][0]
                candidate = self._join_shared(self._with_statements(after, [], drop=self.grant_id(spec)), spec)
                if compact_size(candidate) <= compact_size(after):
                    after = candidate
                    merged[i] = self.shared_sid(spec)
                    plans[i] = ItemPlan(spec, "apply", "applied", "moved from its own statement into a shared one")
                    changed = True
            for i in rest:
                spec = items[i][0]
                candidate = self._join_shared(after, spec) if may_merge(i) else self._with_statements(after, [spec])
                size = compact_size(candidate)
                if size > S3_POLICY_LIMIT:
                    plans[i] = ItemPlan(spec, "apply", "failed", self._too_large(spec, size, allowances[i]))
                    continue
                after = candidate
                if may_merge(i):
                    merged[i] = self.shared_sid(spec)
                plans[i] = ItemPlan(spec, "apply", "applied")
                changed = True
        for i, sid in merged.items():
            plan = plans[i]
            assert plan is not None
            shared = find_statement(after, sid)
            members = len(_members(shared)) if shared is not None else 0
            if plan.outcome in ("applied", "unchanged"):
                plan.compaction = f"merged into {sid} with {members} principals"
            elif plan.outcome == "revoked":
                plan.compaction = f"removed from {sid}, {members} principals remain"
        final: dict[str, Any] | None = after if after["Statement"] else None
        writes: list[Any] = [final] if changed else []
        done = [p for p in plans if p is not None]
        assert len(done) == len(items)
        return ResourcePlan(resource, before, final if changed else before, done, writes, state)

    # -- plan helpers (pure) -------------------------------------------------
    def shared_sid(self, spec: BucketAccessGrant) -> str:
        """The Sid of the statement shared by this bucket's grants of one access level and prefix."""
        identity = {"bucket": spec.bucket, "access": spec.access, "prefix": spec.prefix or ""}
        return managed_id(identity).replace(PRODUCT_PREFIX, SHARED_PREFIX, 1)

    def shared_statement(self, spec: BucketAccessGrant, principals: Sequence[str]) -> dict[str, Any]:
        """The shared statement: the grant's own actions and resources, each member's principal."""
        values = sorted(set(principals))
        return {
            **self.statement(spec),
            "Sid": self.shared_sid(spec),
            "Principal": {"AWS": values[0] if len(values) == 1 else values},
        }

    def _where(self, doc: dict[str, Any], spec: BucketAccessGrant) -> Literal["exact", "shared"] | None:
        current = find_statement(doc, self.grant_id(spec))
        if current is not None and self._same(current, spec):
            return "exact"
        shared = find_statement(doc, self.shared_sid(spec))
        if shared is not None and self._same_shape(shared, spec) and _aws_principal(spec) in _members(shared):
            return "shared"
        return None

    def _join_shared(self, doc: dict[str, Any], spec: BucketAccessGrant) -> dict[str, Any]:
        sid = self.shared_sid(spec)
        shared = find_statement(doc, sid)
        members = _members(shared) if shared is not None and self._same_shape(shared, spec) else set()
        statement = self.shared_statement(spec, [*members, _aws_principal(spec)])
        if shared is None:
            return {**doc, "Statement": [*doc["Statement"], statement]}
        return {**doc, "Statement": [statement if s.get("Sid") == sid else s for s in doc["Statement"]]}

    def _leave_shared(self, doc: dict[str, Any], spec: BucketAccessGrant) -> None:
        sid = self.shared_sid(spec)
        shared = find_statement(doc, sid)
        assert shared is not None
        members = _members(shared) - {_aws_principal(spec)}
        replacement = [self.shared_statement(spec, sorted(members))] if members else []
        out: list[dict[str, Any]] = []
        for s in doc["Statement"]:
            out.extend(replacement if s.get("Sid") == sid else [s])
        doc["Statement"] = out

    def _with_statements(
        self, doc: dict[str, Any], specs: Sequence[BucketAccessGrant], drop: str | None = None
    ) -> dict[str, Any]:
        sids = {self.grant_id(spec) for spec in specs} | ({drop} if drop else set())
        kept = [s for s in doc["Statement"] if s.get("Sid") not in sids]
        return {**doc, "Statement": kept + [self.statement(spec) for spec in specs]}

    @staticmethod
    def _too_large(spec: BucketAccessGrant, size: int, allowed: Allowed | None) -> str:
        rule = f"rule {allowed.rule_id}" if allowed is not None else "the rule that allows the grant"
        can_merge = allowed is not None and MERGE_PRINCIPALS in allowed.compaction
        remedy = (
            "grant to fewer, broader principals (an account instead of each role) or remove unused statements"
            if can_merge
            else f"allow compaction: [{MERGE_PRINCIPALS}] in {rule}, or grant to fewer, broader principals "
            "(an account instead of each role), or remove unused statements"
        )
        return PolicySizeError(
            f"the bucket policy of {spec.bucket} would grow to {size} bytes, over S3's {S3_POLICY_LIMIT}-byte "
            f"limit for a bucket policy; {remedy}"
        ).message

    def write(self, client: Any, plan: ResourcePlan) -> None:
        bucket = plan.resource.rsplit(":", 1)[1]
        for document in plan.writes:
            if document is None:
                client.delete_bucket_policy(Bucket=bucket)
            else:
                client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(document, separators=(",", ":")))

    def present(self, state: dict[str, Any] | None, spec: BucketAccessGrant) -> bool:
        """In force as its own statement or as a principal of its shared statement."""
        return state is not None and self._where(state, spec) is not None

    def _same(self, current: dict[str, Any], spec: BucketAccessGrant) -> bool:
        desired = self.statement(spec)
        return self._same_shape(current, spec) and normalize_principal(current.get("Principal")) == normalize_principal(
            desired["Principal"]
        )

    def _same_shape(self, current: dict[str, Any], spec: BucketAccessGrant) -> bool:
        """Same effect, actions and resources as the grant's statement, no condition."""
        desired = self.statement(spec)
        return (
            current.get("Effect") == "Allow"
            and _as_set(current.get("Action")) == _as_set(desired["Action"])
            and _as_set(current.get("Resource")) == _as_set(desired["Resource"])
            and "Condition" not in current
        )


def _as_set(value: Any) -> frozenset[str]:
    return frozenset([value] if isinstance(value, str) else value or [])


def _aws_principal(spec: BucketAccessGrant) -> str:
    return f"arn:aws:iam::{spec.principal}:root" if spec.principal.isdigit() else spec.principal


def _members(statement: dict[str, Any] | None) -> set[str]:
    """The principals of a shared statement (account ids as ``:root`` ARNs, as AWS may return either)."""
    if statement is None:
        return set()
    return set(normalize_principal(statement.get("Principal")))
