"""lambda-invoke planning with widen-source-arn: refusals that name the remedy, repairs after a crash.

Pure: the grant kind's ``plan`` on a policy document and the reference table's content,
as the broker passes them (the end-to-end behaviour is in tests/functional/test_compaction_lambda.py).
"""

from __future__ import annotations

from typing import Any

from deploy_helper.grants import REGISTRY, LambdaInvokeGrant
from deploy_helper.grants.base import Allowed, SourceScope

FUNCTION = "arn:aws:lambda:us-east-1:222222222222:function:token-authorizer"
KIND: Any = REGISTRY["lambda-invoke"]
WIDEN = frozenset({"widen-source-arn"})
FOREIGN = {
    "Sid": "TeamOwnedDoNotTouch",
    "Effect": "Allow",
    "Principal": {"Service": "events.amazonaws.com"},
    "Action": "lambda:InvokeFunction",
    "Resource": FUNCTION,
}


def grant(account: int, api: int = 0) -> LambdaInvokeGrant:
    acct = str(500000000000 + account)
    return LambdaInvokeGrant.model_validate(
        {
            "kind": "lambda-invoke",
            "function": FUNCTION,
            "principal": "apigateway.amazonaws.com",
            "source_arn": f"arn:aws:execute-api:us-east-1:{acct}:a{account:04d}{api}bcde/authorizers/*",
            "source_account": acct,
        }
    )


def allowed(spec: LambdaInvokeGrant, compaction: frozenset[str] = WIDEN) -> Allowed:
    assert spec.source_account is not None
    widened = f"arn:aws:execute-api:us-east-1:{spec.source_account}:*/authorizers/*"
    return Allowed("authorizer-invoke", compaction, SourceScope(spec.source_account, widened))


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Id": "default", "Statement": [FOREIGN, *statements]}


def test_past_the_limit_even_widened_the_refusal_says_so() -> None:
    specs = [grant(i) for i in range(120)]
    plan = KIND.plan(policy(), FUNCTION, [(s, "apply") for s in specs], [allowed(s) for s in specs], references={})
    outcomes = [p.outcome for p in plan.items]
    fitted = outcomes.count("applied")
    assert 40 < fitted < 120 and outcomes == ["applied"] * fitted + ["failed"] * (120 - fitted)
    reason = plan.items[-1].reason
    assert "over Lambda's 20480-byte limit" in reason
    assert "even with one permission per source account (widen-source-arn)" in reason
    assert plan.references is not None and len(plan.references) == fitted


def test_without_a_reference_table_nothing_is_widened_and_the_refusal_says_why() -> None:
    specs = [grant(i) for i in range(120)]
    plan = KIND.plan(policy(), FUNCTION, [(s, "apply") for s in specs], [allowed(s) for s in specs], references=None)
    assert all(add[1].startswith("DeployHelper") and "Shared" not in add[1] for add in plan.writes)
    assert plan.references is None
    assert "no reference table (DEPLOY_HELPER_REFERENCE_TABLE)" in plan.items[-1].reason


def test_a_reference_without_its_permission_is_repaired_by_applying_again() -> None:
    """A crash between writing the reference and AddPermission: re-sending puts the grant in force.

    The stale reference is dropped, and the grant gets its own permission (the policy has
    room, so nothing is widened).
    """
    spec = grant(1)
    sid = KIND.shared_sid(spec, allowed(spec).source_scope)
    refs = {sid: [KIND.grant_id(spec)]}
    plan = KIND.plan(policy(), FUNCTION, [(spec, "apply")], [allowed(spec)], references=refs)
    assert [p.outcome for p in plan.items] == ["applied"]
    assert [(op, s) for op, s, _ in plan.writes] == [("add", KIND.grant_id(spec))]
    assert plan.references == {}


def test_revoking_a_reference_whose_permission_is_gone_only_clears_the_reference() -> None:
    """A crash between RemovePermission and the reference write: re-sending the revoke finishes it."""
    spec = grant(1)
    sid = KIND.shared_sid(spec, allowed(spec).source_scope)
    plan = KIND.plan(policy(), FUNCTION, [(spec, "revoke")], [allowed(spec)], references={sid: [KIND.grant_id(spec)]})
    assert [p.outcome for p in plan.items] == ["revoked"]
    assert plan.writes == []
    assert plan.references == {}


def test_a_shared_permission_stays_while_another_grant_holds_it() -> None:
    a, b = grant(1, 0), grant(1, 1)
    scope = allowed(a).source_scope
    assert scope == allowed(b).source_scope
    shared = KIND.shared_statement(a, scope)
    refs = {shared["Sid"]: sorted([KIND.grant_id(a), KIND.grant_id(b)])}
    plan = KIND.plan(policy(shared), FUNCTION, [(a, "revoke")], [allowed(a)], references=refs)
    assert [p.outcome for p in plan.items] == ["revoked"]
    assert plan.writes == [], "the permission stays for the other grant"
    assert plan.references == {shared["Sid"]: [KIND.grant_id(b)]}
    assert plan.items[0].compaction == f"removed from {shared['Sid']}, 1 grants remain"
    # b, applied again with the permission present and referenced: unchanged, no call
    again = KIND.plan(policy(shared), FUNCTION, [(b, "apply")], [allowed(b)], references=plan.references)
    assert [p.outcome for p in again.items] == ["unchanged"] and again.writes == []
    assert KIND.present(policy(shared), b, plan.references)
    assert not KIND.present(policy(shared), a, plan.references)


def account_grant(account: int) -> LambdaInvokeGrant:
    return LambdaInvokeGrant.model_validate(
        {"kind": "lambda-invoke", "function": FUNCTION, "principal": str(500000000000 + account)}
    )


def test_past_the_limit_account_principals_are_not_told_to_grant_the_organization() -> None:
    """The bootstrap role refuses principal '*' (with PrincipalOrgID too): that remedy is not offered."""
    specs = [account_grant(i) for i in range(200)]
    plan = KIND.plan(policy(), FUNCTION, [(s, "apply") for s in specs], [Allowed("callers-invoke")] * 200)
    reason = plan.items[-1].reason
    assert plan.items[-1].outcome == "failed"
    assert "over Lambda's 20480-byte limit" in reason
    assert reason.endswith("remove unused permissions, or spread the callers over more than one function")
    assert "organization" not in reason and "principal_org_id" not in reason and "'*'" not in reason


def test_the_organization_remedy_is_offered_only_where_the_bootstrap_allows_it(monkeypatch: Any) -> None:
    from deploy_helper.grants import lambda_invoke

    monkeypatch.setattr(lambda_invoke, "ORGANIZATION_GRANTS_BOOTSTRAPPED", True)
    specs = [account_grant(i) for i in range(200)]
    plan = KIND.plan(policy(), FUNCTION, [(s, "apply") for s in specs], [Allowed("callers-invoke")] * 200)
    assert "grant to the organization (principal '*' with principal_org_id)" in plan.items[-1].reason
