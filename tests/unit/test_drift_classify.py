"""Drift classification (pure): each kind's hooks on hand-made live states."""

from __future__ import annotations

from typing import Any

from deploy_helper.audit.drift import classify, parse_spec
from deploy_helper.grants import REGISTRY
from deploy_helper.grants.base import SourceScope

ROLE_A = "arn:aws:iam::333333333333:role/deploy"
ROLE_B = "arn:aws:iam::444444444444:role/deploy"
BUCKET = {"kind": "bucket-access", "bucket": "dh-artifacts-1", "account": "111111111111", "access": "read"}
KEY = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def by(findings: list[Any], status: str) -> list[str | None]:
    return sorted(str(f.grant_id) for f in findings if f.status == status)


def test_bucket_own_statement_missing_planted_and_foreign() -> None:
    kind = REGISTRY["bucket-access"]
    a, b = parse_spec({**BUCKET, "principal": ROLE_A}), parse_spec({**BUCKET, "principal": ROLE_B})
    state = kind.plan(None, "arn:aws:s3:::dh-artifacts-1", [(a, "apply")]).after
    state["Statement"] += [
        {"Sid": "DeployHelperPlanted", "Effect": "Allow", "Principal": {"AWS": ROLE_B}, "Action": "s3:*"},
        {"Sid": "Theirs", "Effect": "Allow", "Principal": {"AWS": ROLE_A}, "Action": "s3:GetObject"},
        {"Sid": "TheirDeny", "Effect": "Deny", "Principal": "*", "Action": "s3:*"},
    ]
    found = classify(kind, "111111111111", "arn:aws:s3:::dh-artifacts-1", state, [(a, {}), (b, {})], None)
    assert by(found, "in-force") == [kind.grant_id(a)]
    assert by(found, "missing") == [kind.grant_id(b)]
    assert by(found, "unknown-managed") == ["DeployHelperPlanted"]
    assert by(found, "foreign") == ["Theirs"]


def test_bucket_grants_in_a_shared_statement_are_in_force_and_explain_it() -> None:
    kind = REGISTRY["bucket-access"]
    specs = [parse_spec({**BUCKET, "principal": p}) for p in (ROLE_A, ROLE_B)]
    shared = kind.shared_statement(specs[0], [ROLE_A, ROLE_B])
    state = {"Version": "2012-10-17", "Statement": [shared]}
    found = classify(kind, "111111111111", "arn:aws:s3:::dh-artifacts-1", state, [(s, {}) for s in specs], None)
    assert {f.status for f in found} == {"in-force"} and len(found) == 2


def test_kms_remade_with_other_operations_is_altered_and_a_stale_copy_is_unknown() -> None:
    kind = REGISTRY["kms-grant"]
    spec = parse_spec({"kind": "kms-grant", "key": KEY, "grantee": ROLE_A, "operations": ["Decrypt"]})
    name = kind.grant_id(spec)
    exact = {"GrantId": "g1", "Name": name, "GranteePrincipal": ROLE_A, "Operations": ["Decrypt"]}
    wider = {"GrantId": "g2", "Name": name, "GranteePrincipal": ROLE_A, "Operations": ["Decrypt", "Encrypt"]}
    theirs = {"GrantId": "g3", "Name": "team", "GranteePrincipal": ROLE_A, "Operations": ["Decrypt"]}
    altered = classify(kind, "111111111111", KEY, [wider, theirs], [(spec, {})], None)
    assert by(altered, "altered") == [name] and by(altered, "foreign") == ["g3"]
    assert "unknown-managed" not in {f.status for f in altered}
    both = classify(kind, "111111111111", KEY, [exact, wider], [(spec, {})], None)
    assert by(both, "in-force") == [name] and by(both, "unknown-managed") == ["g2"]


def test_lambda_grants_in_a_shared_permission_are_explained_by_the_references() -> None:
    kind = REGISTRY["lambda-invoke"]
    function = "arn:aws:lambda:us-east-1:222222222222:function:token-authorizer"
    spec = parse_spec(
        {
            "kind": "lambda-invoke",
            "function": function,
            "principal": "apigateway.amazonaws.com",
            "source_arn": "arn:aws:execute-api:us-east-1:333333333333:abc/authorizers/*",
            "source_account": "333333333333",
        }
    )
    scope = SourceScope("333333333333", "arn:aws:execute-api:us-east-1:333333333333:*/authorizers/*")
    shared_sid = kind.shared_sid(spec, scope)
    state = {"Version": "2012-10-17", "Statement": [kind.shared_statement(spec, scope)]}
    refs = {shared_sid: [kind.grant_id(spec)]}
    found = classify(kind, "222222222222", function, state, [(spec, {})], refs)
    assert [f.status for f in found] == ["in-force"]
    without = classify(kind, "222222222222", function, state, [(spec, {})], {})
    assert sorted(f.status for f in without) == ["missing", "unknown-managed"]


def test_drift_clients_refuse_every_call_but_reads() -> None:
    import boto3
    import pytest

    from deploy_helper.audit.drift import read_only
    from deploy_helper.exceptions import BrokerError

    client = read_only(
        boto3.Session(aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1").client(
            "s3", endpoint_url="http://127.0.0.1:9"
        )
    )
    with pytest.raises(BrokerError, match="read-only: PutBucketPolicy"):
        client.put_bucket_policy(Bucket="b", Policy="{}")
    with pytest.raises(BrokerError, match="read-only: DeleteBucketPolicy"):
        client.delete_bucket_policy(Bucket="b")


def test_a_shared_statement_that_grants_more_makes_its_grants_altered() -> None:
    kind = REGISTRY["bucket-access"]
    specs = [parse_spec({**BUCKET, "principal": p}) for p in (ROLE_A, ROLE_B)]
    extra = "arn:aws:iam::555555555555:role/intruder"
    widened = kind.shared_statement(specs[0], [ROLE_A, ROLE_B, extra])
    found = classify(
        kind, "111111111111", "arn:aws:s3:::dh-artifacts-1", {"Statement": [widened]}, [(s, {}) for s in specs], None
    )
    assert [f.status for f in found] == ["altered", "altered"]
    assert all(extra in f.detail for f in found)
    actions = {**kind.shared_statement(specs[0], [ROLE_A, ROLE_B]), "Action": "s3:*"}
    found = classify(
        kind, "111111111111", "arn:aws:s3:::dh-artifacts-1", {"Statement": [actions]}, [(s, {}) for s in specs], None
    )
    assert [f.status for f in found] == ["altered", "altered"] and "actions" in found[0].detail


def test_a_shared_permission_with_its_source_account_removed_is_altered() -> None:
    kind = REGISTRY["lambda-invoke"]
    function = "arn:aws:lambda:us-east-1:222222222222:function:token-authorizer"
    spec = parse_spec(
        {
            "kind": "lambda-invoke",
            "function": function,
            "principal": "apigateway.amazonaws.com",
            "source_arn": "arn:aws:execute-api:us-east-1:333333333333:abc/authorizers/*",
            "source_account": "333333333333",
        }
    )
    scope = SourceScope("333333333333", "arn:aws:execute-api:us-east-1:333333333333:*/authorizers/*")
    statement = kind.shared_statement(spec, scope)
    refs = {statement["Sid"]: [kind.grant_id(spec)]}
    loose = {**statement, "Condition": {"ArnLike": statement["Condition"]["ArnLike"]}}
    (finding,) = [f for f in classify(kind, "222222222222", function, {"Statement": [loose]}, [(spec, {})], refs)]
    assert finding.status == "altered" and "source account" in finding.detail
    wide = {
        **statement,
        "Condition": {**statement["Condition"], "ArnLike": {"AWS:SourceArn": "arn:aws:execute-api:*:*:*"}},
    }
    (finding,) = classify(kind, "222222222222", function, {"Statement": [wide]}, [(spec, {})], refs)
    assert finding.status == "altered" and "SourceArn" in finding.detail
    (fine,) = classify(kind, "222222222222", function, {"Statement": [statement]}, [(spec, {})], refs)
    assert fine.status == "in-force"
