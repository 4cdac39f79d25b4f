"""Policies that fit: a grant set one statement past S3's bucket-policy limit.

66 service accounts' deploy roles each get read on the shared artifact bucket, which
also holds a statement the broker did not write. As exact statements (one per grant)
65 fit within AWS's 20,480 bytes and 66 do not — the set exceeds the limit by exactly
one grant, checked below with the same byte count AWS uses, independently of the grant
kind's code. The broker acts as its execution role with AWS's refusals on top of moto
(strict_aws refuses a bucket policy over 20 KB, as S3 does), and every call it makes
in a target account is logged, so "no call failed for size" is an observation.

- Rules with ``compaction: [merge-principals]``: every grant is applied; they share one
  statement whose principal list holds each deploy role; the policy is under the limit;
  revoking one removes only its principal; applying again changes nothing.
- Rules without: the grants that do not fit are refused, naming the limit and the
  remedy (the rule to change); the others are applied.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from _aws import exec_session, scaled_strict_broker
from botocore.exceptions import ClientError

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.server import LOCAL_CONFIG, LOCAL_REGION

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.server import LocalAws

N = 66
LIMIT = 20_480
RULE = "artifact-read"
READ_ACTIONS = ["s3:GetBucketLocation", "s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"]


def aws_size(document: dict[str, Any]) -> int:
    """Bytes as S3 counts a bucket policy: the JSON without insignificant whitespace."""
    return len(json.dumps(document, separators=(",", ":")).encode())


def exact_statement(bucket: str, principal: str, sid: str) -> dict[str, Any]:
    """What one grant's own statement looks like (written out here, not taken from the kind)."""
    arn = f"arn:aws:s3:::{bucket}"
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": READ_ACTIONS,
        "Resource": [arn, f"{arn}/*"],
    }


def _setup(local: LocalAws, workdir: Path, aws_calls: Any, compaction: list[str] | None) -> tuple[Any, Broker]:
    return scaled_strict_broker(local, workdir, N, aws_calls, compaction)


def _roles(sc: Any) -> list[str]:
    return [sc.deploy_roles[s] for s in sc.services]


def _size_failures(aws_calls: Any) -> list[Any]:
    return [c for c in aws_calls.failures() if c.operation.startswith("s3.")]


def test_the_grant_set_exceeds_the_limit_by_exactly_one_statement(fresh_local: LocalAws, tmp_path: Path) -> None:
    """The premise of the tests below, and strict_aws refusing the oversized policy as S3 would."""
    sc = seed.build_scaled(fresh_local, tmp_path, N)
    foreign = sc.bucket_policy()
    assert foreign is not None
    statements = [exact_statement(sc.bucket, role, f"{PRODUCT_PREFIX}{i:024x}") for i, role in enumerate(_roles(sc))]
    assert aws_size({**foreign, "Statement": foreign["Statement"] + statements[:-1]}) <= LIMIT
    too_large = {**foreign, "Statement": foreign["Statement"] + statements}
    assert aws_size(too_large) > LIMIT
    session = exec_session(fresh_local)
    strict_aws.install(session, fresh_local)
    s3 = session.client("sts", endpoint_url=fresh_local.endpoint, config=LOCAL_CONFIG)
    role = s3.assume_role(
        RoleArn=f"arn:aws:iam::{seed.ACCOUNTS['tooling']}:role/deploy-helper-broker",
        RoleSessionName="control",
        ExternalId=seed.EXTERNAL_ID,
    )["Credentials"]
    tooling = boto3.Session(
        aws_access_key_id=role["AccessKeyId"],
        aws_secret_access_key=role["SecretAccessKey"],
        aws_session_token=role["SessionToken"],
        region_name=LOCAL_REGION,
    )
    strict_aws.install(tooling, fresh_local)
    with pytest.raises(ClientError) as refused:
        tooling.client("s3", endpoint_url=fresh_local.endpoint, config=LOCAL_CONFIG).put_bucket_policy(
            Bucket=sc.bucket, Policy=json.dumps(too_large)
        )
    assert refused.value.response["Error"]["Code"] == "MalformedPolicy"


def test_merge_principals_fits_every_grant(fresh_local: LocalAws, tmp_path: Path, aws_calls: Any) -> None:
    sc, broker = _setup(fresh_local, tmp_path, aws_calls, ["merge-principals"])
    foreign = sc.bucket_policy()["Statement"]
    client = sc.client(broker)
    grants = [sc.bucket_grant(s) for s in sc.services]
    roles = _roles(sc)

    first = client.request(grants, request_id="compact-1")

    assert [r.decision for r in first.results] == ["applied"] * N, {r.reason for r in first.results}
    assert _size_failures(aws_calls) == [], "no call may fail in AWS"
    policy = sc.bucket_policy()
    assert aws_size(policy) <= LIMIT
    assert policy["Statement"][0] == foreign[0], "the foreign statement is untouched"
    managed = policy["Statement"][1:]
    assert len(managed) == 1
    shared = managed[0]
    assert shared["Sid"].startswith(f"{PRODUCT_PREFIX}Shared")
    assert sorted(shared["Principal"]["AWS"]) == sorted(roles)
    # exactly the actions and resources of each grant: merging principals widens nothing
    assert sorted(shared["Action"]) == READ_ACTIONS
    assert sorted(shared["Resource"]) == [f"arn:aws:s3:::{sc.bucket}", f"arn:aws:s3:::{sc.bucket}/*"]
    assert shared["Effect"] == "Allow" and "Condition" not in shared
    assert {r.compaction for r in first.results} == {f"merged into {shared['Sid']} with {N} principals"}
    recorded = [
        e.entry
        for e in sc.ledger().ledger.entries()
        if e.entry.get("request_id") == "compact-1" and e.entry.get("type") == "outcome"
    ]
    assert len(recorded) == N
    assert {e["compaction"] for e in recorded} == {f"merged into {shared['Sid']} with {N} principals"}

    # revoke one: only its principal goes
    gone = client.request([grants[7]], action="revoke", request_id="compact-2")
    assert [r.decision for r in gone.results] == ["revoked"]
    policy = sc.bucket_policy()
    assert policy["Statement"][0] == foreign[0]
    assert sorted(policy["Statement"][1]["Principal"]["AWS"]) == sorted(roles[:7] + roles[8:])
    assert sorted(policy["Statement"][1]["Action"]) == READ_ACTIONS
    assert [r.decision for r in client.request([grants[7]], action="revoke").results] == ["absent"]

    # the others again: nothing changes, nothing is written
    aws_calls.clear()
    again = client.request(grants[:7] + grants[8:], request_id="compact-3")
    assert {r.decision for r in again.results} == {"unchanged"}
    assert [op for op in aws_calls.operations() if op.startswith("s3.")] == ["s3.GetBucketPolicy"]

    # the revoked one back: it rejoins the shared statement
    back = client.request(grants, request_id="compact-4")
    decisions = [r.decision for r in back.results]
    assert decisions[7] == "applied" and decisions.count("unchanged") == N - 1
    assert sorted(sc.bucket_policy()["Statement"][1]["Principal"]["AWS"]) == sorted(roles)
    assert _size_failures(aws_calls) == []

    # all revoked: the shared statement goes with its last principal; the foreign one stays
    out = client.request(grants, action="revoke", request_id="compact-5")
    assert {r.decision for r in out.results} == {"revoked"}
    assert sc.bucket_policy()["Statement"] == foreign


def test_without_compaction_the_overflow_is_refused(fresh_local: LocalAws, tmp_path: Path, aws_calls: Any) -> None:
    sc, broker = _setup(fresh_local, tmp_path, aws_calls, None)
    foreign = sc.bucket_policy()["Statement"]
    grants = [sc.bucket_grant(s) for s in sc.services]

    response = sc.client(broker).request(grants)

    decisions = [r.decision for r in response.results]
    assert decisions == ["applied"] * (N - 1) + ["failed"]
    refused = response.results[-1]
    assert f"over S3's {LIMIT}-byte limit" in refused.reason
    assert f"allow compaction: [merge-principals] in rule {RULE}" in refused.reason
    assert refused.compaction is None
    assert _size_failures(aws_calls) == [], "the oversized policy was never sent"
    policy = sc.bucket_policy()
    assert aws_size(policy) <= LIMIT
    assert policy["Statement"][0] == foreign[0]
    assert len(policy["Statement"]) == N  # the foreign one and 65 exact statements
    assert not any(s["Sid"].startswith(f"{PRODUCT_PREFIX}Shared") for s in policy["Statement"])
    assert sc.deploy_roles[sc.services[-1]] not in json.dumps(policy)
    assert [op for op in aws_calls.operations() if op == "s3.PutBucketPolicy"] == ["s3.PutBucketPolicy"]
