"""Policies that fit: a grant set one permission past Lambda's function-policy limit.

20 service accounts each have three APIs that use the shared token authorizer; every
API needs its own invoke permission, bound to it by SourceArn. The function also holds
a permission the broker did not write. As exact permissions (one per API) K-1 fit
within Lambda's 20,480 bytes and K do not — K is found below with the same byte count
Lambda uses, from statements written out here, independently of the grant kind's code.
The broker acts as its execution role with AWS's refusals on top of moto (strict_aws
refuses a function policy over 20 KB, as Lambda does), and every call it makes in a
target account is logged, so "no call failed for size" is an observation.

- Rules with ``compaction: [widen-source-arn]``: every grant is applied; the APIs of
  one account share one permission whose SourceArn is the rule's pattern narrowed to
  that account (never wider than the rule); the broker's reference table lists which
  grants share it; revoking one removes only that grant, the permission goes with its
  last; applying again changes nothing.
- Rules without: the grant that does not fit is refused, naming the limit and the
  remedy (the rule to change); the others are applied.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from _aws import scaled_strict_broker

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.local import scenario as seed
from deploy_helper.local.server import LOCAL_REGION
from deploy_helper.trust.rules import arn_matches

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.server import LocalAws

SERVICES = 20
APIS = 3
LIMIT = 20_480
RULE = "authorizer-invoke"
RULE_PATTERN = "arn:aws:execute-api:*:*:*/authorizers/*"
SHARED = f"{PRODUCT_PREFIX}Shared"


def lambda_size(document: dict[str, Any]) -> int:
    """Bytes of a function policy as Lambda counts it: the JSON without insignificant whitespace."""
    return len(json.dumps(document, separators=(",", ":")).encode())


def api_arn(account: str, index: int, api: int) -> str:
    return f"arn:aws:execute-api:{LOCAL_REGION}:{account}:a{index:03d}{api}bcdefg/authorizers/*"


def grants_of(sc: Any) -> list[dict[str, Any]]:
    """Three APIs per service account, account by account."""
    out = []
    for index, service in enumerate(sc.services):
        account = sc.accounts[service]
        for api in range(APIS):
            out.append({**sc.authorizer_grant(service), "source_arn": api_arn(account, index, api)})
    return out


def exact_statement(function: str, grant: dict[str, Any], sid: str) -> dict[str, Any]:
    """One grant's own permission as Lambda stores it (written out here, not taken from the kind)."""
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": {"Service": "apigateway.amazonaws.com"},
        "Action": "lambda:InvokeFunction",
        "Resource": function,
        "Condition": {
            "StringEquals": {"AWS:SourceAccount": grant["source_account"]},
            "ArnLike": {"AWS:SourceArn": grant["source_arn"]},
        },
    }


def first_overflow(sc: Any, grants: list[dict[str, Any]]) -> int:
    """K: the number of exact permissions that no longer fit next to the foreign one."""
    foreign = sc.function_policy()
    assert foreign is not None
    statements = [exact_statement(sc.authorizer_arn, g, f"{PRODUCT_PREFIX}{i:024x}") for i, g in enumerate(grants)]
    for k in range(1, len(grants) + 1):
        if lambda_size({**foreign, "Statement": foreign["Statement"] + statements[:k]}) > LIMIT:
            return k
    raise AssertionError("the grant set fits: make it larger")


def _setup(local: LocalAws, workdir: Path, aws_calls: Any, compaction: list[str] | None) -> tuple[Any, Broker]:
    return scaled_strict_broker(local, workdir, SERVICES, aws_calls, compaction)


def _lambda_failures(aws_calls: Any) -> list[Any]:
    return [c for c in aws_calls.failures() if c.operation.startswith("lambda.")]


def _references(local: LocalAws, function: str, table: str) -> dict[str, list[str]]:
    item = (
        local.client("dynamodb", seed.ACCOUNTS["broker"])
        .get_item(TableName=table, Key={"pk": {"S": function}}, ConsistentRead=True)
        .get("Item")
    )
    return {sid: sorted(v["SS"]) for sid, v in (item or {}).get("statements", {}).get("M", {}).items()}


def _shared(policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The shared permissions by source account."""
    out = {}
    for statement in policy["Statement"]:
        if statement["Sid"].startswith(SHARED):
            out[statement["Condition"]["StringEquals"]["AWS:SourceAccount"]] = statement
    return out


def test_the_grant_set_exceeds_the_limit_by_exactly_one_permission(fresh_local: LocalAws, tmp_path: Path) -> None:
    sc = seed.build_scaled(fresh_local, tmp_path, SERVICES)
    grants = grants_of(sc)
    k = first_overflow(sc, grants)
    assert APIS * 2 < k < len(grants), "several accounts' APIs fit exactly, not all of them"


def test_widening_fits_every_grant_and_counts_references(fresh_local: LocalAws, tmp_path: Path, aws_calls: Any) -> None:
    sc, broker = _setup(fresh_local, tmp_path, aws_calls, ["widen-source-arn"])
    foreign = sc.function_policy()["Statement"]
    everything = grants_of(sc)
    k = first_overflow(sc, everything)
    grants = everything[:k]
    accounts = sorted({g["source_account"] for g in grants})
    client = sc.client(broker)

    first = client.request(grants, request_id="widen-001")

    assert [r.decision for r in first.results] == ["applied"] * k, {r.reason for r in first.results}
    assert _lambda_failures(aws_calls) == [], "no call may fail in AWS"
    policy = sc.function_policy()
    assert lambda_size(policy) <= LIMIT
    assert [s for s in policy["Statement"] if s["Sid"] == seed.FOREIGN_SID] == foreign
    shared = _shared(policy)
    assert sorted(shared) == accounts
    assert len(policy["Statement"]) == 1 + len(accounts), "one permission per source account, none of its own"
    for account, statement in shared.items():
        widened = statement["Condition"]["ArnLike"]["AWS:SourceArn"]
        # the rule's pattern with the account fixed: never wider than the rule, never another account
        assert widened == f"arn:aws:execute-api:{LOCAL_REGION}:{account}:*/authorizers/*"
        assert arn_matches(RULE_PATTERN, widened)
        assert statement["Principal"] == {"Service": "apigateway.amazonaws.com"}
        assert statement["Action"] == "lambda:InvokeFunction"
        assert statement["Resource"] == sc.authorizer_arn
    # references: each shared permission lists exactly the grants of its account
    references = _references(fresh_local, sc.authorizer_arn, sc.config.reference_table)
    assert sorted(references) == sorted(s["Sid"] for s in shared.values())
    per_account = {a: sum(1 for g in grants if g["source_account"] == a) for a in accounts}
    assert {shared_account: len(references[s["Sid"]]) for shared_account, s in shared.items()} == per_account
    for result in first.results:
        sid = shared[_source_account(result, grants)]["Sid"]
        assert result.compaction is not None and result.compaction.startswith(f"widened into {sid} (SourceArn ")
    recorded = [
        e.entry
        for e in sc.ledger().ledger.entries()
        if e.entry.get("request_id") == "widen-001" and e.entry.get("type") == "outcome"
    ]
    assert len(recorded) == k and all(e["compaction"].startswith("widened into ") for e in recorded)

    # revoke one API of the first account: only its reference goes, the permission stays
    a0 = accounts[0]
    a0_grants = [g for g in grants if g["source_account"] == a0]
    gone = client.request(a0_grants[:1], action="revoke", request_id="widen-002")
    assert [r.decision for r in gone.results] == ["revoked"]
    assert gone.results[0].compaction == f"removed from {shared[a0]['Sid']}, {APIS - 1} grants remain"
    assert _shared(sc.function_policy())[a0] == shared[a0]
    assert len(_references(fresh_local, sc.authorizer_arn, sc.config.reference_table)[shared[a0]["Sid"]]) == APIS - 1
    assert [r.decision for r in client.request(a0_grants[:1], action="revoke").results] == ["absent"]
    # the account's other APIs: the permission goes with the last of them
    rest = client.request(a0_grants[1:], action="revoke", request_id="widen-003")
    assert [r.decision for r in rest.results] == ["revoked"] * (APIS - 1)
    assert a0 not in _shared(sc.function_policy())
    assert shared[a0]["Sid"] not in _references(fresh_local, sc.authorizer_arn, sc.config.reference_table)
    assert len(sc.function_policy()["Statement"]) == len(accounts)

    # the others again: nothing changes, one read and no write
    aws_calls.clear()
    others = [g for g in grants if g["source_account"] != a0]
    again = client.request(others, request_id="widen-004")
    assert {r.decision for r in again.results} == {"unchanged"}
    assert [op for op in aws_calls.operations() if op.startswith("lambda.")] == ["lambda.GetPolicy"]

    # everything revoked: only the foreign permission is left, and no reference
    out = client.request(grants, action="revoke", request_id="widen-005")
    assert [r.decision for r in out.results] == ["absent"] * len(a0_grants) + ["revoked"] * len(others)
    assert sc.function_policy()["Statement"] == foreign
    assert _references(fresh_local, sc.authorizer_arn, sc.config.reference_table) == {}
    assert _lambda_failures(aws_calls) == []


def _source_account(result: Any, grants: list[dict[str, Any]]) -> str:
    return str(grants[result.index]["source_account"])


def test_without_widening_the_overflow_is_refused(fresh_local: LocalAws, tmp_path: Path, aws_calls: Any) -> None:
    sc, broker = _setup(fresh_local, tmp_path, aws_calls, None)
    foreign = sc.function_policy()["Statement"]
    everything = grants_of(sc)
    k = first_overflow(sc, everything)

    response = sc.client(broker).request(everything[:k])

    decisions = [r.decision for r in response.results]
    assert decisions == ["applied"] * (k - 1) + ["failed"]
    refused = response.results[-1]
    assert f"over Lambda's {LIMIT}-byte limit" in refused.reason
    assert f"allow compaction: [widen-source-arn] in rule {RULE}" in refused.reason
    assert refused.compaction is None
    assert _lambda_failures(aws_calls) == [], "the oversized policy was never asked for"
    policy = sc.function_policy()
    assert lambda_size(policy) <= LIMIT
    assert [s for s in policy["Statement"] if s["Sid"] == seed.FOREIGN_SID] == foreign
    assert len(policy["Statement"]) == k  # the foreign one and K-1 exact permissions
    assert not any(s["Sid"].startswith(SHARED) for s in policy["Statement"])
    assert everything[k - 1]["source_arn"] not in json.dumps(policy)
    assert [op for op in aws_calls.operations() if op == "lambda.AddPermission"] == ["lambda.AddPermission"] * (k - 1)
    assert _references(fresh_local, sc.authorizer_arn, sc.config.reference_table) == {}
