"""CloudFormation custom-resource scaffolding shared by functional tests.

Every event is built by hand as CloudFormation builds it (moto cannot invoke
Lambda) and goes through ``deploy_helper.handler.lambda_handler``. The stacks
exist in moto, deployed with a role, so the broker confirms each event through
the reader role exactly as in AWS; the broker runs as its execution role with
AWS's documented STS/Lambda refusals on top of moto (``strict_aws``).
Responses are PUT to a loopback HTTP server standing in for CloudFormation's
response bucket; the harness allows that host through the explicit
``custom_resource.configure`` setting, never through the event. Policies are
read back from the moto server after every step. The Lambda context names the
function the broker was invoked through (``LambdaContext.invoked_function_arn``),
as Lambda does.

Stack status: moto keeps a stack whose custom resource never answered in
``CREATE_IN_PROGRESS`` (its own invocation of the stand-in function fails without
Docker), so Create events meet a genuinely in-progress stack. moto runs updates
and deletions synchronously, so for Update and Delete the test reports the
status CloudFormation shows while it waits for the custom resource, through a
botocore ``after-call`` hook on the broker's session (``StatusWhileWaiting``).
For the same reason moto never records the physical id a custom resource
answered with: where a test needs CloudFormation's view of the resource
(its current physical id, or the events that show which physical ids it had),
it reports that view through the same hook.

The seed scenario takes seconds to build, so one is shared by a test module
(the fixtures ``world_box``, ``world`` and ``bucket``; rebuilt if another module
reset the local AWS in between); each test deploys its own stack with its own
API, hence its own grant (``World.deploy(api_id=…)`` shares one API's grant).
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
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import yaml

from deploy_helper import handler
from deploy_helper.entry import custom_resource
from deploy_helper.entry.cfn_response import ResponseSender, loopback_response_url
from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.server import LOCAL_CONFIG, LOCAL_REGION

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.server import LocalAws

SERVICE = seed.ACCOUNTS["service-a"]
OTHER_SERVICE = seed.ACCOUNTS["service-b"]
STACKS_CALLER = "stacks-service-a"
DEPLOY_ROLE = f"arn:aws:iam::{SERVICE}:role/cfn-deploy"
FUNCTION_NAME = "deploy-helper"
SERVICE_TOKEN = f"arn:aws:lambda:{LOCAL_REGION}:{seed.ACCOUNTS['broker']}:function:{FUNCTION_NAME}"
#: The broker of another environment (staging): another function of the broker's account.
STAGING_FUNCTION_NAME = "deploy-helper-staging"
STAGING_TOKEN = SERVICE_TOKEN.replace(f":function:{FUNCTION_NAME}", f":function:{STAGING_FUNCTION_NAME}")

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

#: A stack that grants for an API it does not define (an API moving between stacks).
SHARED_API_TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  DeployHelperServiceToken: {Type: String}
  AuthorizerArn: {Type: String}
  ApiId: {Type: String}
  AuthorizerScope: {Type: String, Default: "*"}
  PlanOnly: {Type: String, Default: "false", AllowedValues: ["true", "false"]}
Resources:
  AuthorizerPermission:
    Type: Custom::DeployHelperGrant
    Properties:
      ServiceToken: !Ref DeployHelperServiceToken
      Kind: lambda-invoke
      Function: !Ref AuthorizerArn
      Principal: apigateway.amazonaws.com
      SourceArn: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${ApiId}/authorizers/${AuthorizerScope}"
      SourceAccount: !Ref AWS::AccountId
      Plan: !Ref PlanOnly
Outputs:
  ApiId:
    Value: !Ref ApiId
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
    """Reports what CloudFormation shows while it waits for a custom resource.

    ``statuses``: a stack's status (DescribeStacks). ``resources``: a custom resource's
    current physical id and status, by (stack id, logical id) (DescribeStackResource).
    ``had``: physical ids a custom resource was created with, by (stack id, logical id),
    shown as ``CREATE_COMPLETE`` events (DescribeStackEvents).
    """

    def __init__(self) -> None:
        self.statuses: dict[str, str] = {}
        self.resources: dict[tuple[str, str], tuple[str, str]] = {}
        self.had: dict[tuple[str, str], list[str]] = {}

    def install(self, session: boto3.Session) -> None:
        session.events.register("after-call.cloudformation.DescribeStacks", self._report)
        session.events.register("after-call.cloudformation.DescribeStackResource", self._report_resource)
        session.events.register("after-call.cloudformation.DescribeStackEvents", self._report_events)

    def _report(self, parsed: dict[str, Any], **_: Any) -> None:
        for stack in parsed.get("Stacks") or []:
            if stack.get("StackId") in self.statuses:
                stack["StackStatus"] = self.statuses[stack["StackId"]]

    def _report_resource(self, parsed: dict[str, Any], **_: Any) -> None:
        resource = parsed.get("StackResourceDetail") or {}
        key = (resource.get("StackId"), resource.get("LogicalResourceId"))
        if key in self.resources:
            resource["PhysicalResourceId"], resource["ResourceStatus"] = self.resources[key]

    def _report_events(self, parsed: dict[str, Any], **_: Any) -> None:
        events = parsed.get("StackEvents")
        if events is None or not events:
            return
        stack_id = events[0].get("StackId")
        for (sid, logical), physicals in self.had.items():
            if sid != stack_id:
                continue
            for physical in physicals:
                events.append(
                    {
                        "StackId": sid,
                        "EventId": str(uuid.uuid4()),
                        "StackName": sid.split("/")[1],
                        "LogicalResourceId": logical,
                        "PhysicalResourceId": physical,
                        "ResourceType": "Custom::DeployHelperGrant",
                        "Timestamp": datetime.now(tz=UTC),
                        "ResourceStatus": "CREATE_COMPLETE",
                    }
                )


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
    shared_callers: tuple[str, ...] = ()
    _clients: dict[tuple[str, str], Any] = field(default_factory=dict)

    def client(self, service: str, account: str = seed.ACCOUNTS["broker"]) -> Any:
        if (service, account) not in self._clients:
            self._clients[(service, account)] = self.local.client(service, account)
        return self._clients[(service, account)]

    def another_broker(self, hooks: dict[str, Callable[..., Any]] | None = None, **changes: Any) -> Broker:
        """A broker on this world's AWS, as the world's runs, with its configuration changed
        and ``hooks`` (botocore event name → handler) installed first, for fault injection."""
        from deploy_helper.execution.broker import Broker

        session = _exec_session(self.local)
        for name, hook in (hooks or {}).items():
            session.events.register(name, hook)
        strict_aws.install(session, self.local)
        self.waiting.install(session)
        return Broker.from_config(replace(self.scenario.config, **changes), session=session)

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
        api_id: str | None = None,
        service_token: str = SERVICE_TOKEN,
    ) -> Stack:
        """A service stack with the grant, CREATE_IN_PROGRESS (the grant waits).

        The stack has its own API, or grants for ``api_id`` (an API it does not define).
        """
        name = f"svc-{secrets.token_hex(4)}"
        cfn = self.client("cloudformation", account)
        parameters = [
            {"ParameterKey": "DeployHelperServiceToken", "ParameterValue": service_token},
            {
                "ParameterKey": "AuthorizerArn",
                "ParameterValue": function or self.scenario.authorizer_arn,
            },
            {"ParameterKey": "AuthorizerScope", "ParameterValue": scope},
            {"ParameterKey": "PlanOnly", "ParameterValue": "true" if plan else "false"},
        ]
        kwargs: dict[str, Any] = {"RoleARN": role} if role else {}
        template = TEMPLATE
        if api_id is not None:
            template = SHARED_API_TEMPLATE
            parameters.append({"ParameterKey": "ApiId", "ParameterValue": api_id})
        stack_id = cfn.create_stack(StackName=name, TemplateBody=template, Parameters=parameters, **kwargs)["StackId"]
        stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
        assert stack["StackStatus"] == "CREATE_IN_PROGRESS"
        api_id = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}["ApiId"]
        properties = self.properties(account, api_id, scope, function, plan, service_token)
        return Stack(name, stack_id, api_id, properties)

    def properties(
        self,
        account: str,
        api_id: str,
        scope: str,
        function: str | None = None,
        plan: bool = False,
        service_token: str = SERVICE_TOKEN,
    ) -> dict[str, Any]:
        """The ResourceProperties CloudFormation sends for the template's grant."""
        return {
            "ServiceToken": service_token,
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


def _register_stacks(policies: Path, shared_callers: tuple[str, ...] = ()) -> None:
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
            "callers": [STACKS_CALLER, *shared_callers],
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
    rules["rules"].append(  # test_custom_resource_kinds: a resource-policy kind through the same path
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


def build_world(local: LocalAws, workdir: Path, *, shared_callers: tuple[str, ...] = ()) -> World:
    """The seed scenario with service-a's stacks registered; ``shared_callers`` (pipeline
    callers) may grant the same authorizer permissions as those stacks."""
    local.reset()
    scenario = seed.build(local, workdir)
    _register_stacks(scenario.policies_dir, shared_callers)
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
    for name in (FUNCTION_NAME, STAGING_FUNCTION_NAME):
        local.client("lambda", SERVICE).create_function(
            FunctionName=name,
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
    return World(local, scenario, broker, waiting, sentinel, shared_callers)


@pytest.fixture(scope="module")
def world_box(local: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> dict[str, World]:
    return {"world": build_world(local, tmp_path_factory.mktemp("cr-world"))}


@pytest.fixture
def world(world_box: dict[str, World], local: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not world_box["world"].alive():  # another module reset the local AWS in between
        shared = world_box["world"].shared_callers
        world_box["world"] = build_world(local, tmp_path_factory.mktemp("cr-world"), shared_callers=shared)
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
    """What Lambda passes the handler: its clock, and the ARN it was invoked through."""

    remaining_ms: int = 60_000
    started: float = field(default_factory=time.monotonic)
    invoked_function_arn: str | None = SERVICE_TOKEN

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
    service_token: str = SERVICE_TOKEN,
) -> tuple[dict[str, Any], str]:
    """A custom-resource event as CloudFormation sends it, and the name its answer is PUT under."""
    request_id = str(uuid.uuid4())
    stack.request_ids.append(request_id)
    body: dict[str, Any] = {
        "RequestType": request_type,
        "ServiceToken": service_token,
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


def answer(
    world: World, bucket: ResponseBucket, body: dict[str, Any], name: str, context: LambdaContext | None = None
) -> dict[str, Any]:
    """Send ``body`` through the real handler and return what was PUT to the response URL."""
    handler.lambda_handler(json.loads(json.dumps(body)), context or LambdaContext())
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
