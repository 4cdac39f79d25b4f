"""The function URL in ``template.yaml``, as CloudFormation would create it.

The template goes through the SAM translator library (the transform CloudFormation
runs), then every intrinsic is resolved for a set of parameters, and the functions'
resource policies are built from the ``AWS::Lambda::Permission`` resources exactly as
Lambda stores them. The project's policy evaluator then decides who may do what:
only the URL function has a URL; it may be invoked by the registered accounts through
the URL only, never by a plain Invoke; the broker function takes no URL calls.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import boto3
import pytest
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from account_bootstrap import render_resources
from account_bootstrap.evaluator import Decision, Request, evaluate
from deploy_helper import handler
from deploy_helper.local.strict_aws import lambda_statement
from deploy_helper.trust.stack_template import load_template

ROOT = Path(__file__).resolve().parents[2]
BROKER_ACCOUNT = "123456789012"
REGISTERED = ["111111111111", "333333333333"]
OUTSIDER = "999999999999"
ORG = "o-a1b2c3d4e5"
BASE = {"ExternalId": "x" * 32, "InvokerAccountIds": ",".join(REGISTERED), "TargetAccountIds": "222222222222"}


def transformed() -> dict[str, Any]:
    """template.yaml packaged and after the AWS::Serverless-2016-10-31 transform."""
    template = load_template((ROOT / "template.yaml").read_text())
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    for resource in template["Resources"].values():  # what `sam package` does: code in S3
        if resource.get("Type") == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://deployment-bucket/broker.zip"
    translator = Translator({}, Parser(), boto_session=boto3.Session(region_name="us-east-1"))
    return dict(translator.translate(copy.deepcopy(template), parameter_values={}))


@pytest.fixture(scope="module")
def sam_output() -> dict[str, Any]:
    return transformed()


def created(sam_output: dict[str, Any], **parameters: str) -> dict[str, Any]:
    return render_resources({**BASE, **parameters}, account=BROKER_ACCOUNT, template=sam_output)


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:us-east-1:{BROKER_ACCOUNT}:function:{name}"


def resource_policy(resources: dict[str, Any], function: str) -> dict[str, Any]:
    """The policy Lambda stores for ``function`` (a logical id) from the stack's permissions."""
    target = f"<{function}.Arn>"
    statements = [
        lambda_statement({"StatementId": logical, **r["Properties"]}, target)
        for logical, r in resources.items()
        if r["Type"] == "AWS::Lambda::Permission" and r["Properties"]["FunctionName"] == target
    ]
    return {"Version": "2012-10-17", "Statement": statements}


def caller(account: str) -> str:
    return f"arn:aws:sts::{account}:assumed-role/pipeline/run"


def url_call(account: str, function: str = "<BrokerUrlFunction.Arn>") -> list[Request]:
    """The two authorizations a call through a function URL with AWS_IAM auth needs."""
    return [
        Request("lambda:InvokeFunctionUrl", function, {"lambda:FunctionUrlAuthType": "AWS_IAM"}, caller(account)),
        Request("lambda:InvokeFunction", function, {"lambda:InvokedViaFunctionUrl": True}, caller(account)),
    ]


def plain_invoke(account: str, function: str) -> Request:
    return Request("lambda:InvokeFunction", function, {}, caller(account))


def test_the_url_belongs_to_the_url_function_whose_handler_serves_only_urls(sam_output: dict[str, Any]) -> None:
    resources = created(sam_output, EnableFunctionUrl="true")
    urls = {k: r for k, r in resources.items() if r["Type"] == "AWS::Lambda::Url"}
    assert [(r["Properties"]["TargetFunctionArn"], r["Properties"]["AuthType"]) for r in urls.values()] == [
        ("<BrokerUrlFunction.Arn>", "AWS_IAM")
    ]
    handlers = {k: r["Properties"]["Handler"] for k, r in resources.items() if r["Type"] == "AWS::Lambda::Function"}
    assert {k: handlers[k] for k in ("BrokerFunction", "BrokerUrlFunction")} == {
        "BrokerFunction": "deploy_helper.handler.lambda_handler",
        "BrokerUrlFunction": "deploy_helper.handler.function_url_handler",
    }
    assert list(handlers.values()).count("deploy_helper.handler.function_url_handler") == 1
    assert handler.function_url_handler is not handler.lambda_handler
    main, url = resources["BrokerFunction"]["Properties"], resources["BrokerUrlFunction"]["Properties"]
    assert url["Role"] == main["Role"]
    assert url["Environment"] == main["Environment"]  # the same broker: tables, ledger, audience
    assert url["LoggingConfig"] == main["LoggingConfig"]  # denials land in the same log and alarm
    alarmed = [
        d["Value"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"]["MetricName"] == "Errors"
        for d in r["Properties"].get("Dimensions", [])
    ]
    assert {"<BrokerFunction>", "<BrokerUrlFunction>"} <= set(alarmed)


def test_every_url_invoke_permission_is_limited_to_url_calls(sam_output: dict[str, Any]) -> None:
    resources = created(sam_output, EnableFunctionUrl="true", InvokerOrganizationId=ORG)
    on_url_function = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Permission" and r["Properties"]["FunctionName"] == "<BrokerUrlFunction.Arn>"
    ]
    assert len(on_url_function) == 2 * (len(REGISTERED) + 1)  # each account and the organization
    for props in on_url_function:
        if props["Action"] == "lambda:InvokeFunction":
            assert props["InvokedViaFunctionUrl"] is True
        else:
            assert (props["Action"], props["FunctionUrlAuthType"]) == ("lambda:InvokeFunctionUrl", "AWS_IAM")
    on_broker = [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::Lambda::Permission" and r["Properties"]["FunctionName"] != "<BrokerUrlFunction.Arn>"
    ]
    for props in on_broker:  # plain Invoke only: no URL action, no URL auth type
        assert props["Action"] == "lambda:InvokeFunction"
        assert "FunctionUrlAuthType" not in props and "InvokedViaFunctionUrl" not in props


@pytest.mark.parametrize("organization", ["", ORG])
def test_registered_accounts_reach_the_url_function_only_through_its_url(
    sam_output: dict[str, Any], organization: str
) -> None:
    resources = created(sam_output, EnableFunctionUrl="true", InvokerOrganizationId=organization)
    policy = [resource_policy(resources, "BrokerUrlFunction")]
    for account in REGISTERED:
        assert [evaluate(policy, r) for r in url_call(account)] == [Decision.ALLOW, Decision.ALLOW]
        # The attack: a plain Invoke with a hand-made URL event never reaches the URL function.
        assert evaluate(policy, plain_invoke(account, "<BrokerUrlFunction.Arn>")) is Decision.IMPLICIT_DENY
        no_url = Request("lambda:InvokeFunction", "<BrokerUrlFunction.Arn>", {"lambda:InvokedViaFunctionUrl": False})
        assert evaluate(policy, Request(no_url.action, no_url.resource, no_url.context, caller(account))) is (
            Decision.IMPLICIT_DENY
        )
        wrong_auth = Request(
            "lambda:InvokeFunctionUrl",
            "<BrokerUrlFunction.Arn>",
            {"lambda:FunctionUrlAuthType": "NONE"},
            caller(account),
        )
        assert evaluate(policy, wrong_auth) is Decision.IMPLICIT_DENY
    # An account that is neither listed nor (when one is given) in the organization: nothing.
    outsider = [evaluate(policy, r) for r in url_call(OUTSIDER)]
    assert outsider == [Decision.IMPLICIT_DENY, Decision.IMPLICIT_DENY]


def test_the_organization_reaches_the_url_only_with_its_org_id(sam_output: dict[str, Any]) -> None:
    resources = created(sam_output, EnableFunctionUrl="true", InvokerOrganizationId=ORG)
    policy = [resource_policy(resources, "BrokerUrlFunction")]
    member = [
        Request(r.action, r.resource, {**r.context, "aws:PrincipalOrgID": ORG}, r.principal) for r in url_call(OUTSIDER)
    ]
    assert [evaluate(policy, r) for r in member] == [Decision.ALLOW, Decision.ALLOW]
    plain = plain_invoke(OUTSIDER, "<BrokerUrlFunction.Arn>")
    assert evaluate(policy, Request(plain.action, plain.resource, {"aws:PrincipalOrgID": ORG}, plain.principal)) is (
        Decision.IMPLICIT_DENY
    )


def test_the_broker_function_takes_no_url_call(sam_output: dict[str, Any]) -> None:
    resources = created(sam_output, EnableFunctionUrl="true", InvokerOrganizationId=ORG)
    policy = [resource_policy(resources, "BrokerFunction")]
    member = {"aws:PrincipalOrgID": ORG}
    request = Request(
        "lambda:InvokeFunctionUrl", "<BrokerFunction.Arn>", {**member, "lambda:FunctionUrlAuthType": "AWS_IAM"}
    )
    assert evaluate(policy, Request(request.action, request.resource, request.context, caller(OUTSIDER))) is (
        Decision.IMPLICIT_DENY
    )


def test_without_the_url_there_is_no_url_function(sam_output: dict[str, Any]) -> None:
    resources = created(sam_output, EnableFunctionUrl="false", InvokerOrganizationId=ORG)
    assert "BrokerUrlFunction" not in resources
    assert not [r for r in resources.values() if r["Type"] == "AWS::Lambda::Url"]
    assert not [r for r in resources.values() if "<BrokerUrlFunction.Arn>" in str(r)]


# -- the execution role: AssumeRole in the target accounts only -----------------------------------


def assume(
    resources: dict[str, Any], account: str, org: str | None = None, role: str = "deploy-helper-broker"
) -> Decision:
    policies = [p["PolicyDocument"] for p in resources["BrokerExecutionRole"]["Properties"]["Policies"]]
    context: dict[str, Any] = {"aws:ResourceAccount": account}
    if org:
        context["aws:ResourceOrgID"] = org
    return evaluate(policies, Request("sts:AssumeRole", f"arn:aws:iam::{account}:role/{role}", context))


def test_the_execution_role_assumes_roles_in_the_listed_target_accounts_only(sam_output: dict[str, Any]) -> None:
    resources = created(sam_output, TargetAccountIds="222222222222,333333333333")
    assert assume(resources, "222222222222") is Decision.ALLOW
    assert assume(resources, "333333333333", role="deploy-helper-reader") is Decision.ALLOW
    assert assume(resources, OUTSIDER) is Decision.IMPLICIT_DENY
    assert assume(resources, OUTSIDER, org=ORG) is Decision.IMPLICIT_DENY  # the list wins over the organization
    assert assume(resources, "222222222222", role="OrganizationAccountAccessRole") is Decision.IMPLICIT_DENY


def test_without_a_list_the_execution_role_stays_in_the_organization(sam_output: dict[str, Any]) -> None:
    resources = created(sam_output, TargetAccountIds="", InvokerOrganizationId=ORG)
    assert assume(resources, OUTSIDER, org=ORG) is Decision.ALLOW
    assert assume(resources, OUTSIDER, org="o-zzzzzzzzzz") is Decision.IMPLICIT_DENY
    assert assume(resources, OUTSIDER) is Decision.IMPLICIT_DENY  # not in any organization


def test_a_stack_that_names_neither_is_refused_by_a_template_rule() -> None:
    template = load_template((ROOT / "template.yaml").read_text())
    (assertion,) = template["Rules"]["TargetAccountsAreNamed"]["Assertions"]
    checks = assertion["Assert"]["Fn::Or"]
    assert {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "TargetAccountIds"}]}, ""]}]} in checks
    assert {"Fn::Not": [{"Fn::Equals": [{"Ref": "InvokerOrganizationId"}, ""]}]} in checks
