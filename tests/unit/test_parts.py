"""How the client cuts a large set of grants into requests (``pipeline_hooks.parts``)."""

from __future__ import annotations

from typing import Any

from deploy_helper.models import MAX_GRANTS
from pipeline_hooks.parts import grant_size, part_request_id, placement, plan_parts

KEY = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def own_bucket(account: int, role: str = "pipeline") -> dict[str, Any]:
    return {
        "kind": "bucket-access",
        "bucket": f"dh-artifacts-{account}",
        "account": str(account),
        "principal": f"arn:aws:iam::111111111111:role/{role}",
        "access": "read",
    }


def key_grant(account: int) -> dict[str, Any]:
    return {
        "kind": "kms-grant",
        "key": KEY,
        "grantee": f"arn:aws:iam::{account}:role/deploy",
        "operations": ["Decrypt"],
    }


def test_a_set_within_the_cap_is_one_part() -> None:
    grants = [own_bucket(500000000000 + i) for i in range(MAX_GRANTS)]
    assert plan_parts(grants) == [list(range(MAX_GRANTS))]
    assert plan_parts([]) == []


def test_resources_stay_whole_and_parts_fill_first_fit() -> None:
    # 5,000 grants: two on each of 2,000 accounts' own buckets, 1,000 on one key
    grants: list[dict[str, Any]] = []
    for i in range(2000):
        account = 500000000000 + i
        grants += [own_bucket(account), own_bucket(account, "builder")]
        if i < 1000:
            grants.append(key_grant(account))
    parts = plan_parts(grants)
    assert len(parts) == 5 and all(len(p) <= MAX_GRANTS for p in parts)
    assert sorted(i for p in parts for i in p) == list(range(5000))
    where = {i: n for n, p in enumerate(parts) for i in p}
    by_resource: dict[Any, set[int]] = {}
    for i, grant in enumerate(grants):
        by_resource.setdefault(placement(grant), set()).add(where[i])
    assert all(len(found) == 1 for found in by_resource.values())
    assert plan_parts(grants) == parts  # the same set is cut the same way


def test_a_resource_past_the_cap_is_cut_and_bytes_bound_a_part() -> None:
    grants = [key_grant(500000000000 + i) for i in range(25)]
    assert [len(p) for p in plan_parts(grants, max_grants=10)] == [10, 10, 5]
    size = grant_size(grants[0])
    assert [len(p) for p in plan_parts(grants, max_bytes=size * 7)] == [7, 7, 7, 4]
    invalid = [{"kind": "no-such-kind"}, {"kind": "kms-grant", "key": "not an arn"}]
    assert [placement(g) for g in invalid] == [None, None]


def test_part_ids_derive_from_the_callers_id_within_the_id_grammar() -> None:
    assert part_request_id("deploy-7f3a2c91", 2, 5) == "deploy-7f3a2c91.2of5"
    long_a, long_b = "a" * 60 + "-one", "a" * 60 + "-two"
    ids = {part_request_id(base, 10, 12) for base in (long_a, long_b)}
    assert len(ids) == 2 and all(len(i) <= 64 and i.endswith(".10of12") for i in ids)
