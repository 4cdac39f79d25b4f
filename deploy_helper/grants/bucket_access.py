"""``bucket-access``: one managed statement in an S3 bucket policy.

Typical use: a pipeline's artifact bucket that every target account's deploy
role must read. Access is one of the named levels below, never free-form
actions. The bucket policy is read-modify-written as a whole, so the broker
holds a per-bucket lock around read → plan → write (see ``deploy_helper.execution.locks``)
and only ever adds or removes statements whose ``Sid`` it owns; every other
statement is written back exactly as AWS returned it. The plan -- exact
statements, ``merge-principals`` past the 20 KB limit, refusals naming the remedy
-- is the resource-policy kinds' shared one (``deploy_helper.grants.resource_policy``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from botocore.exceptions import ClientError

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.grants.base import MERGE_PRINCIPALS, GrantSpec, managed_id
from deploy_helper.grants.resource_policy import SHARED_PREFIX, ResourcePolicyKind, aws_principal
from deploy_helper.trust.identifiers import AccountId, BucketName, Region, RoleArn, S3Prefix

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


class BucketAccess(ResourcePolicyKind[BucketAccessGrant]):
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
    policy_name: ClassVar[str] = "bucket policy"
    limit_owner: ClassVar[str] = "S3"
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
        return {
            "Sid": self.grant_id(spec),
            "Effect": "Allow",
            "Principal": {"AWS": aws_principal(spec.principal)},
            "Action": sorted(object_actions + bucket_actions),
            "Resource": [bucket_arn, objects],
        }

    def shared_sid(self, spec: BucketAccessGrant) -> str:
        """The Sid of the statement shared by this bucket's grants of one access level and prefix.

        Kept as it was before the shared base (bucket, access, prefix), so statements already
        shared in bucket policies stay recognised.
        """
        identity = {"bucket": spec.bucket, "access": spec.access, "prefix": spec.prefix or ""}
        return managed_id(identity).replace(PRODUCT_PREFIX, SHARED_PREFIX, 1)

    # -- the bucket policy as AWS keeps it ---------------------------------
    def get_policy_text(self, client: Any, resource: str) -> str | None:
        try:
            return str(client.get_bucket_policy(Bucket=_bucket(resource))["Policy"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchBucketPolicy":
                return None
            raise

    def put_policy_text(self, client: Any, resource: str, text: str) -> None:
        client.put_bucket_policy(Bucket=_bucket(resource), Policy=text)

    def delete_policy(self, client: Any, resource: str) -> None:
        """S3 refuses a policy without statements: the emptied policy is deleted instead."""
        client.delete_bucket_policy(Bucket=_bucket(resource))


def _bucket(resource: str) -> str:
    return resource.rsplit(":", 1)[1]
