"""How many per-account grants fit on one authorizer function and one bucket, exact vs compacted.

A shared authorizer function and a shared artifact bucket serve many accounts; each
account adds one grant: the function gets an invoke permission for the account's API
(``apigateway.amazonaws.com`` bound by ``SourceArn``/``SourceAccount``), the bucket a
read statement for the account's ``deploy`` role. AWS limits both policies to 20,480
bytes. Each resource starts with one statement the broker did not write (as in the seed
scenario), and the broker's grant kinds plan the grants one request at a time:

- exact: one statement per grant (rules without ``compaction``);
- compacted: the rules allow ``merge-principals`` (bucket-access merges the principals
  of grants with equal access and prefix into one statement; lambda-invoke has no
  compaction yet, so its figure is the exact one).

The counts come from the grant kinds' own planning (pure: their size computation).
Then one confirming apply against moto with strict_aws (AWS's refusals, including the
20 KB limits): the planned bucket policies are written with ``PutBucketPolicy`` as
planned, and one statement more is refused; the function gets its planned permissions
with ``AddPermission`` one by one, and one more is refused.

    python bench/capacity.py [--accounts 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

FIRST_ACCOUNT = 500000000000
REGION = "us-east-1"


def _account(i: int) -> str:
    return str(FIRST_ACCOUNT + i)


def lambda_grants(function: str, n: int) -> list[Any]:
    from deploy_helper.grants import LambdaInvokeGrant

    return [
        LambdaInvokeGrant.model_validate(
            {
                "kind": "lambda-invoke",
                "function": function,
                "principal": "apigateway.amazonaws.com",
                "source_arn": f"arn:aws:execute-api:{REGION}:{_account(i)}:{i:010x}/authorizers/*",
                "source_account": _account(i),
            }
        )
        for i in range(n)
    ]


def bucket_grants(bucket: str, owner: str, n: int) -> list[Any]:
    from deploy_helper.grants import BucketAccessGrant

    return [
        BucketAccessGrant.model_validate(
            {
                "kind": "bucket-access",
                "bucket": bucket,
                "account": owner,
                "principal": f"arn:aws:iam::{_account(i)}:role/deploy",
                "access": "read",
            }
        )
        for i in range(n)
    ]


def create_deploy_roles(local: Any, n: int) -> None:
    """The ``deploy`` role of each account (moto routes by the ``x-moto-account-id`` header)."""
    from deploy_helper.local.server import LOCAL_CONFIG

    current: dict[str, str] = {}
    base = local.base_session()
    base.events.register(
        "before-sign", lambda request, **_: request.headers.__setitem__("x-moto-account-id", current["a"])
    )
    iam = base.client("iam", endpoint_url=local.endpoint, region_name=REGION, config=LOCAL_CONFIG)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111111111111:root"}, "Action": "sts:AssumeRole"}
        ],
    }
    for i in range(n):
        current["a"] = _account(i)
        iam.create_role(RoleName="deploy", AssumeRolePolicyDocument=json.dumps(trust))


def plan(kind_name: str, state: Any, resource: str, grants: list[Any], compaction: frozenset[str]) -> Any:
    from deploy_helper.grants import REGISTRY, Allowed

    kind = REGISTRY[kind_name]
    allowed = [Allowed("capacity", compaction)] * len(grants)
    return kind.plan(state, resource, [(g, "apply") for g in grants], allowed)


def fitted(result: Any) -> int:
    return sum(1 for p in result.items if p.outcome == "applied")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=2000, help="grants offered to each resource")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from botocore.exceptions import ClientError

    from deploy_helper.grants import REGISTRY
    from deploy_helper.local import scenario as seed
    from deploy_helper.local import strict_aws
    from deploy_helper.local.server import LocalAws
    from deploy_helper.policydoc import compact_size

    merge = frozenset(["merge-principals"])
    with LocalAws() as local, tempfile.TemporaryDirectory() as tmp:
        sc = seed.build(local, Path(tmp))
        tooling = seed.ACCOUNTS["tooling"]
        s3_state = sc.bucket_policy()
        lam_state = REGISTRY["lambda-invoke"].read(
            local.client("lambda", seed.ACCOUNTS["token-service"]), sc.authorizer_arn
        )
        bucket_arn = f"arn:aws:s3:::{sc.bucket}"
        started = time.perf_counter()
        plans = {
            ("bucket", "exact"): plan(
                "bucket-access", s3_state, bucket_arn, bucket_grants(sc.bucket, tooling, args.accounts), frozenset()
            ),
            ("bucket", "compacted"): plan(
                "bucket-access", s3_state, bucket_arn, bucket_grants(sc.bucket, tooling, args.accounts), merge
            ),
            ("function", "exact"): plan(
                "lambda-invoke",
                lam_state,
                sc.authorizer_arn,
                lambda_grants(sc.authorizer_arn, args.accounts),
                frozenset(),
            ),
        }
        plan_s = time.perf_counter() - started
        counts = {key: fitted(p) for key, p in plans.items()}
        counts[("function", "compacted")] = counts[("function", "exact")]
        sizes = {key: compact_size(p.after) for key, p in plans.items()}
        sizes[("function", "compacted")] = sizes[("function", "exact")]

        # Confirm against moto with AWS's refusals: what was planned is accepted, one more is not.
        session = local.base_session()
        creds = session.client("sts", endpoint_url=local.endpoint).assume_role(
            RoleArn=seed.BROKER_EXEC_ROLE, RoleSessionName="capacity"
        )["Credentials"]

        def strict_client(service: str, account: str) -> Any:
            import boto3

            exec_session = boto3.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                region_name=REGION,
            )
            role = exec_session.client("sts", endpoint_url=local.endpoint).assume_role(
                RoleArn=f"arn:aws:iam::{account}:role/deploy-helper-broker",
                RoleSessionName="capacity",
                ExternalId=seed.EXTERNAL_ID,
            )["Credentials"]
            target = boto3.Session(
                aws_access_key_id=role["AccessKeyId"],
                aws_secret_access_key=role["SecretAccessKey"],
                aws_session_token=role["SessionToken"],
                region_name=REGION,
            )
            strict_aws.install(target, local)
            return target.client(service, endpoint_url=local.endpoint)

        def refused(call: Any) -> str:
            try:
                call()
            except ClientError as exc:
                err = exc.response["Error"]
                return f"{err['Code']}: {err.get('Message', '')}"
            return ""

        create_deploy_roles(local, max(counts.values()) + 1)  # S3 refuses principals that do not exist
        s3 = strict_client("s3", tooling)
        bucket_access = REGISTRY["bucket-access"]
        confirm: dict[str, Any] = {}
        for mode in ("exact", "compacted"):
            after = plans[("bucket", mode)].after
            accepted = not refused(lambda after=after: s3.put_bucket_policy(Bucket=sc.bucket, Policy=json.dumps(after)))
            grants = bucket_grants(sc.bucket, tooling, counts[("bucket", mode)] + 1)
            if mode == "exact":
                extra = {**after, "Statement": [*after["Statement"], bucket_access.statement(grants[-1])]}
            else:
                extra = bucket_access._join_shared(after, grants[-1])
            one_more = refused(lambda extra=extra: s3.put_bucket_policy(Bucket=sc.bucket, Policy=json.dumps(extra)))
            confirm[f"bucket_{mode}"] = {"planned_accepted": accepted, "one_more_refused": one_more}
        lam = strict_client("lambda", seed.ACCOUNTS["token-service"])
        function_grants = lambda_grants(sc.authorizer_arn, counts[("function", "exact")] + 1)
        lambda_kind = REGISTRY["lambda-invoke"]
        errors = [
            refused(lambda g=g: lambda_kind._send(lam, "token-authorizer", None, "add", g)) for g in function_grants
        ]
        confirm["function_exact"] = {
            "planned_accepted": not any(errors[:-1]),
            "one_more_refused": errors[-1],
        }

    rows = [
        {
            "resource": resource,
            "mode": mode,
            "grants": counts[(resource, mode)],
            "policy_bytes": sizes[(resource, mode)],
        }
        for resource in ("function", "bucket")
        for mode in ("exact", "compacted")
    ]
    out = {
        "limit_bytes": 20480,
        "offered": args.accounts,
        "rows": rows,
        "confirmed_with_strict_aws": confirm,
        "plan_seconds": round(plan_s, 2),
        "note": "each resource starts with one foreign statement; lambda-invoke has no compaction yet",
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"bench/capacity.py: per-account grants that fit in 20,480 bytes ({args.accounts} offered)")
    print(f"{'':34}{'exact':>8}{'compacted':>11}")
    for resource, label in (
        ("function", "authorizer function (lambda-invoke)"),
        ("bucket", "artifact bucket (bucket-access)"),
    ):
        print(f"{label:34}{counts[(resource, 'exact')]:>8}{counts[(resource, 'compacted')]:>11}")
    print(
        f"policy bytes at capacity: function {sizes[('function', 'exact')]}, "
        f"bucket {sizes[('bucket', 'exact')]} exact / {sizes[('bucket', 'compacted')]} compacted"
    )
    print("lambda-invoke: no compaction yet (one AddPermission statement per API); the figure is the exact one")
    for name, c in confirm.items():
        refusal = c["one_more_refused"] or "nothing (!)"
        print(f"strict_aws {name}: planned accepted={c['planned_accepted']}; one more refused: {refusal}")
    print(f"planning time for {3 * args.accounts} grants: {plan_s:.2f} s")


if __name__ == "__main__":
    main()
