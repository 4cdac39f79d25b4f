"""The SAM template and the examples: cfn-lint clean, least privilege, and usable as shipped."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file
from pydantic import TypeAdapter

from deploy_helper.entry import custom_resource
from deploy_helper.grants import AnyGrant
from deploy_helper.trust.rules import RuleSet
from deploy_helper.trust.stack_template import StackFacts, load_template, resolve
from pipeline_hooks.grants_file import load_grants_file

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SERVICE_STACK = ROOT / "examples" / "service-stack.yaml"
GRANTS = ROOT / "examples" / "grants.yaml"


def lint(path: Path) -> list[str]:
    matches = lint_file(path, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    return [str(m) for m in matches]


@pytest.mark.parametrize("path", [TEMPLATE, SERVICE_STACK], ids=lambda p: p.name)
def test_cfn_lint_reports_no_error_and_no_warning(path: Path) -> None:
    assert lint(path) == []


def test_cfn_lint_does_look_inside_the_transformed_template(tmp_path: Path) -> None:
    broken = TEMPLATE.read_text().replace(
        "    Condition: HasInvokerAccount1\n    Properties:\n",
        "    Condition: HasInvokerAccount1\n    Properties:\n      Bogus: 1\n",
    )
    (tmp_path / "template.yaml").write_text(broken)
    assert any("'Bogus' was unexpected" in m for m in lint(tmp_path / "template.yaml"))


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(TEMPLATE.read_text())


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if isinstance(v, dict) and v.get("Type") == kind}


def _names(value: Any) -> str:
    """A resource reference (``!GetAtt X.Arn``, ``!Sub ${X.Arn}/*``, ``!Ref X``) as X."""
    if isinstance(value, dict):
        ((fn, arg),) = value.items()
        if fn == "Fn::GetAtt":
            return str(arg[0])
        if fn == "Ref":
            return str(arg)
        if fn == "Fn::Sub" and str(arg).startswith("${"):
            return str(arg).split("}")[0].removeprefix("${").split(".")[0]
        if fn == "Fn::Sub":
            return str(arg)
    return str(value)


def broker_permissions(template: dict[str, Any]) -> dict[str, set[str]]:
    """Actions the broker's role is allowed, per resource it names."""
    role = template["Resources"]["BrokerExecutionRole"]["Properties"]
    allowed: dict[str, set[str]] = {}
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for resource in resources:
                allowed.setdefault(_names(resource), set()).update(actions)
    return allowed


def test_the_broker_role_may_do_only_what_the_broker_does(template: dict[str, Any]) -> None:
    allowed = broker_permissions(template)
    assert allowed["NonceTable"] == {"dynamodb:PutItem", "dynamodb:GetItem"}  # GetItem: a retry's first answer
    # Leases: taken, renewed and given back with conditional updates (in the ledger's
    # transactions too); read with the references in one BatchGetItem.
    assert allowed["LockTable"] == {"dynamodb:UpdateItem", "dynamodb:GetItem", "dynamodb:BatchGetItem"}
    # References of shared permissions: read, and replaced with a conditional update.
    assert allowed["ReferenceTable"] == {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:BatchGetItem"}
    # Append-only: the ledger can be added to and read, never changed or emptied.
    assert allowed["LedgerTable"] == {
        "dynamodb:PutItem",
        "dynamodb:GetItem",
        "dynamodb:Query",
    }
    # Checkpoints are the checkpointer's alone: the broker can neither sign nor store one.
    assert not {"CheckpointBucket", "CheckpointKey", "CheckpointerKey"} & set(allowed)
    assert allowed["BrokerLogGroup"] == {"logs:CreateLogStream", "logs:PutLogEvents"}
    roles = [r for r, actions in allowed.items() if "sts:AssumeRole" in actions]
    assert sorted(roles) == [
        "arn:${AWS::Partition}:iam::*:role${TargetRolePath}${BrokerRoleName}",
        "arn:${AWS::Partition}:iam::*:role${TargetRolePath}deploy-helper-reader",
    ]
    assert allowed[roles[0]] == {"sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"}
    everything = {a for actions in allowed.values() for a in actions}
    assert not any(a.endswith("*") for a in everything)
    assert "*" not in allowed


def test_the_function_is_small_capped_and_configured(template: dict[str, Any]) -> None:
    function = template["Resources"]["BrokerFunction"]["Properties"]
    assert function["Runtime"] == "python3.12"
    assert function["Architectures"] == [{"Ref": "Architecture"}]
    assert template["Parameters"]["Architecture"]["Default"] == "arm64"
    assert template["Parameters"]["Architecture"]["AllowedValues"] == ["arm64", "x86_64"]
    memory = template["Parameters"]["MemorySize"]  # sized by bench/memory.py (README "Memory")
    assert (memory["Default"], memory["MinValue"], memory["MaxValue"]) == (1024, 512, 1769)
    assert function["ReservedConcurrentExecutions"] == {"Ref": "ReservedConcurrency"}
    module, _, name = function["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))
    # Built by function/Makefile (function/build.py): deploy_helper without the CLI and the
    # local harness, policies/, and the pinned runtime dependencies; never the whole repository.
    assert function["CodeUri"] == "function/"
    assert template["Resources"]["BrokerFunction"]["Metadata"] == {"BuildMethod": "makefile"}
    assert (ROOT / "policies" / "rules.yaml").exists()  # shipped with the code
    variables = function["Environment"]["Variables"]
    assert {
        "DEPLOY_HELPER_AUDIENCE",
        "DEPLOY_HELPER_NONCE_TABLE",
        "DEPLOY_HELPER_LEDGER_TABLE",
        "DEPLOY_HELPER_LOCK_TABLE",
        "DEPLOY_HELPER_REFERENCE_TABLE",
        "DEPLOY_HELPER_EXTERNAL_ID",
    } <= set(variables)
    assert variables["DEPLOY_HELPER_EXTERNAL_ID"] == {"Ref": "ExternalId"}
    assert template["Parameters"]["ExternalId"]["NoEcho"] is True
    assert "DEPLOY_HELPER_CHECKPOINT_KEY" not in variables
    # The broker signs no checkpoints: its only schedules are the drift check and the expiry sweep.
    assert set(function.get("Events", {})) <= {"DriftCheck", "ExpirySweep"}


def test_state_is_kept_as_the_ledger_needs(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    for name in ("NonceTable", "LockTable"):
        table = resources[name]["Properties"]
        assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
        assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    # Revoking a shared permission's grants needs its references: kept like the ledger.
    references = resources["ReferenceTable"]
    assert references["DeletionPolicy"] == references["UpdateReplacePolicy"] == "Retain"
    assert "TimeToLiveSpecification" not in references["Properties"]
    ledger = resources["LedgerTable"]
    assert ledger["DeletionPolicy"] == ledger["UpdateReplacePolicy"] == "Retain"
    props = ledger["Properties"]
    assert props["KeySchema"] == [
        {"AttributeName": "ledger", "KeyType": "HASH"},
        {"AttributeName": "seq", "KeyType": "RANGE"},
    ]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["DeletionProtectionEnabled"] is True
    bucket = resources["CheckpointBucket"]["Properties"]
    assert bucket["ObjectLockEnabled"] is True
    assert bucket["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    key = resources["CheckpointKey"]["Properties"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert props["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}


def test_the_checkpointer_is_separate_and_only_the_stream_and_schedule_invoke_it(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    function = resources["CheckpointerFunction"]["Properties"]
    assert function["Handler"] == "deploy_helper.entry.checkpointer.lambda_handler"
    assert function["Role"] == {"Fn::GetAtt": ["CheckpointerRole", "Arn"]}
    assert function["ReservedConcurrentExecutions"] == 1
    variables = function["Environment"]["Variables"]
    assert variables["DEPLOY_HELPER_CHECKPOINT_KEY"] == {"Fn::Sub": "kms:${CheckpointerKey.Arn}"}
    events = function["Events"]
    assert {name: e["Type"] for name, e in events.items()} == {"LedgerStream": "DynamoDB", "Heartbeat": "Schedule"}
    assert events["LedgerStream"]["Properties"]["Stream"] == {"Fn::GetAtt": ["LedgerTable", "StreamArn"]}
    assert events["Heartbeat"]["Properties"]["Input"] == '{"deploy_helper": "checkpoint-heartbeat"}'
    # No hand-written permission lets anyone else invoke it.
    for permission in resources_of(template, "AWS::Lambda::Permission").values():
        assert "Checkpointer" not in json.dumps(permission)
    # Its role: read the ledger and its stream, write checkpoints, its log; nothing else.
    role = resources["CheckpointerRole"]["Properties"]
    actions = {
        a
        for policy in role["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
        for a in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    }
    assert actions == {
        "dynamodb:Query",
        "dynamodb:GetItem",
        "dynamodb:DescribeStream",
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
        "dynamodb:ListStreams",
        "s3:PutObject",
        "s3:GetObject",
        "s3:ListBucket",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }
    # Only the checkpointer's role signs: the account's own statement excludes kms:Sign.
    statements = resources["CheckpointerKey"]["Properties"]["KeyPolicy"]["Statement"]
    signers = [s for s in statements if "kms:Sign" in json.dumps(s.get("Action", ""))]
    assert [s["Principal"] for s in signers] == [{"AWS": {"Fn::GetAtt": ["CheckpointerRole", "Arn"]}}]
    assert all(s.get("NotAction") == "kms:Sign" for s in statements if s not in signers)
    # The broker's old key verifies its legacy checkpoints and signs nothing more, for anyone.
    legacy = resources["CheckpointKey"]["Properties"]["KeyPolicy"]["Statement"]
    assert [s.get("NotAction") for s in legacy] == ["kms:Sign"]
    bucket_policy = resources["CheckpointBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    only = next(s for s in bucket_policy if s["Sid"] == "OnlyTheCheckpointerWrites")
    assert only["Effect"] == "Deny" and "s3:PutObject" in only["Action"] and "s3:DeleteObjectVersion" in only["Action"]
    assert only["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": ["CheckpointerRole", "Arn"]}}}


def test_the_transformed_template_admits_only_the_schedule_to_the_checkpointer(
    template: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What SAM generates from the checkpointer's events: one permission, for its own rule."""
    pytest.importorskip("samtranslator")
    import copy

    from samtranslator.translator.transform import transform

    source = copy.deepcopy(template)
    source["Transform"] = "AWS::Serverless-2016-10-31"
    source["Resources"] = {k: v for k, v in source["Resources"].items() if not k.startswith("Fn::ForEach")}
    for resource in source["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://bucket/code.zip"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    out = transform(source, {"InvokerAccountIds": "111111111111"}, NoManagedPolicies())
    permissions = [
        r["Properties"]
        for r in out["Resources"].values()
        if r["Type"] == "AWS::Lambda::Permission" and "CheckpointerFunction" in json.dumps(r["Properties"])
    ]
    assert permissions == [
        {
            "Action": "lambda:InvokeFunction",
            "FunctionName": {"Ref": "CheckpointerFunction"},
            "Principal": "events.amazonaws.com",
            "SourceArn": {"Fn::GetAtt": ["CheckpointerFunctionHeartbeat", "Arn"]},
        }
    ]
    mappings = [r["Properties"] for r in out["Resources"].values() if r["Type"] == "AWS::Lambda::EventSourceMapping"]
    assert [m["EventSourceArn"] for m in mappings] == [{"Fn::GetAtt": ["LedgerTable", "StreamArn"]}]


def _slot_value(principal: Any, accounts: list[str]) -> str:
    """What a slot's ``!Select [i, !Split [",", !Sub ["${Ids},,,…", {Ids: !Join [",", ids]}]]]`` gives."""
    index, split = principal["Fn::Select"]
    separator, sub = split["Fn::Split"]
    text, variables = sub["Fn::Sub"]
    assert variables == {"Ids": {"Fn::Join": [",", {"Ref": "InvokerAccountIds"}]}}
    return str(text.replace("${Ids}", ",".join(accounts)).split(separator)[index])


SLOTS = 16


def test_only_registered_accounts_or_the_organization_may_invoke(template: dict[str, Any]) -> None:
    permissions = resources_of(template, "AWS::Lambda::Permission")
    conditions = template["Conditions"]
    accounts = [str(111111111111 * (i % 9 + 1) + i) for i in range(SLOTS)]
    broker = {"Fn::GetAtt": ["BrokerFunction", "Arn"]}
    url_function = {"Fn::GetAtt": ["BrokerUrlFunction", "Arn"]}
    for n in range(1, SLOTS + 1):
        invoke = permissions.pop(f"InvokeFromAccount{n}")
        # The URL is the URL function's (tests/unit/test_function_url_template.py evaluates it).
        url, via_url = permissions.pop(f"UrlFromAccount{n}"), permissions.pop(f"UrlInvokeFromAccount{n}")
        assert invoke["Condition"] == f"HasInvokerAccount{n}"
        assert url["Condition"] == via_url["Condition"] == f"UrlForInvokerAccount{n}"
        assert conditions[f"UrlForInvokerAccount{n}"] == {
            "Fn::And": [{"Condition": "FunctionUrlEnabled"}, {"Condition": f"HasInvokerAccount{n}"}]
        }
        assert invoke["Properties"]["FunctionName"] == broker
        assert invoke["Properties"]["Action"] == "lambda:InvokeFunction"
        assert "InvokedViaFunctionUrl" not in invoke["Properties"]
        assert url["Properties"]["FunctionName"] == via_url["Properties"]["FunctionName"] == url_function
        assert url["Properties"]["Action"] == "lambda:InvokeFunctionUrl"
        assert url["Properties"]["FunctionUrlAuthType"] == "AWS_IAM"
        assert via_url["Properties"]["Action"] == "lambda:InvokeFunction"
        assert via_url["Properties"]["InvokedViaFunctionUrl"] is True
        for permission in (invoke, url, via_url):
            # Slot n is account n of the list, and empty (off) when the list is shorter.
            principal = permission["Properties"]["Principal"]
            assert _slot_value(principal, accounts) == accounts[n - 1]
            assert _slot_value(principal, accounts[: n - 1]) == ""
        condition = conditions[f"HasInvokerAccount{n}"]["Fn::Not"][0]["Fn::Equals"]
        assert condition[0] == invoke["Properties"]["Principal"] and condition[1] == ""
    # One account more than the slots: the deploy fails, naming the remedy.
    too_many = conditions["TooManyInvokerAccounts"]["Fn::Not"][0]["Fn::Equals"][0]
    assert _slot_value(too_many, accounts) == ""
    assert _slot_value(too_many, [*accounts, "999999999999"]) == "999999999999"
    refusal = template["Resources"]["MoreThan16InvokerAccountIdsRefused"]
    assert refusal["Condition"] == "TooManyInvokerAccounts" and refusal["Type"] == "AWS::CloudFormation::WaitCondition"
    assert sorted(permissions) == ["InvokeFromOrganization", "UrlFromOrganization", "UrlInvokeFromOrganization"]
    for permission in permissions.values():
        props = permission["Properties"]
        assert props["Principal"] == "*"
        assert props["PrincipalOrgID"] == {"Ref": "InvokerOrganizationId"}
        assert permission["Condition"] in ("HasOrganization", "FunctionUrlForOrganization")
        if props["Action"] == "lambda:InvokeFunctionUrl":
            assert props["FunctionUrlAuthType"] == "AWS_IAM"
    url = resources_of(template, "AWS::Lambda::Url")["BrokerFunctionUrl"]
    assert url["Properties"]["AuthType"] == "AWS_IAM"
    assert url["Properties"]["TargetFunctionArn"] == {"Fn::GetAtt": ["BrokerUrlFunction", "Arn"]}
    assert url["Condition"] == "FunctionUrlEnabled"


def test_alarms_watch_errors_denials_failures_and_ledger_changes(template: dict[str, Any]) -> None:
    alarms = {
        a["Properties"]["MetricName"]: a["Properties"]
        for a in resources_of(template, "AWS::CloudWatch::Alarm").values()
    }
    assert {"Errors", "Denied", "Failed", "LoggedErrors", "LedgerEntriesChanged"} <= set(alarms)
    # Denied and Failed are the function's own EMF metrics, in the namespace it is given.
    variables = template["Resources"]["BrokerFunction"]["Properties"]["Environment"]["Variables"]
    for name in ("Denied", "Failed"):
        assert alarms[name]["Namespace"] == variables["DEPLOY_HELPER_METRICS_NAMESPACE"]
        assert "Dimensions" not in alarms[name]  # the metric published without dimensions
    filters = [f["Properties"]["FilterPattern"] for f in resources_of(template, "AWS::Logs::MetricFilter").values()]
    assert '{ $.message = "ledger entry changed" }' in filters  # what deploy_helper.entry.checkpointer logs
    assert template["Outputs"]["ServiceToken"]["Value"] == {"Fn::GetAtt": ["BrokerFunction", "Arn"]}
    assert "Export" in template["Outputs"]["ServiceToken"]


def test_the_example_stack_grant_is_one_the_broker_can_confirm() -> None:
    stack = load_template(SERVICE_STACK.read_text())
    resource = stack["Resources"]["AuthorizerPermission"]
    assert resource["Type"] == custom_resource.RESOURCE_TYPE
    facts = StackFacts(
        template=stack,
        stack_id="arn:aws:cloudformation:us-east-1:333333333333:stack/service-a/"
        + "0" * 8
        + "-0000-0000-0000-"
        + "0" * 12,
        parameters={
            "DeployHelperServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:deploy-helper-prod",
            "AuthorizerFunctionArn": "arn:aws:lambda:us-east-1:222222222222:function:token-authorizer",
        },
        resources=lambda: {"Api": "a1b2c3d4e5"},
    )
    properties = resolve(resource["Properties"], facts)  # raises if the broker could not confirm it
    spec, plan = custom_resource.grant_from_properties(properties)
    assert plan is False
    assert spec.model_dump(exclude_none=True) == {
        "kind": "lambda-invoke",
        "function": "arn:aws:lambda:us-east-1:222222222222:function:token-authorizer",
        "principal": "apigateway.amazonaws.com",
        "source_arn": "arn:aws:execute-api:us-east-1:333333333333:a1b2c3d4e5/authorizers/*",
        "source_account": "333333333333",
    }
    outputs = stack["Outputs"]
    assert outputs["AuthorizerStatementId"]["Value"] == {"Fn::GetAtt": ["AuthorizerPermission", "StatementId"]}


def test_the_example_grants_are_valid_and_allowed_by_the_shipped_rules() -> None:
    outputs = {
        "artifact-store.BucketName": "tooling-artifacts-111111111111",
        "artifact-store.KeyArn": "arn:aws:kms:eu-west-1:111111111111:key/0b7b5c2e-4a1f-4c3e-9d55-2f7f0c1d9e11",
    }
    environment = {"PIPELINE_NAME": "service-a", "GIT_COMMIT": "0a1b2c3d"}
    grants_file = load_grants_file(GRANTS, {"stack": outputs.__getitem__, "env": environment.__getitem__})
    assert grants_file.caller == "ci-tooling"
    rules = RuleSet.load(ROOT / "policies" / "rules.yaml")
    adapter: TypeAdapter[Any] = TypeAdapter(AnyGrant)
    allowed = [rules.authorize(grants_file.caller, adapter.validate_python(g)).rule_id for g in grants_file.grants]
    assert allowed == ["artifact-read", "artifact-read", "artifact-decrypt", "artifact-decrypt"]


def test_every_function_ships_the_built_package_not_the_repository(template: dict[str, Any]) -> None:
    """CodeUri: . would ship tests/, bench/ and the harness, and no dependency (function/Makefile builds any)."""
    functions = resources_of(template, "AWS::Serverless::Function")
    assert functions
    for name, function in functions.items():
        assert function["Properties"]["CodeUri"] == "function/", name
        assert function.get("Metadata") == {"BuildMethod": "makefile"}, name
