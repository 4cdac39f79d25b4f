"""The bootstrap template: lint-clean, versioned consistently, least privilege, narrow trust."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file

from account_bootstrap import (
    BOOTSTRAP_VERSION,
    MIN_BOOTSTRAP_SESSION_TAG,
    VERSION_TAG,
    load_template,
    render_resources,
    template_body,
    template_version,
)
from account_bootstrap.evaluator import Decision, Request, evaluate, explain
from account_bootstrap.rollout import BootstrapParameters, Count, config_digest, config_matches
from deploy_helper.grants import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
BROKER_TEMPLATE = ROOT / "account_bootstrap" / "broker-role.yaml"
#: The broker's own SAM template: linted here too once it exists (another change adds it).
SAM_TEMPLATE = ROOT / "template.yaml"

ACCOUNT = "111111111111"
BROKER = "arn:aws:iam::123456789012:role/deploy-helper-broker-exec"
EXTERNAL_ID = "external-id-for-tests-000000000001"
PARAMETERS = {
    "BrokerExecutionRoleArn": BROKER,
    "ExternalId": EXTERNAL_ID,
    "FunctionNamePatterns": "authorizer-*",
}
READER_ACTIONS = {
    "cloudformation:DescribeStacks",
    "cloudformation:GetTemplate",
    "cloudformation:DescribeStackResource",
    "cloudformation:DescribeStackResources",
    "cloudformation:DescribeStackEvents",
}


def rendered(parameters: dict[str, str] | None = None) -> dict[str, Any]:
    return render_resources(parameters or PARAMETERS, account=ACCOUNT)


def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def actions_of(statement: dict[str, Any]) -> set[str]:
    action = statement["Action"]
    return {action} if isinstance(action, str) else set(action)


@pytest.mark.parametrize("path", [BROKER_TEMPLATE, SAM_TEMPLATE], ids=["broker-role", "sam-template"])
def test_templates_pass_cfn_lint_without_errors_or_warnings(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path.name} is not in the repository yet")
    matches = lint_file(path, ManualArgs(regions=["us-east-1", "eu-west-1"]))
    assert [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches] == []


def test_template_version_is_the_same_everywhere() -> None:
    template = load_template()
    assert template_version(template) == BOOTSTRAP_VERSION
    supported = [str(v) for v in range(1, BOOTSTRAP_VERSION + 1)]
    for logical in ("BrokerRole", "ReaderRole"):
        role = rendered()[logical]["Properties"]
        assert {"Key": VERSION_TAG, "Value": str(BOOTSTRAP_VERSION)} in role["Tags"]
        (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Condition"]["StringEquals"][f"aws:RequestTag/{MIN_BOOTSTRAP_SESSION_TAG}"] == supported
    assert f"v{BOOTSTRAP_VERSION}" in template["Description"]


def test_broker_role_grants_exactly_the_grant_kinds_actions() -> None:
    needed = {action for kind in REGISTRY.values() for action in kind.permissions}
    allows = [s for s in statements(rendered()["BrokerRole"]) if s["Effect"] == "Allow"]
    granted = set().union(*(actions_of(s) for s in allows))
    assert granted == needed


def test_no_iam_no_wildcard_actions_no_allow_on_every_resource() -> None:
    for logical in ("BrokerRole", "ReaderRole"):
        for statement in statements(rendered({**PARAMETERS, "BucketNamePatterns": "b-*"})[logical]):
            assert not any(a.startswith("iam:") or "*" in a for a in actions_of(statement)), statement
            if statement["Effect"] == "Allow":
                resource = statement["Resource"]
                assert "*" not in ([resource] if isinstance(resource, str) else resource), statement
                assert "Condition" in statement or logical == "ReaderRole", statement


def test_reader_role_only_reads_stacks_of_its_account() -> None:
    (statement,) = statements(rendered()["ReaderRole"])
    assert actions_of(statement) == READER_ACTIONS
    assert statement["Resource"] == f"arn:aws:cloudformation:*:{ACCOUNT}:stack/*/*"


def test_parameters_with_nothing_opted_in_keep_only_the_guardrails() -> None:
    role = rendered({**PARAMETERS, "FunctionNamePatterns": "", "OptInTagValue": ""})["BrokerRole"]
    assert {s["Effect"] for s in statements(role)} == {"Deny"}
    rules = load_template()["Rules"]["SomethingOptsIn"]["Assertions"]
    assert "Fn::Or" in rules[0]["Assert"]  # CloudFormation refuses such a stack before creating it


# -- trust ---------------------------------------------------------------------------------


def trust_request(action: str = "sts:AssumeRole", **overrides: Any) -> Request:
    context: dict[str, Any] = {
        "sts:ExternalId": EXTERNAL_ID,
        f"aws:RequestTag/{MIN_BOOTSTRAP_SESSION_TAG}": str(BOOTSTRAP_VERSION),
        "aws:TagKeys": [MIN_BOOTSTRAP_SESSION_TAG],
        "sts:SourceIdentity": "dh-request-1",
    }
    principal = overrides.pop("principal", BROKER)
    for key, value in overrides.items():
        if value is None:
            context.pop(key, None)
        else:
            context[key] = value
    return Request(action, f"arn:aws:iam::{ACCOUNT}:role/deploy-helper-broker", context, principal)


@pytest.fixture(params=["BrokerRole", "ReaderRole"])
def trust(request: pytest.FixtureRequest) -> dict[str, Any]:
    return rendered()[request.param]["Properties"]["AssumeRolePolicyDocument"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("action", ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"])
def test_the_broker_with_its_external_id_may_assume(trust: dict[str, Any], action: str) -> None:
    assert evaluate([trust], trust_request(action)) is Decision.ALLOW


@pytest.mark.parametrize(
    "overrides",
    [
        {"principal": "arn:aws:iam::123456789012:role/someone-else"},
        {"principal": "arn:aws:iam::222222222222:role/deploy-helper-broker-exec"},
        {"sts:ExternalId": "guessed"},
        {"sts:ExternalId": None},
        {"sts:SourceIdentity": None},
        {f"aws:RequestTag/{MIN_BOOTSTRAP_SESSION_TAG}": str(BOOTSTRAP_VERSION + 1)},
        {f"aws:RequestTag/{MIN_BOOTSTRAP_SESSION_TAG}": None},
        {"aws:TagKeys": [MIN_BOOTSTRAP_SESSION_TAG, "Team"], "aws:RequestTag/Team": "x"},
    ],
    ids=[
        "other-role",
        "other-account",
        "wrong-external-id",
        "no-external-id",
        "no-source-identity",
        "broker-needs-newer-bootstrap",
        "no-version-tag",
        "extra-session-tag",
    ],
)
def test_anyone_or_anything_else_is_refused(trust: dict[str, Any], overrides: dict[str, Any]) -> None:
    assert explain([trust], trust_request(**overrides)).decision is Decision.IMPLICIT_DENY


# -- rollout configuration ---------------------------------------------------------------


def parameters(**changes: Any) -> BootstrapParameters:
    values: dict[str, Any] = {"broker_role_arn": BROKER, "external_id": EXTERNAL_ID, **changes}
    return BootstrapParameters(**values)


def test_bootstrap_parameters_map_to_every_template_parameter() -> None:
    sent = {p["ParameterKey"] for p in parameters().cfn_parameters()}
    assert sent == set(load_template()["Parameters"])
    assert EXTERNAL_ID not in repr(parameters())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"broker_role_arn": "arn:aws:iam::123:role/x"}, "IAM role ARN"),
        ({"external_id": "has space"}, "ExternalId"),
        ({"function_name_patterns": ("a,b",)}, "not a valid pattern"),
        ({"bucket_name_patterns": ("*",)}, "matches everything"),
        ({"key_alias_patterns": ("artifacts-*",)}, "alias/artifacts-"),
        ({"resource_arn_patterns": ("arn:aws:*:*:*:deploy-*",)}, "arn:aws:sqs:"),
        ({"resource_arn_patterns": ("arn:aws:lambda:*:*:function:x",)}, "arn:aws:sqs:"),
        ({"resource_arn_patterns": ("arn:aws:sqs:*:*:*",)}, "matches everything"),
        ({"resource_arn_patterns": ("arn:aws:secretsmanager:*:*:secret:*",)}, "matches everything"),
        ({"opt_in_tag_value": ""}, "nothing would opt in"),
        ({"max_session_duration": 60}, "greater than or equal to 3600"),
    ],
)
def test_bad_parameters_say_what_to_fix(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parameters(**changes)


def test_config_digest_detects_any_change_and_hides_the_external_id() -> None:
    tag = config_digest(parameters())
    assert EXTERNAL_ID not in tag and len(tag) < 256
    assert config_matches(tag, parameters())
    assert not config_matches(tag, parameters(external_id="rotated-external-id-00000000000001"))
    assert not config_matches(tag, parameters(function_name_patterns=("authorizer-*",)))
    assert not config_matches(tag, parameters(), {"auto_deployment": False})
    assert not config_matches(None, parameters())
    assert config_digest(parameters()) != tag  # a fresh salt each time
    assert template_body().startswith("AWSTemplateFormatVersion")


@pytest.mark.parametrize(("text", "total", "expected"), [("3", 20, 3), ("10%", 20, 2), ("10%", 5, 0), ("100%", 7, 7)])
def test_counts(text: str, total: int, expected: int) -> None:
    assert Count.parse(text).of(total) == expected


@pytest.mark.parametrize("text", ["", "-1", "150%", "ten", "1.5"])
def test_bad_counts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="percentage"):
        Count.parse(text)
