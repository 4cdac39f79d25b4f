"""``Custom::DeployHelperGrant`` end to end: real handler, real stacks in moto, a stand-in S3.

Every event is built by hand as CloudFormation builds it (moto cannot invoke
Lambda) and goes through ``deploy_helper.handler.lambda_handler``. The stacks
exist in moto, deployed with a role, so the broker confirms each event through
the reader role exactly as in AWS; the broker runs as its execution role with
AWS's documented STS/Lambda refusals on top of moto (``strict_aws``).
Responses are PUT to a loopback HTTP server standing in for CloudFormation's
response bucket; the harness allows that host through the explicit
``custom_resource.configure`` setting, never through the event. Policies are
read back from the moto server after every step.

Stack status: moto keeps a stack whose custom resource never answered in
``CREATE_IN_PROGRESS`` (its own invocation of the stand-in function fails without
Docker), so Create events meet a genuinely in-progress stack. moto runs updates
and deletions synchronously, so for Update and Delete the test reports the
status CloudFormation shows while it waits for the custom resource, through a
botocore ``after-call`` hook on the broker's session (``StatusWhileWaiting``).

The seed scenario takes seconds to build, so one is shared by the module (and
rebuilt if another module reset the local AWS in between); each test deploys
its own stack with its own API, hence its own grant.
"""

from __future__ import annotations

import io
import json
import secrets
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import yaml

from deploy_helper import custom_resource, handler
from deploy_helper.cfn_response import (
    CustomResourceResponse,
    ResponseSender,
    ResponseUrlRefused,
    cloudformation_response_url,
    loopback_response_url,
)
from deploy_helper.grants.lambda_invoke import LambdaInvoke
from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.server import LOCAL_CONFIG, LOCAL_REGION

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from deploy_helper.broker import Broker
    from deploy_helper.local.server import LocalAws

SERVICE = seed.ACCOUNTS["service-a"]
OTHER_SERVICE = seed.ACCOUNTS["service-b"]
STACKS_CALLER = "stacks-service-a"
DEPLOY_ROLE = f"arn:aws:iam::{SERVICE}:role/cfn-deploy"
FUNCTION_NAME = "deploy-helper"
SERVICE_TOKEN = f"arn:aws:lambda:{LOCAL_REGION}:{seed.ACCOUNTS['broker']}:function:{FUNCTION_NAME}"

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  DeployHelperServiceToken: {Type: String}
  AuthorizerArn: {Type: String}
  AuthorizerScope: {Type: String, Default: "*"}
  PlanOnly: {Type: String, Default: "false", AllowedValues: ["true", "false"]}
Resources:
  Api:
    Type: AWS::ApiGateway::RestApi
    Properties:
      Name: !Ref AWS::StackName
  AuthorizerPermission:
    Type: Custom::DeployHelperGrant
    Properties:
      ServiceToken: !Ref DeployHelperServiceToken
      Kind: lambda-invoke
      Function: !Ref AuthorizerArn
      Principal: apigateway.amazonaws.com
      SourceArn: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/authorizers/${AuthorizerScope}"
      SourceAccount: !Ref AWS::AccountId
      Plan: !Ref PlanOnly
Outputs:
  ApiId:
    Value: !Ref Api
"""  # noqa: E501 - a template line as a service team writes it


# -- the stand-in for CloudFormation's response bucket ------------------------------


@dataclass
class Received:
    method: str
    path: str
    content_type: str | None
    body: bytes
    at: float

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class ResponseBucket:
    """A loopback HTTP server recording every request it gets."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.received: list[Received] = []
        self._changed = threading.Condition()
        bucket = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with bucket._changed:
                    bucket.received.append(
                        Received(
                            self.command,
                            self.path,
                            self.headers.get("Content-Type"),
                            body,
                            time.monotonic(),
                        )
                    )
                    bucket._changed.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = do_GET = _record

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/cfn-response/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0f"

    def at(self, name: str) -> list[Received]:
        return [r for r in self.received if r.path.startswith(f"/cfn-response/{name}?")]

    def wait(self, name: str, timeout: float = 5.0) -> Received:
        with self._changed:
            self._changed.wait_for(lambda: bool(self.at(name)), timeout=timeout)
            found = self.at(name)
        assert found, f"no response was PUT for {name} within {timeout} s"
        return found[0]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the shared world ------------------------------------------------------------------


class StatusWhileWaiting:
    """Makes DescribeStacks report, per stack, the status CloudFormation shows while it waits."""

    def __init__(self) -> None:
        self.statuses: dict[str, str] = {}

    def install(self, session: boto3.Session) -> None:
        session.events.register("after-call.cloudformation.DescribeStacks", self._report)

    def _report(self, parsed: dict[str, Any], **_: Any) -> None:
        for stack in parsed.get("Stacks") or []:
            if stack.get("StackId") in self.statuses:
                stack["StackStatus"] = self.statuses[stack["StackId"]]


@dataclass
class Stack:
    name: str
    stack_id: str
    api_id: str
    properties: dict[str, Any]
    request_ids: list[str] = field(default_factory=list)


@dataclass
class World:
    local: LocalAws
    scenario: seed.Scenario
    broker: Broker
    waiting: StatusWhileWaiting
    sentinel: str
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict)

    def client(self, service: str, account: str = seed.ACCOUNTS["broker"]) -> Any:
        if (service, account) not in self._clients:
            self._clients[(service, account)] = self.local.client(service, account)
        return self._clients[(service, account)]

    def alive(self) -> bool:
        s3 = self.client("s3")
        try:
            s3.head_bucket(Bucket=self.sentinel)
        except s3.exceptions.ClientError:
            return False
        return True

    def deploy(
        self,
        *,
        scope: str = "*",
        role: str | None = DEPLOY_ROLE,
        function: str | None = None,
        plan: bool = False,
        account: str = SERVICE,
    ) -> Stack:
        """A service stack with an API and the grant, CREATE_IN_PROGRESS (the grant waits)."""
        name = f"svc-{secrets.token_hex(4)}"
        cfn = self.client("cloudformation", account)
        parameters = [
            {"ParameterKey": "DeployHelperServiceToken", "ParameterValue": SERVICE_TOKEN},
            {
                "ParameterKey": "AuthorizerArn",
                "ParameterValue": function or self.scenario.authorizer_arn,
            },
            {"ParameterKey": "AuthorizerScope", "ParameterValue": scope},
            {"ParameterKey": "PlanOnly", "ParameterValue": "true" if plan else "false"},
        ]
        kwargs: dict[str, Any] = {"RoleARN": role} if role else {}
        stack_id = cfn.create_stack(StackName=name, TemplateBody=TEMPLATE, Parameters=parameters, **kwargs)["StackId"]
        stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_IN_PROGRESS"
        api_id = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}["ApiId"]
        return Stack(name, stack_id, api_id, self.properties(account, api_id, scope, function, plan))

    def properties(
        self, account: str, api_id: str, scope: str, function: str | None = None, plan: bool = False
    ) -> dict[str, Any]:
        """The ResourceProperties CloudFormation sends for the template's grant."""
        return {
            "ServiceToken": SERVICE_TOKEN,
            "Kind": "lambda-invoke",
            "Function": function or self.scenario.authorizer_arn,
            "Principal": "apigateway.amazonaws.com",
            "SourceArn": f"arn:aws:execute-api:{LOCAL_REGION}:{account}:{api_id}/authorizers/{scope}",
            "SourceAccount": account,
            "Plan": "true" if plan else "false",
        }

    def update(self, stack: Stack, scope: str) -> dict[str, Any]:
        """Update the stack's parameters in moto; the new properties CloudFormation would send."""
        cfn = self.client("cloudformation", SERVICE)
        cfn.update_stack(
            StackName=stack.stack_id,
            UsePreviousTemplate=True,
            RoleARN=DEPLOY_ROLE,
            Parameters=[
                {"ParameterKey": "DeployHelperServiceToken", "UsePreviousValue": True},
                {"ParameterKey": "AuthorizerArn", "UsePreviousValue": True},
                {"ParameterKey": "AuthorizerScope", "ParameterValue": scope},
                {"ParameterKey": "PlanOnly", "UsePreviousValue": True},
            ],
        )
        return self.properties(SERVICE, stack.api_id, scope)

    def statement(self, sid: str) -> dict[str, Any] | None:
        lam = self.client("lambda", seed.ACCOUNTS["token-service"])
        policy = json.loads(lam.get_policy(FunctionName="token-authorizer")["Policy"])
        return next((s for s in policy["Statement"] if s.get("Sid") == sid), None)

    def short_lived_function(self) -> str:
        """Another function the stacks may grant on (``doomed-*``), for tests that delete it."""
        lam = self.client("lambda", seed.ACCOUNTS["token-service"])
        role = f"arn:aws:iam::{seed.ACCOUNTS['token-service']}:role/authorizer-exec"
        return str(
            lam.create_function(
                FunctionName=f"doomed-{secrets.token_hex(4)}",
                Runtime="python3.12",
                Role=role,
                Handler="index.handler",
                Code={"ZipFile": _function_zip()},
            )["FunctionArn"]
        )

    def ledger_entries(self, request_id: str) -> list[dict[str, Any]]:
        return [e.entry for e in self.scenario.ledger().ledger.entries() if e.entry.get("request_id") == request_id]


def _trust(principal: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": principal},
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
                "Condition": {"StringEquals": {"sts:ExternalId": seed.EXTERNAL_ID}},
            }
        ],
    }


def _register_stacks(policies: Path) -> None:
    callers = yaml.safe_load((policies / "callers.yaml").read_text())
    callers["stacks"] = {
        STACKS_CALLER: {
            "account": SERVICE,
            "description": "service-a's stacks",
            "deploy_roles": [DEPLOY_ROLE],
        }
    }
    (policies / "callers.yaml").write_text(yaml.safe_dump(callers, sort_keys=False))
    rules = yaml.safe_load((policies / "rules.yaml").read_text())
    rules["rules"].append(
        {
            "id": "stack-authorizer-invoke",
            "description": "service-a's stacks may let their APIs use the token authorizer",
            "callers": [STACKS_CALLER],
            "kind": "lambda-invoke",
            "targets": [
                f"arn:aws:lambda:*:{seed.ACCOUNTS['token-service']}:function:token-authorizer",
                f"arn:aws:lambda:*:{seed.ACCOUNTS['token-service']}:function:doomed-*",
            ],
            "principals": {
                "services": [
                    {
                        "service": "apigateway.amazonaws.com",
                        "source_accounts": ["service-a"],
                        "source_arns": ["arn:aws:execute-api:*:*:*/authorizers/*"],
                    }
                ]
            },
        }
    )
    rules["rules"].append(  # for test_custom_resource_kinds: another kind through the same path
        {
            "id": "stack-deploy-events",
            "description": "service-a's stacks may let their own topics deliver to the tooling queue",
            "callers": [STACKS_CALLER],
            "kind": "sqs-send",
            "targets": [f"arn:aws:sqs:*:{seed.ACCOUNTS['tooling']}:deploy-events"],
            "principals": {"services": [{"service": "sns.amazonaws.com", "source_accounts": ["service-a"]}]},
            "access": ["send"],
        }
    )
    (policies / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))


def _function_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", "def handler(event, context):\n    return None\n")
    return buf.getvalue()


def _exec_session(local: LocalAws) -> boto3.Session:
    """What Lambda gives the broker function: its execution role's credentials."""
    sts = local.base_session().client("sts", endpoint_url=local.endpoint, config=LOCAL_CONFIG)
    creds = sts.assume_role(RoleArn=seed.BROKER_EXEC_ROLE, RoleSessionName="deploy-helper")["Credentials"]
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=LOCAL_REGION,
    )


def build_world(local: LocalAws, workdir: Path) -> World:
    local.reset()
    scenario = seed.build(local, workdir)
    _register_stacks(scenario.policies_dir)
    # The bootstrap in service-a: the reader role (same trust as the broker role), and the
    # role that service-a's pipeline deploys its stacks with.
    iam = local.client("iam", SERVICE)
    iam.create_role(
        RoleName="deploy-helper-reader",
        AssumeRolePolicyDocument=json.dumps(_trust(seed.BROKER_EXEC_ROLE)),
    )
    iam.create_role(
        RoleName="cfn-deploy",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "cloudformation.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )
    # moto looks a ServiceToken up by function *name* in the stack's own account, so a
    # stand-in of that name lives in service-a; the token still names the broker's account.
    fn_role = iam.create_role(RoleName="stand-in", AssumeRolePolicyDocument=json.dumps(_trust("*")))["Role"]["Arn"]
    local.client("lambda", SERVICE).create_function(
        FunctionName=FUNCTION_NAME,
        Runtime="python3.12",
        Role=fn_role,
        Handler="index.handler",
        Code={"ZipFile": _function_zip()},
    )
    sentinel = f"dh-cr-world-{secrets.token_hex(6)}"
    local.client("s3").create_bucket(Bucket=sentinel)
    session = _exec_session(local)
    strict_aws.install(session, local)
    waiting = StatusWhileWaiting()
    waiting.install(session)
    broker = scenario.broker(session=session)
    return World(local, scenario, broker, waiting, sentinel)


@pytest.fixture(scope="module")
def world_box(local: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> dict[str, World]:
    return {"world": build_world(local, tmp_path_factory.mktemp("cr-world"))}


@pytest.fixture
def world(world_box: dict[str, World], local: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not world_box["world"].alive():  # another module reset the local AWS in between
        world_box["world"] = build_world(local, tmp_path_factory.mktemp("cr-world"))
    current = world_box["world"]
    handler.set_broker(current.broker)
    yield current
    handler.set_broker(None)


@pytest.fixture
def bucket() -> Iterator[ResponseBucket]:
    server = ResponseBucket()
    custom_resource.configure(
        custom_resource.CustomResourceSettings(
            response_url_validator=loopback_response_url,
            sender=ResponseSender(attempts=2, timeout=5, backoff=0.05),
        )
    )
    yield server
    custom_resource.configure(None)
    server.close()


@dataclass
class LambdaContext:
    remaining_ms: int = 60_000
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_ms - (time.monotonic() - self.started) * 1000)


def event(
    request_type: str,
    stack: Stack,
    bucket: ResponseBucket,
    *,
    properties: dict[str, Any] | None = None,
    physical: str | None = None,
    old: dict[str, Any] | None = None,
    logical: str = "AuthorizerPermission",
    url: str | None = None,
) -> tuple[dict[str, Any], str]:
    """A custom-resource event as CloudFormation sends it, and the name its answer is PUT under."""
    request_id = str(uuid.uuid4())
    stack.request_ids.append(request_id)
    body: dict[str, Any] = {
        "RequestType": request_type,
        "ServiceToken": SERVICE_TOKEN,
        "ResponseURL": url or bucket.url(request_id),
        "StackId": stack.stack_id,
        "RequestId": request_id,
        "LogicalResourceId": logical,
        "ResourceType": "Custom::DeployHelperGrant",
        "ResourceProperties": properties or stack.properties,
    }
    if physical is not None:
        body["PhysicalResourceId"] = physical
    if old is not None:
        body["OldResourceProperties"] = old
    return body, request_id


def answer(world: World, bucket: ResponseBucket, body: dict[str, Any], name: str) -> dict[str, Any]:
    """Send ``body`` through the real handler and return what was PUT to the response URL."""
    handler.lambda_handler(json.loads(json.dumps(body)), LambdaContext())
    received = bucket.wait(name)
    assert received.method == "PUT"
    assert received.content_type == ""  # CloudFormation's pre-signed URL expects no Content-Type
    assert len(received.body) <= 4096
    response = received.json()
    assert response["StackId"] == body["StackId"]
    assert response["RequestId"] == body["RequestId"]
    assert response["LogicalResourceId"] == body["LogicalResourceId"]
    return response


def grant_id(world: World, properties: dict[str, Any]) -> str:
    spec, _ = custom_resource.grant_from_properties(properties)
    return custom_resource.physical_id(spec, False)


# -- Create, Update, Delete ----------------------------------------------------------


def test_create_applies_the_grant_and_answers_with_its_id(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy()
    body, name = event("Create", stack, bucket)
    response = answer(world, bucket, body, name)

    sid = grant_id(world, stack.properties)
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["PhysicalResourceId"] == sid
    assert response["Data"]["GrantId"] == response["Data"]["StatementId"] == sid
    assert response["Data"]["Decision"] == "applied"
    statement = world.statement(sid)
    assert statement is not None
    assert statement["Principal"] == {"Service": "apigateway.amazonaws.com"}
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == stack.properties["SourceArn"]
    assert world.statement(seed.FOREIGN_SID) is not None  # the team's own statement survives
    entries = world.ledger_entries(f"cfn-{name}")
    outcome = next(e for e in entries if e["type"] == "outcome")
    assert str(outcome["seq"]) == response["Data"]["LedgerEntry"]
    assert outcome["caller"] == STACKS_CALLER
    assert outcome["authenticated"] == "stack"
    assert outcome["key_id"] == stack.stack_id
    assert outcome["context"] == {
        "stack_id": stack.stack_id,
        "logical_resource_id": "AuthorizerPermission",
    }


def test_update_that_changes_the_grant_moves_it_and_cleanup_removes_the_old(
    world: World, bucket: ResponseBucket
) -> None:
    stack = world.deploy()
    created = answer(world, bucket, *event("Create", stack, bucket))
    old_id = created["PhysicalResourceId"]

    new_properties = world.update(stack, "narrow")
    world.waiting.statuses[stack.stack_id] = "UPDATE_IN_PROGRESS"
    updated = answer(
        world,
        bucket,
        *event(
            "Update",
            stack,
            bucket,
            properties=new_properties,
            physical=old_id,
            old=stack.properties,
        ),
    )
    new_id = grant_id(world, new_properties)
    assert updated["Status"] == "SUCCESS", updated["Reason"]
    assert updated["PhysicalResourceId"] == new_id != old_id  # a new id: CloudFormation cleans up the old
    assert world.statement(new_id) is not None
    assert world.statement(old_id) is not None  # the old grant stays until the clean-up

    world.waiting.statuses[stack.stack_id] = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"
    cleaned = answer(world, bucket, *event("Delete", stack, bucket, properties=stack.properties, physical=old_id))
    assert cleaned["Status"] == "SUCCESS"
    assert cleaned["Data"]["Decision"] == "revoked"
    assert world.statement(old_id) is None
    assert world.statement(new_id) is not None


def test_a_rolled_back_update_ends_with_the_old_grant_only(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy()
    old_id = answer(world, bucket, *event("Create", stack, bucket))["PhysicalResourceId"]
    new_properties = world.update(stack, "narrow")
    world.waiting.statuses[stack.stack_id] = "UPDATE_IN_PROGRESS"
    new_id = answer(
        world, bucket, *event("Update", stack, bucket, properties=new_properties, physical=old_id, old=stack.properties)
    )["PhysicalResourceId"]

    # Another resource failed: CloudFormation puts the old properties back, then deletes the new id.
    world.waiting.statuses[stack.stack_id] = "UPDATE_ROLLBACK_IN_PROGRESS"
    rolled_back = answer(
        world, bucket, *event("Update", stack, bucket, properties=stack.properties, physical=new_id, old=new_properties)
    )
    assert rolled_back["Status"] == "SUCCESS", rolled_back["Reason"]
    assert rolled_back["PhysicalResourceId"] == old_id
    world.waiting.statuses[stack.stack_id] = "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS"
    cleaned = answer(world, bucket, *event("Delete", stack, bucket, properties=new_properties, physical=new_id))
    assert cleaned["Status"] == "SUCCESS"
    assert world.statement(old_id) is not None
    assert world.statement(new_id) is None


def test_update_without_an_effective_change_changes_nothing(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy()
    created = answer(world, bucket, *event("Create", stack, bucket))
    before = world.scenario.function_policy()

    world.waiting.statuses[stack.stack_id] = "UPDATE_IN_PROGRESS"
    updated = answer(
        world,
        bucket,
        *event("Update", stack, bucket, physical=created["PhysicalResourceId"], old=stack.properties),
    )
    assert updated["Status"] == "SUCCESS", updated["Reason"]
    assert updated["PhysicalResourceId"] == created["PhysicalResourceId"]  # no replacement, no clean-up
    assert updated["Data"]["Decision"] == "unchanged"
    assert world.scenario.function_policy() == before


def test_delete_revokes_and_a_repeated_delete_finds_it_absent(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy()
    created = answer(world, bucket, *event("Create", stack, bucket))
    sid = created["PhysicalResourceId"]
    assert world.statement(sid) is not None

    world.waiting.statuses[stack.stack_id] = "DELETE_IN_PROGRESS"
    deleted = answer(world, bucket, *event("Delete", stack, bucket, physical=sid))
    assert deleted["Status"] == "SUCCESS"
    assert deleted["Data"]["Decision"] == "revoked"
    assert world.statement(sid) is None
    assert world.statement(seed.FOREIGN_SID) is not None

    again = answer(world, bucket, *event("Delete", stack, bucket, physical=sid))  # already removed
    assert again["Status"] == "SUCCESS"
    assert again["Data"]["Decision"] == "absent"
    assert world.statement(sid) is None


def test_delete_after_a_failed_create_succeeds_and_touches_nothing(world: World, bucket: ResponseBucket) -> None:
    other_function = f"arn:aws:lambda:{LOCAL_REGION}:{seed.ACCOUNTS['token-service']}:function:billing"
    stack = world.deploy(function=other_function)  # no rule lets the stack grant on this function
    before = world.scenario.snapshot()
    failed = answer(world, bucket, *event("Create", stack, bucket))
    assert failed["Status"] == "FAILED"
    assert failed["Reason"].startswith("denied (rule stack-authorizer-invoke): ")
    assert "target" in failed["Reason"]
    assert failed["PhysicalResourceId"] != grant_id(world, stack.properties)

    world.waiting.statuses[stack.stack_id] = "ROLLBACK_IN_PROGRESS"
    rolled_back = answer(world, bucket, *event("Delete", stack, bucket, physical=failed["PhysicalResourceId"]))
    assert rolled_back["Status"] == "SUCCESS"
    assert "nothing to remove" in rolled_back["Reason"]
    assert world.scenario.snapshot() == before


def test_delete_when_the_target_function_is_gone_succeeds(world: World, bucket: ResponseBucket) -> None:
    function = world.short_lived_function()
    stack = world.deploy(function=function)
    created = answer(world, bucket, *event("Create", stack, bucket))
    assert created["Status"] == "SUCCESS", created["Reason"]
    lam = world.local.client("lambda", seed.ACCOUNTS["token-service"])
    assert created["PhysicalResourceId"] in lam.get_policy(FunctionName=function)["Policy"]
    lam.delete_function(FunctionName=function)

    world.waiting.statuses[stack.stack_id] = "DELETE_IN_PROGRESS"
    deleted = answer(world, bucket, *event("Delete", stack, bucket, physical=created["PhysicalResourceId"]))
    assert deleted["Status"] == "SUCCESS"
    # Lambda answers GetPolicy for a deleted function as for one without a policy.
    assert deleted["Data"]["Decision"] == "absent"


def test_a_plan_only_resource_shows_the_change_and_makes_none(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy(plan=True)
    before = world.scenario.snapshot()
    response = answer(world, bucket, *event("Create", stack, bucket))
    assert response["Status"] == "SUCCESS", response["Reason"]
    assert response["Data"]["Decision"] == "would-apply"
    assert response["PhysicalResourceId"] == grant_id(world, stack.properties) + "-plan"
    assert world.scenario.snapshot() == before

    world.waiting.statuses[stack.stack_id] = "DELETE_IN_PROGRESS"
    deleted = answer(world, bucket, *event("Delete", stack, bucket, physical=response["PhysicalResourceId"]))
    assert deleted["Status"] == "SUCCESS"
    assert deleted["Reason"] == "plan only; nothing to remove"


# -- forged and malformed events ----------------------------------------------------


def _refusals(world: World, name: str) -> list[dict[str, Any]]:
    return [e for e in world.ledger_entries(f"cfn-{name}") if e["type"] == "refusal"]


@pytest.mark.parametrize(
    ("forgery", "expected"),
    [
        ("unknown-stack", "does not exist"),
        ("resource-not-in-template", "has no resource Forged in its template"),
        (
            "other-properties",
            "differ from AuthorizerPermission in the stack's template (SourceArn)",
        ),
        ("unregistered-account", f"account {OTHER_SERVICE} is not registered for stacks"),
        ("unregistered-deploy-role", "was deployed with no service role"),
        ("stack-not-in-progress", "is CREATE_COMPLETE, and CloudFormation sends Create only while"),
    ],
)
def test_forged_events_are_refused_and_change_nothing(
    world: World, bucket: ResponseBucket, forgery: str, expected: str
) -> None:
    stack = world.deploy(role=None if forgery == "unregistered-deploy-role" else DEPLOY_ROLE)
    kwargs: dict[str, Any] = {}
    if forgery == "unknown-stack":
        stack.stack_id = stack.stack_id.rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
    elif forgery == "resource-not-in-template":
        kwargs["logical"] = "Forged"
    elif forgery == "other-properties":
        kwargs["properties"] = world.properties(SERVICE, "a1b2c3d4e5", "*")  # another API's id
    elif forgery == "unregistered-account":
        stack.stack_id = stack.stack_id.replace(f":{SERVICE}:", f":{OTHER_SERVICE}:")
    elif forgery == "stack-not-in-progress":
        world.waiting.statuses[stack.stack_id] = "CREATE_COMPLETE"  # a replay after the stack finished
    before = world.scenario.snapshot()
    body, name = event("Create", stack, bucket, **kwargs)
    response = answer(world, bucket, body, name)
    assert response["Status"] == "FAILED"
    assert expected in response["Reason"]
    assert response["PhysicalResourceId"].startswith("DeployHelperNotCreated-")
    assert world.scenario.snapshot() == before
    refusals = _refusals(world, name)
    assert len(refusals) == 1
    assert refusals[0]["decision"] == "denied"
    assert expected in refusals[0]["reason"]


def test_a_foreign_response_url_gets_nothing_and_the_event_is_refused(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy()
    foreign = ResponseBucket()  # reachable, but not where this harness may answer
    try:
        before = world.scenario.snapshot()
        request_id = str(uuid.uuid4())
        body, _ = event("Create", stack, bucket, url=foreign.url(request_id, host="localhost"))
        body["RequestId"] = request_id
        summary = handler.lambda_handler(body, LambdaContext())
        assert summary["ok"] is False and summary["sent"] is False
        assert summary["error"]["code"] == "response-url-refused"
        assert foreign.received == [] and bucket.received == []
        assert world.scenario.snapshot() == before
        assert _refusals(world, request_id)[0]["reason"].startswith("custom-resource/response-url-refused")
    finally:
        foreign.close()


def test_the_production_check_refuses_the_loopback_stand_in(world: World, bucket: ResponseBucket) -> None:
    custom_resource.configure(None)  # the production settings: only CloudFormation's bucket
    stack = world.deploy()
    body, _ = event("Create", stack, bucket)
    summary = handler.lambda_handler(body, LambdaContext())
    assert summary["sent"] is False
    assert summary["error"]["message"] == "the ResponseURL must use https; nothing was sent"
    body, _ = event("Create", stack, bucket, url=bucket.url("x").replace("http://", "https://"))
    summary = handler.lambda_handler(body, LambdaContext())
    assert summary["sent"] is False
    assert "is not CloudFormation's response bucket for us-east-1" in summary["error"]["message"]
    assert bucket.received == []
    assert world.statement(grant_id(world, stack.properties)) is None


def test_a_malformed_event_with_a_good_url_gets_a_failed_answer(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy()
    body, name = event("Create", stack, bucket)
    body["Injected"] = "value"
    response = answer(world, bucket, body, name)
    assert response["Status"] == "FAILED"
    assert "Injected: Extra inputs are not permitted" in response["Reason"]
    body, name = event("Create", stack, bucket, properties={**stack.properties, "Actions": "lambda:*"})
    response = answer(world, bucket, body, name)
    assert response["Status"] == "FAILED"
    assert "unknown property 'Actions' for a lambda-invoke grant" in response["Reason"]


# -- always an answer ------------------------------------------------------------------


def test_a_bug_in_a_grant_kind_still_answers_failed_within_seconds(
    world: World, bucket: ResponseBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: LambdaInvoke, client: Any, resource: str) -> Any:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(LambdaInvoke, "read", broken)
    stack = world.deploy()
    body, name = event("Create", stack, bucket)
    started = time.monotonic()
    handler.lambda_handler(body, LambdaContext())
    received = bucket.wait(name)
    assert received.at - started < 5
    response = received.json()
    assert response["Status"] == "FAILED"
    assert "internal error (RuntimeError)" in response["Reason"]
    assert world.statement(grant_id(world, stack.properties)) is None


def test_the_watchdog_answers_before_lambda_times_out(
    world: World, bucket: ResponseBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def stuck(self: LambdaInvoke, client: Any, resource: str) -> Any:
        release.wait(20)
        raise RuntimeError("released")

    monkeypatch.setattr(LambdaInvoke, "read", stuck)
    custom_resource.configure(replace(custom_resource.current_settings(), timeout_margin=11.0))
    stack = world.deploy()
    body, name = event("Create", stack, bucket)
    # 12 s left: enough for the broker to start (it keeps 10 s back); the watchdog, set to
    # answer 11 s before the end, fires after about 1 s while the grant kind is stuck.
    context = LambdaContext(remaining_ms=12_000)
    worker = threading.Thread(target=handler.lambda_handler, args=(body, context))
    worker.start()
    try:
        received = bucket.wait(name, timeout=10)
        response = received.json()
        assert response["Status"] == "FAILED"
        assert "ran out of time" in response["Reason"]
        # It names the grant: if the change landed after all, the rollback's Delete removes it.
        assert response["PhysicalResourceId"] == grant_id(world, stack.properties)
    finally:
        release.set()
        worker.join(20)
    assert not worker.is_alive()
    assert len(bucket.at(name)) == 1  # the handler's own late answer was not sent


def test_no_change_is_started_too_close_to_the_deadline(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy()
    body, name = event("Create", stack, bucket)
    handler.lambda_handler(body, LambdaContext(remaining_ms=8_000))  # less than the broker keeps back
    response = bucket.wait(name).json()
    assert response["Status"] == "FAILED"
    assert "not attempted before the deadline" in response["Reason"]
    assert world.statement(grant_id(world, stack.properties)) is None


def test_a_broker_that_cannot_start_still_answers(
    world: World, bucket: ResponseBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = world.deploy()
    handler.set_broker(None)
    monkeypatch.delenv("DEPLOY_HELPER_AUDIENCE", raising=False)
    body, name = event("Create", stack, bucket)
    response = answer(world, bucket, body, name)
    assert response["Status"] == "FAILED"
    assert "broker misconfigured: set DEPLOY_HELPER_AUDIENCE" in response["Reason"]


# -- pure parts ------------------------------------------------------------------------

GOOD_URL = (
    "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/"
    "arn%3Aaws%3Acloudformation%3Aus-east-1%3A333333333333%3Astack/svc/abc%7CRes%7Cid"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261121T000000Z&X-Amz-Signature=abc123"
)


@pytest.mark.parametrize(
    "url",
    [
        GOOD_URL,
        GOOD_URL.replace(".s3.amazonaws.com", ".s3.us-east-1.amazonaws.com"),
        GOOD_URL.replace(
            "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261121T000000Z&X-Amz-Signature=abc123",
            "?AWSAccessKeyId=AKIA&Expires=1&Signature=abc",
        ),
    ],
)
def test_the_production_check_accepts_cloudformation_response_urls(url: str) -> None:
    target = cloudformation_response_url(url, "us-east-1")
    assert target.scheme == "https"
    assert target.host.startswith("cloudformation-custom-resource-response-useast1.s3.")


@pytest.mark.parametrize(
    "url",
    [
        GOOD_URL.replace("https://", "http://"),
        GOOD_URL.replace("useast1", "euwest1"),  # another region's bucket
        GOOD_URL.replace("cloudformation-custom-resource-response-useast1", "attacker-bucket"),
        GOOD_URL.replace(".s3.amazonaws.com", ".s3.amazonaws.com.evil.example"),
        GOOD_URL.replace("https://", "https://user:pw@"),
        GOOD_URL.replace(".s3.amazonaws.com/", ".s3.amazonaws.com:8443/"),
        GOOD_URL.split("?")[0],  # not pre-signed
        GOOD_URL + "#fragment",
        GOOD_URL.replace("/arn", "/ arn"),
        "http://127.0.0.1:8080/cfn-response/x?X-Amz-Signature=0f",
        "https://127.0.0.1/cfn-response/x?X-Amz-Signature=0f",
        "https://localhost/x?X-Amz-Signature=0f",
        "",
    ],
)
def test_the_production_check_refuses_everything_else(url: str) -> None:
    with pytest.raises(ResponseUrlRefused, match="nothing was sent"):
        cloudformation_response_url(url, "us-east-1")


def test_a_long_reason_is_trimmed_to_fit_keeping_its_end() -> None:
    response = CustomResourceResponse(
        status="FAILED",
        reason="x" * 10_000 + " -- fix: register the account",
        physical_resource_id="p" * 1024,
        stack_id="arn:aws:cloudformation:us-east-1:333333333333:stack/s/" + "0" * 36,
        request_id="r",
        logical_resource_id="L" * 255,
        data={"k": "v" * 2500},
    )
    body = response.body()
    assert len(body) <= 4096
    decoded = json.loads(body)
    assert decoded["Reason"].endswith("-- fix: register the account")
    assert decoded["PhysicalResourceId"] == "p" * 1024


def test_properties_map_to_the_request_schema() -> None:
    spec, plan = custom_resource.grant_from_properties(
        {
            "ServiceToken": SERVICE_TOKEN,
            "Kind": "kms-grant",
            "Key": "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "Grantee": "arn:aws:iam::333333333333:role/deploy",
            "Operations": ["Decrypt", "DescribeKey"],
            "Plan": "true",
        }
    )
    assert spec.kind == "kms-grant"
    assert plan is True
    assert custom_resource.physical_id(spec, plan).endswith("-plan")
    with pytest.raises(Exception, match="Grantee"):
        custom_resource.grant_from_properties({"Kind": "kms-grant", "Key": "x", "Operations": ["Decrypt"]})
