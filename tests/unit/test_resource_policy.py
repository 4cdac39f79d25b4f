"""The shared plan of the resource-policy kinds (pure): one managed statement, foreign ones untouched.

Run over every kind built on ``ResourcePolicyKind`` (bucket-access too) with nothing per
kind: the kind's own example is the grant.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from deploy_helper.execution.policydoc import compact_size
from deploy_helper.grants import REGISTRY, AnyGrant
from deploy_helper.grants.base import MERGE_PRINCIPALS, Allowed
from deploy_helper.grants.resource_policy import ResourcePolicyKind, meaning

GRANT: TypeAdapter[Any] = TypeAdapter(AnyGrant)
POLICY_KINDS = sorted(name for name, kind in REGISTRY.items() if isinstance(kind, ResourcePolicyKind))
MERGE = Allowed("r", frozenset({MERGE_PRINCIPALS}))
FOREIGN = {
    "Sid": "TeamOwned",
    "Effect": "Deny",
    "Principal": {"AWS": "arn:aws:iam::444444444444:root"},
    "Action": "x:Y",
}


def kind_and_spec(name: str) -> tuple[Any, Any]:
    kind = REGISTRY[name]
    return kind, GRANT.validate_python(kind.example)


def roles(name: str, count: int) -> list[Any]:
    """``count`` grants of the example's shape to distinct roles (when the kind takes roles)."""
    kind = REGISTRY[name]
    base = {k: v for k, v in kind.example.items() if k not in ("source_arn", "source_account", "principal_org_id")}
    return [
        GRANT.validate_python({**base, "principal": f"arn:aws:iam::333333333333:role/r{i:03d}"}) for i in range(count)
    ]


def test_the_resource_policy_kinds() -> None:
    expected = {"kms-key-policy", "ecr-pull", "sqs-send", "sns-publish", "secret-read", "events-put", "bucket-access"}
    assert set(POLICY_KINDS) == expected


@pytest.mark.parametrize("name", POLICY_KINDS)
def test_apply_reapply_revoke_revoke_again_plan(name: str) -> None:
    kind, spec = kind_and_spec(name)
    resource = kind.resource(spec)
    state = {"Version": "2012-10-17", "Statement": [copy.deepcopy(FOREIGN)]}
    applied = kind.plan(state, resource, [(spec, "apply")])
    assert [i.outcome for i in applied.items] == ["applied"]
    (after,) = applied.writes
    assert after["Statement"][0] == FOREIGN
    assert [s["Sid"] for s in after["Statement"][1:]] == [kind.grant_id(spec)]
    assert kind.present(after, spec)
    again = kind.plan(after, resource, [(spec, "apply")])
    assert [i.outcome for i in again.items] == ["unchanged"] and again.writes == []
    revoked = kind.plan(after, resource, [(spec, "revoke")])
    assert [i.outcome for i in revoked.items] == ["revoked"]
    assert revoked.writes == [state]
    absent = kind.plan(state, resource, [(spec, "revoke")])
    assert [i.outcome for i in absent.items] == ["absent"] and absent.writes == []
    # the last statement gone: no policy at all
    assert kind.plan({"Statement": [kind.statement(spec)]}, resource, [(spec, "revoke")]).writes == [None]


@pytest.mark.parametrize("name", POLICY_KINDS)
def test_a_reserialised_statement_is_still_the_grant(name: str) -> None:
    """AWS may return lists as strings, account ids as ``:root`` ARNs, keys in another order."""
    kind, spec = kind_and_spec(name)
    statement = kind.statement(spec)
    shuffled = json.loads(json.dumps(dict(reversed(list(statement.items())))))
    if isinstance(shuffled["Action"], list) and len(shuffled["Action"]) == 1:
        shuffled["Action"] = shuffled["Action"][0]
    assert meaning(shuffled) == meaning(statement)
    widened = {**statement, "NotResource": "arn:aws:s3:::x"}
    assert meaning(widened) != meaning(statement)


@pytest.mark.parametrize("name", POLICY_KINDS)
def test_past_the_limit_grants_are_refused_or_merged_as_their_rule_allows(name: str) -> None:
    kind, _ = kind_and_spec(name)
    grants = roles(name, 400)
    resource = kind.resource(grants[0])
    plain = kind.plan(None, resource, [(g, "apply") for g in grants])
    failed = [i for i in plain.items if i.outcome == "failed"]
    assert failed, "400 statements must not fit"
    assert f"{kind.size_limit}-byte limit" in failed[0].reason or "statements, over" in failed[0].reason
    assert "allow compaction: [merge-principals]" in failed[0].reason
    assert compact_size(plain.writes[0]) <= kind.size_limit

    merged = kind.plan(None, resource, [(g, "apply") for g in grants], [MERGE] * len(grants))
    assert all(i.outcome in ("applied", "failed") for i in merged.items)
    (document,) = merged.writes
    assert compact_size(document) <= kind.size_limit
    shared = [s for s in document["Statement"] if s["Sid"].startswith("DeployHelperShared")]
    assert len(shared) == 1 and len(shared[0]["Principal"]["AWS"]) > len(plain.writes[0]["Statement"])
    assert all(kind.present(document, g) for g, i in zip(grants, merged.items, strict=True) if i.outcome == "applied")
    # leaving the shared statement removes one principal only
    first = next(g for g, i in zip(grants, merged.items, strict=True) if i.outcome == "applied")
    left = kind.plan(document, resource, [(first, "revoke")])
    assert [i.outcome for i in left.items] == ["revoked"]
    assert not kind.present(left.writes[0], first)
    assert sum(kind.present(left.writes[0], g) for g in grants) == sum(kind.present(document, g) for g in grants) - 1


@pytest.mark.parametrize("name", POLICY_KINDS)
def test_no_wildcard_no_free_form_actions_no_unbound_service(name: str) -> None:
    kind = REGISTRY[name]
    unbound = {k: v for k, v in kind.example.items() if k not in ("source_arn", "source_account", "principal_org_id")}
    for bad in (
        {"principal": "*"},  # events-put takes '*' only with principal_org_id
        {"principal": "arn:aws:iam::*:role/x"},
        {"principal": "sns.amazonaws.com"},
        {"principal": "lambda.amazonaws.com"},
        {"principal": '333333333333"}'},
        {"access": "*"},
        {"actions": ["*"]},
    ):
        with pytest.raises(ValidationError):
            GRANT.validate_python({**unbound, **bad})
