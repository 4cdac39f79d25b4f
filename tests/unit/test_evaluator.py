"""The IAM policy evaluator, then the bootstrap role's policy against the grant kinds' needs.

The first half pins the evaluator to IAM's documented evaluation rules; the
second half uses it to prove that the broker role allows every action a
registered grant kind calls on a resource that opted in, and nothing on one
that did not.
"""

from __future__ import annotations

import fnmatch
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from account_bootstrap import OPT_IN_TAG, render_resources
from account_bootstrap.evaluator import (
    Decision,
    Request,
    UnsupportedPolicyError,
    arn_match,
    conditions_hold,
    evaluate,
    explain,
    glob_match,
)
from deploy_helper.grants import REGISTRY, AnyGrant
from deploy_helper.grants.kms_grant import KmsOperation
from deploy_helper.grants.lambda_invoke import ORGANIZATION_GRANTS_BOOTSTRAPPED

ACCOUNT = "111111111111"
OTHER_ACCOUNT = "999999999999"
BROKER = "arn:aws:iam::123456789012:role/deploy-helper-broker-exec"


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


# -- evaluator semantics ----------------------------------------------------------------


def test_wildcards_match_whole_value_only() -> None:
    assert glob_match("auth-*", "auth-x")
    assert glob_match("a?c", "abc")
    assert not glob_match("a?c", "abbc")
    assert not glob_match("auth-*", "my-auth-x")
    assert glob_match("S3:GET*", "s3:GetBucketPolicy", ignore_case=True)
    assert not glob_match("a.c", "abc")  # regex characters are literal


def test_arn_wildcards_stay_within_their_component() -> None:
    fn = "arn:aws:lambda:eu-west-1:111111111111:function:auth-x:prod"
    assert arn_match("arn:*:lambda:*:*:function:auth-*", fn)  # the last component keeps its colons
    assert arn_match("*", fn)
    assert not arn_match("arn:aws:lambda:*:222222222222:function:*", fn)
    # '*' in the region component must not swallow the account component
    assert not arn_match("arn:aws:lambda:*:function:auth-x:prod", fn)


def test_explicit_deny_beats_allow_and_nothing_is_implicit_deny() -> None:
    allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    deny = {"Sid": "NoDelete", "Effect": "Deny", "Action": "s3:DeleteBucketPolicy", "Resource": "*"}
    request = Request("s3:DeleteBucketPolicy", "arn:aws:s3:::b")
    assert explain([policy(allow), policy(deny)], request).decision is Decision.EXPLICIT_DENY
    assert explain([policy(allow), policy(deny)], request).statements == ("NoDelete",)
    assert evaluate([policy(allow)], Request("s3:GetBucketPolicy", "arn:aws:s3:::b")) is Decision.ALLOW
    assert evaluate([policy(allow)], Request("kms:CreateGrant", "arn:aws:s3:::b")) is Decision.IMPLICIT_DENY
    assert evaluate([], request) is Decision.IMPLICIT_DENY


def test_not_action_and_not_resource() -> None:
    statement = {"Effect": "Allow", "NotAction": "iam:*", "NotResource": "arn:aws:s3:::secret"}
    assert evaluate([policy(statement)], Request("s3:GetBucketPolicy", "arn:aws:s3:::open")).allowed
    assert not evaluate([policy(statement)], Request("iam:PassRole", "arn:aws:s3:::open")).allowed
    assert not evaluate([policy(statement)], Request("s3:GetBucketPolicy", "arn:aws:s3:::secret")).allowed


def test_several_keys_are_anded_and_several_values_ored() -> None:
    condition = {"StringEquals": {"k1": ["a", "b"], "k2": "c"}}
    assert conditions_hold(condition, {"k1": "b", "k2": "c"})
    assert not conditions_hold(condition, {"k1": "b", "k2": "d"})
    assert not conditions_hold(condition, {"k1": "z", "k2": "c"})
    # keys are case-insensitive, values are not
    assert conditions_hold({"StringEquals": {"AWS:ResourceAccount": "1"}}, {"aws:resourceaccount": "1"})
    assert not conditions_hold({"StringEquals": {"k": "Abc"}}, {"k": "abc"})
    assert conditions_hold({"StringEqualsIgnoreCase": {"k": "Abc"}}, {"k": "abc"})


def test_negated_operators_are_nor_and_pass_on_a_missing_key() -> None:
    condition = {"StringNotEquals": {"k": ["a", "b"]}}
    assert conditions_hold(condition, {"k": "c"})
    assert not conditions_hold(condition, {"k": "a"})
    assert conditions_hold(condition, {})  # missing key: negated operator holds
    assert not conditions_hold({"StringEquals": {"k": "a"}}, {})  # positive operator fails
    assert conditions_hold({"StringEqualsIfExists": {"k": "a"}}, {})
    assert not conditions_hold({"StringEqualsIfExists": {"k": "a"}}, {"k": "b"})
    assert conditions_hold({"StringNotLike": {"k": "a*"}}, {"k": "ba"})
    assert not conditions_hold({"ArnNotLike": {"k": "arn:aws:s3:::a*"}}, {"k": "arn:aws:s3:::ab"})


def test_set_qualifiers() -> None:
    any_of = {"ForAnyValue:StringLike": {"kms:ResourceAliases": "alias/art-*"}}
    assert conditions_hold(any_of, {"kms:ResourceAliases": ["alias/x", "alias/art-1"]})
    assert not conditions_hold(any_of, {"kms:ResourceAliases": ["alias/x"]})
    assert not conditions_hold(any_of, {})  # ForAnyValue on a missing key fails
    all_of = {"ForAllValues:StringEquals": {"aws:TagKeys": ["A", "B"]}}
    assert conditions_hold(all_of, {"aws:TagKeys": ["A"]})
    assert not conditions_hold(all_of, {"aws:TagKeys": ["A", "C"]})
    assert conditions_hold(all_of, {})  # ForAllValues on a missing key holds
    with pytest.raises(UnsupportedPolicyError, match="several values"):
        conditions_hold({"StringEquals": {"aws:TagKeys": "A"}}, {"aws:TagKeys": ["A", "B"]})


def test_null_bool_numeric_and_arn_operators() -> None:
    assert conditions_hold({"Null": {"sts:SourceIdentity": "false"}}, {"sts:SourceIdentity": "r-1"})
    assert not conditions_hold({"Null": {"sts:SourceIdentity": "false"}}, {})
    assert conditions_hold({"Null": {"sts:SourceIdentity": "true"}}, {})
    assert conditions_hold({"Bool": {"aws:SecureTransport": "true"}}, {"aws:SecureTransport": True})
    assert not conditions_hold({"Bool": {"aws:SecureTransport": True}}, {"aws:SecureTransport": False})
    assert conditions_hold({"NumericLessThanEquals": {"n": "3600"}}, {"n": 3600})
    assert not conditions_hold({"NumericLessThan": {"n": "3600"}}, {"n": "3600"})
    assert not conditions_hold({"NumericGreaterThan": {"n": "1"}}, {"n": "not-a-number"})
    assert conditions_hold(
        {"ArnLike": {"aws:SourceArn": "arn:aws:execute-api:*:333333333333:*"}},
        {"aws:SourceArn": "arn:aws:execute-api:eu-west-1:333333333333:api/x"},
    )


def test_principals_of_resource_policies() -> None:
    trust = policy({"Effect": "Allow", "Principal": {"AWS": BROKER}, "Action": "sts:AssumeRole"})
    role = "arn:aws:iam::111111111111:role/r"
    assert evaluate([trust], Request("sts:AssumeRole", role, principal=BROKER)).allowed
    assert not evaluate([trust], Request("sts:AssumeRole", role, principal=BROKER + "-not")).allowed
    assert not evaluate([trust], Request("sts:AssumeRole", role)).allowed
    account_root = policy({"Effect": "Allow", "Principal": {"AWS": "123456789012"}, "Action": "sts:*"})
    assert evaluate([account_root], Request("sts:AssumeRole", role, principal=BROKER)).allowed


@pytest.mark.parametrize(
    "statement",
    [
        {
            "Effect": "Allow",
            "Action": "s3:*",
            "Resource": "*",
            "Condition": {"IpAddress": {"aws:SourceIp": "1.2.3.4"}},
        },
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::${aws:username}"},
        {
            "Effect": "Allow",
            "Action": "s3:*",
            "Resource": "*",
            "Condition": {"ForSomeValues:StringEquals": {"k": "v"}},
        },
        {"Effect": "Allow", "Action": "s3:*", "NotAction": "s3:Get*", "Resource": "*"},
        {"Effect": "Maybe", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Surprise": True},
    ],
)
def test_what_it_does_not_understand_is_refused_not_guessed(statement: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedPolicyError):
        evaluate([policy(statement)], Request("s3:GetBucketPolicy", "arn:aws:s3:::b", {"k": "v"}))


# -- the broker role against the grant kinds -------------------------------------------

#: The other kinds' resources (ECR, SQS, SNS, Secrets Manager, EventBridge): each example's.
OTHER_KINDS = [k for k in REGISTRY.values() if k.service not in ("lambda", "s3", "kms")]


def example_resource(kind: Any, account: str) -> str:
    spec = TypeAdapter(AnyGrant).validate_python(kind.example)
    return str(kind.resource(spec)).replace(f":{kind.target_account(spec)}:", f":{account}:")


PARAMETERS = {
    "BrokerExecutionRoleArn": BROKER,
    "ExternalId": "external-id-for-tests",
    "FunctionNamePatterns": "authorizer-*,token-check",
    "BucketNamePatterns": "pipeline-artifacts-*",
    "KeyAliasPatterns": "alias/artifacts-*",
    # each other kind's example resource, in any account (the role's condition pins its own)
    "ResourceArnPatterns": ",".join(example_resource(k, "*") for k in OTHER_KINDS),
}


def broker_policies(parameters: dict[str, str] | None = None) -> list[dict[str, Any]]:
    resources = render_resources(parameters or PARAMETERS, account=ACCOUNT)
    return [p["PolicyDocument"] for p in resources["BrokerRole"]["Properties"]["Policies"]]


def target(action: str, opt_in: str, account: str = ACCOUNT) -> Request:
    """``action`` on a resource that opted in by ``opt_in`` ('tag', 'name' or 'none')."""
    service = action.split(":")[0]
    tagged = {f"aws:ResourceTag/{OPT_IN_TAG}": "true"} if opt_in == "tag" else {}
    context: dict[str, Any] = {"aws:ResourceAccount": account, **tagged}
    if service == "lambda":
        name = "authorizer-eu" if opt_in == "name" else "billing-worker"
        resource = f"arn:aws:lambda:eu-west-1:{account}:function:{name}"
        if action == "lambda:AddPermission":
            context["lambda:Principal"] = "333333333333"
    elif service == "s3":
        name = "pipeline-artifacts-eu" if opt_in == "name" else "team-data"
        resource = f"arn:aws:s3:::{name}"
    elif service == "kms":
        resource = f"arn:aws:kms:eu-west-1:{account}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        context["kms:ResourceAliases"] = ["alias/artifacts-eu"] if opt_in == "name" else ["alias/payroll"]
        if action == "kms:CreateGrant":
            context["kms:GrantOperations"] = ["Decrypt", "DescribeKey"]
            context["kms:GranteePrincipal"] = "arn:aws:iam::333333333333:role/deploy"
    else:
        # Any other kind's resource: its example's (named in ResourceArnPatterns), or another.
        kind = next(k for k in OTHER_KINDS if k.service == service)
        resource = example_resource(kind, account) + ("" if opt_in == "name" else "x")
        if action == "secretsmanager:PutResourcePolicy":
            context["secretsmanager:BlockPublicPolicy"] = "true"  # what the secret-read kind always sends
    return Request(action, resource, context)


GRANT_ACTIONS = sorted({action for kind in REGISTRY.values() for action in kind.permissions})


def test_registry_has_grant_kinds() -> None:
    assert {"lambda-invoke", "bucket-access", "kms-grant"} <= set(REGISTRY)
    assert GRANT_ACTIONS


@pytest.mark.parametrize("action", GRANT_ACTIONS)
@pytest.mark.parametrize("opt_in", ["tag", "name"])
def test_every_grant_action_is_allowed_on_an_opted_in_resource(action: str, opt_in: str) -> None:
    assert evaluate(broker_policies(), target(action, opt_in)) is Decision.ALLOW


@pytest.mark.parametrize("action", GRANT_ACTIONS)
def test_every_grant_action_is_refused_on_a_resource_that_did_not_opt_in(action: str) -> None:
    assert evaluate(broker_policies(), target(action, "none")) is Decision.IMPLICIT_DENY


@pytest.mark.parametrize("action", GRANT_ACTIONS)
def test_every_grant_action_is_refused_in_another_account(action: str) -> None:
    assert not evaluate(broker_policies(), target(action, "name", account=OTHER_ACCOUNT)).allowed
    assert not evaluate(broker_policies(), target(action, "tag", account=OTHER_ACCOUNT)).allowed


def test_tag_opt_in_can_be_turned_off() -> None:
    policies = broker_policies({**PARAMETERS, "OptInTagValue": ""})
    for action in GRANT_ACTIONS:
        assert not evaluate(policies, target(action, "tag")).allowed, action
        assert evaluate(policies, target(action, "name")).allowed, action


def test_only_the_configured_tag_value_opts_in() -> None:
    policies = broker_policies({**PARAMETERS, "OptInTagValue": "platform"})
    request = target("lambda:AddPermission", "tag")  # tagged "true"
    assert not evaluate(policies, request).allowed
    retagged = Request(
        request.action,
        request.resource,
        {**request.context, f"aws:ResourceTag/{OPT_IN_TAG}": "platform"},
    )
    assert evaluate(policies, retagged).allowed


def test_function_patterns_cover_versions_and_aliases() -> None:
    request = target("lambda:RemovePermission", "name")
    qualified = Request(request.action, request.resource + ":live", request.context)
    exact = Request(
        request.action,
        f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:token-check:3",
        request.context,
    )
    assert evaluate(broker_policies(), qualified).allowed
    assert evaluate(broker_policies(), exact).allowed


@pytest.mark.parametrize(
    ("action", "extra", "sids"),
    [
        (
            "lambda:AddPermission",
            {"lambda:Principal": "*"},
            ("NoPublicFunctionPermissions", "OnlyPrincipalsOfLambdaInvokeGrants"),
        ),
        ("lambda:AddPermission", {"lambda:FunctionUrlAuthType": "NONE"}, ("NoFunctionUrlPermissions",)),
        ("lambda:AddPermission", {"lambda:FunctionUrlAuthType": "AWS_IAM"}, ("NoFunctionUrlPermissions",)),
        (
            "kms:CreateGrant",
            {"kms:GrantOperations": ["Decrypt", "CreateGrant"]},
            ("OnlyGrantOperationsRulesCanAllow",),
        ),
        ("kms:CreateGrant", {"kms:GrantOperations": None}, ("NoGrantWithoutOperations",)),
        ("kms:PutKeyPolicy", {"kms:BypassPolicyLockoutSafetyCheck": "true"}, ("NoKeyPolicyLockoutBypass",)),
        (
            "secretsmanager:PutResourcePolicy",
            {"secretsmanager:BlockPublicPolicy": "false"},
            ("NoSecretPolicyWithoutPublicBlock",),
        ),
        (
            "secretsmanager:PutResourcePolicy",
            {"secretsmanager:BlockPublicPolicy": None},
            ("NoSecretPolicyWithoutPublicBlock",),
        ),
    ],
)
def test_guardrails_deny_even_on_opted_in_resources(action: str, extra: dict[str, Any], sids: tuple[str, ...]) -> None:
    base = target(action, "tag")
    context = {k: v for k, v in {**base.context, **extra}.items() if v is not None}
    verdict = explain(broker_policies(), Request(action, base.resource, context))
    assert verdict.decision is Decision.EXPLICIT_DENY
    assert verdict.statements == sids


def create_grant(operations: list[str], opt_in: str = "tag") -> Request:
    base = target("kms:CreateGrant", opt_in)
    return Request(base.action, base.resource, {**base.context, "kms:GrantOperations": operations})


def test_the_grant_operations_the_role_allows_are_exactly_those_rules_can_allow() -> None:
    """The bootstrap's list is the grant kind's KmsOperation, so no rule asks for what the role refuses."""
    (statement,) = [
        s for p in broker_policies() for s in p["Statement"] if s.get("Sid") == "OnlyGrantOperationsRulesCanAllow"
    ]
    listed = statement["Condition"]["ForAnyValue:StringNotEquals"]["kms:GrantOperations"]
    assert sorted(listed) == sorted(get_args(KmsOperation))


@pytest.mark.parametrize("opt_in", ["tag", "name"])
@pytest.mark.parametrize(
    "operations",
    [[op] for op in get_args(KmsOperation)] + [sorted(get_args(KmsOperation)), ["Decrypt", "DescribeKey"]],
)
def test_a_grant_of_operations_rules_can_allow_may_be_created(operations: list[str], opt_in: str) -> None:
    assert evaluate(broker_policies(), create_grant(operations, opt_in)) is Decision.ALLOW


@pytest.mark.parametrize(
    "operations",
    [
        ["CreateGrant"],
        ["RetireGrant"],
        ["Decrypt", "RetireGrant"],
        ["Sign"],
        ["Verify"],
        ["GenerateMac"],
        ["DeriveSharedSecret"],
        ["GenerateDataKeyPair"],
        ["Decrypt", "DescribeKey", "Sign"],
        ["decrypt"],  # operation names are case-sensitive
    ],
)
def test_a_grant_of_any_other_operation_is_denied(operations: list[str]) -> None:
    for opt_in in ("tag", "name"):
        verdict = explain(broker_policies(), create_grant(operations, opt_in))
        assert verdict.decision is Decision.EXPLICIT_DENY
        assert verdict.statements == ("OnlyGrantOperationsRulesCanAllow",)


def add_permission(principal: str) -> Request:
    base = target("lambda:AddPermission", "tag")
    return Request(base.action, base.resource, {**base.context, "lambda:Principal": principal})


@pytest.mark.parametrize(
    "principal",
    [
        "apigateway.amazonaws.com",
        "events.amazonaws.com.cn",
        "333333333333",
        "arn:aws:iam::333333333333:root",
        "arn:aws:iam::333333333333:role/deploy",
        "arn:aws:iam::333333333333:role/team/cfn-deploy-a",
    ],
)
def test_function_permissions_for_the_principals_of_lambda_invoke_grants(principal: str) -> None:
    assert evaluate(broker_policies(), add_permission(principal)) is Decision.ALLOW


@pytest.mark.parametrize(
    "principal",
    [
        "*",
        "arn:aws:iam::333333333333:user/alice",
        "arn:aws:sts::333333333333:assumed-role/deploy/session",
        "arn:aws:iam::333333333333:oidc-provider/token.actions.githubusercontent.com",
        "3333333333",
        "cognito-identity.amazonaws.com.evil.example",
    ],
)
def test_function_permissions_for_other_principals_are_denied(principal: str) -> None:
    verdict = explain(broker_policies(), add_permission(principal))
    assert verdict.decision is Decision.EXPLICIT_DENY
    assert "OnlyPrincipalsOfLambdaInvokeGrants" in verdict.statements


@settings(max_examples=60, deadline=None)
@given(name=st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True))
def test_a_function_name_is_allowed_exactly_when_a_pattern_matches(name: str) -> None:
    policies = broker_policies({**PARAMETERS, "OptInTagValue": ""})
    request = Request(
        "lambda:GetPolicy",
        f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:{name}",
        {"aws:ResourceAccount": ACCOUNT},
    )
    expected = any(fnmatch.fnmatchcase(name, p) for p in PARAMETERS["FunctionNamePatterns"].split(","))
    assert evaluate(policies, request).allowed is expected


def test_what_the_broker_says_of_organization_grants_matches_the_role() -> None:
    """An organization-wide grant is AddPermission with principal '*' (and PrincipalOrgID):
    the broker suggests it as a remedy only if the bootstrap role allows it."""
    request = add_permission("*")
    with_org = Request(request.action, request.resource, {**request.context, "aws:PrincipalOrgID": "o-a1b2c3d4e5"})
    assert evaluate(broker_policies(), with_org).allowed is ORGANIZATION_GRANTS_BOOTSTRAPPED
    assert evaluate(broker_policies(), request).allowed is ORGANIZATION_GRANTS_BOOTSTRAPPED


@pytest.mark.parametrize(
    ("grantee", "allowed"),
    [
        ("arn:aws:iam::333333333333:role/deploy", True),
        ("arn:aws:iam::333333333333:role/team/cfn-deploy-a", True),
        ("arn:aws:iam::333333333333:root", True),
        ("arn:aws:iam::333333333333:user/alice", False),
        ("arn:aws:sts::333333333333:assumed-role/deploy/session", False),
        ("*", False),
        ("kms.amazonaws.com", False),
    ],
)
def test_grants_only_to_the_grantees_kms_grant_grants_have(grantee: str, allowed: bool) -> None:
    base = create_grant(["Decrypt"])
    verdict = explain(
        broker_policies(), Request(base.action, base.resource, {**base.context, "kms:GranteePrincipal": grantee})
    )
    assert verdict.decision is (Decision.ALLOW if allowed else Decision.EXPLICIT_DENY)
    if not allowed:
        assert verdict.statements == ("OnlyGranteesOfKmsGrants",)


@pytest.mark.parametrize("grantee", ["arn:aws:iam::333333333333:role/deploy", "333333333333"])
def test_the_grantee_the_broker_sends_is_one_the_role_allows(grantee: str) -> None:
    kind: Any = REGISTRY["kms-grant"]
    spec = kind.spec.model_validate({**kind.example, "grantee": grantee})
    base = create_grant(list(spec.operations))
    request = Request(
        base.action, base.resource, {**base.context, "kms:GranteePrincipal": kind.grantee_principal(spec)}
    )
    assert evaluate(broker_policies(), request) is Decision.ALLOW
