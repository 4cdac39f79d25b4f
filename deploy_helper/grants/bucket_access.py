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

from deploy_helper.exceptions import PolicySizeError
from deploy_helper.grants.base import GrantKind, GrantSpec, ItemPlan, Operation, ResourcePlan
from deploy_helper.identifiers import AccountId, BucketName, Region, RoleArn, S3Prefix
from deploy_helper.policydoc import compact_size, find_statement, load_policy, normalize_principal

if TYPE_CHECKING:
    from collections.abc import Sequence

S3_POLICY_LIMIT = 20 * 1024
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
    serialize_writes: ClassVar[bool] = True
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
        principal = f"arn:aws:iam::{spec.principal}:root" if spec.principal.isdigit() else spec.principal
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
    ) -> ResourcePlan:
        before = json.loads(json.dumps(state)) if state is not None else None
        after: dict[str, Any] = (
            json.loads(json.dumps(state)) if state is not None else {"Version": "2012-10-17", "Statement": []}
        )
        plans: list[ItemPlan] = []
        changed = False
        for spec, operation in items:
            sid = self.grant_id(spec)
            current = find_statement(after, sid)
            if operation == "apply":
                if current is not None and self._same(current, spec):
                    plans.append(ItemPlan(spec, operation, "unchanged", "statement already present"))
                    continue
                candidate = [s for s in after["Statement"] if s.get("Sid") != sid] + [self.statement(spec)]
                size = compact_size({**after, "Statement": candidate})
                if size > S3_POLICY_LIMIT:
                    plans.append(
                        ItemPlan(spec, operation, "failed", PolicySizeError(
                            f"the bucket policy of {spec.bucket} would grow to {size} bytes, over S3's "
                            f"{S3_POLICY_LIMIT}-byte limit; grant to fewer, broader principals "
                            "(an account instead of each role) or remove unused statements"
                        ).message)
                    )
                    continue
                after["Statement"] = candidate
                changed = True
                plans.append(ItemPlan(spec, operation, "applied"))
            else:
                if current is None:
                    plans.append(ItemPlan(spec, operation, "absent", "statement not present"))
                    continue
                after["Statement"] = [s for s in after["Statement"] if s.get("Sid") != sid]
                changed = True
                plans.append(ItemPlan(spec, operation, "revoked"))
        final: dict[str, Any] | None = after if after["Statement"] else None
        writes: list[Any] = [final] if changed else []
        return ResourcePlan(resource, before, final if changed else before, plans, writes, state)

    def write(self, client: Any, plan: ResourcePlan) -> None:
        bucket = plan.resource.rsplit(":", 1)[1]
        for document in plan.writes:
            if document is None:
                client.delete_bucket_policy(Bucket=bucket)
            else:
                client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(document, separators=(",", ":")))

    def present(self, state: dict[str, Any] | None, spec: BucketAccessGrant) -> bool:
        if state is None:
            return False
        current = find_statement(state, self.grant_id(spec))
        return current is not None and self._same(current, spec)

    def _same(self, current: dict[str, Any], spec: BucketAccessGrant) -> bool:
        desired = self.statement(spec)

        def as_set(value: Any) -> frozenset[str]:
            return frozenset([value] if isinstance(value, str) else value or [])

        return (
            current.get("Effect") == "Allow"
            and normalize_principal(current.get("Principal")) == normalize_principal(desired["Principal"])
            and as_set(current.get("Action")) == as_set(desired["Action"])
            and as_set(current.get("Resource")) == as_set(desired["Resource"])
            and "Condition" not in current
        )
