"""A service stack with a ``Custom::DeployHelperGrant`` in the local AWS, and its events.

``local up`` deploys ``examples/service-stack.yaml`` in service-a (with the
``cfn-deploy`` role, registered under ``stacks:`` in the local policies, and a rule
that lets its APIs use the token authorizer) and writes the Create and Delete
events CloudFormation sends for its grant. moto cannot invoke the broker, so the
stack waits in ``CREATE_IN_PROGRESS`` — as a real stack does while its custom
resource is being answered — until an event is replayed with
``deploy-helper local invoke``.

``invoke`` runs the real handler in this process. A custom-resource event's answer
is PUT to a loopback receiver started for the call (the local AWS has no
CloudFormation response bucket), allowed through ``custom_resource.configure`` —
never through the event — and returned.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import yaml

from deploy_helper.local.server import LOCAL_REGION

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.local.scenario import Scenario

STACKS_CALLER = "stacks-service-a"
FUNCTION_NAME = "deploy-helper"
TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  DeployHelperServiceToken: {Type: String}
  AuthorizerFunctionArn: {Type: String}
Resources:
  Api:
    Type: AWS::ApiGateway::RestApi
    Properties:
      Name: !Sub ${AWS::StackName}-api
  AuthorizerPermission:
    Type: Custom::DeployHelperGrant
    Properties:
      ServiceToken: !Ref DeployHelperServiceToken
      Kind: lambda-invoke
      Function: !Ref AuthorizerFunctionArn
      Principal: apigateway.amazonaws.com
      SourceArn: !Sub arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/authorizers/*
      SourceAccount: !Ref AWS::AccountId
Outputs:
  ApiId:
    Value: !Ref Api
"""


def service_token(broker_account: str) -> str:
    return f"arn:aws:lambda:{LOCAL_REGION}:{broker_account}:function:{FUNCTION_NAME}"


def deploy_service_stack(sc: Scenario, directory: Path) -> dict[str, Any]:
    """Register service-a's stacks, deploy one with the grant, write its events; the stack's facts."""
    from deploy_helper.local.scenario import ACCOUNTS

    service = ACCOUNTS["service-a"]
    deploy_role = f"arn:aws:iam::{service}:role/cfn-deploy"
    token = service_token(ACCOUNTS["broker"])
    _register(sc.policies_dir, service, deploy_role)
    iam = sc.local.client("iam", service)
    cfn_trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "cloudformation.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    iam.create_role(RoleName="cfn-deploy", AssumeRolePolicyDocument=json.dumps(cfn_trust))
    # moto looks a ServiceToken up by function name in the stack's own account: a stand-in
    # of that name (it cannot run it without Docker, so the stack waits for an answer).
    lambda_trust = json.loads(json.dumps(cfn_trust).replace("cloudformation.amazonaws.com", "lambda.amazonaws.com"))
    role = iam.create_role(RoleName="stand-in", AssumeRolePolicyDocument=json.dumps(lambda_trust))["Role"]["Arn"]
    sc.local.client("lambda", service).create_function(
        FunctionName=FUNCTION_NAME, Runtime="python3.12", Role=role, Handler="index.handler", Code={"ZipFile": _zip()}
    )
    cfn = sc.local.client("cloudformation", service)
    parameters = [
        {"ParameterKey": "DeployHelperServiceToken", "ParameterValue": token},
        {"ParameterKey": "AuthorizerFunctionArn", "ParameterValue": sc.authorizer_arn},
    ]
    stack_id = cfn.create_stack(
        StackName="service-a-api", TemplateBody=TEMPLATE, Parameters=parameters, RoleARN=deploy_role
    )["StackId"]
    stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    api_id = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}["ApiId"]
    properties = {
        "ServiceToken": token,
        "Kind": "lambda-invoke",
        "Function": sc.authorizer_arn,
        "Principal": "apigateway.amazonaws.com",
        "SourceArn": f"arn:aws:execute-api:{LOCAL_REGION}:{service}:{api_id}/authorizers/*",
        "SourceAccount": service,
    }
    events = directory / "events"
    events.mkdir(exist_ok=True)
    base = {
        "ServiceToken": token,
        "ResponseURL": "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/replaced-locally",
        "StackId": stack_id,
        "LogicalResourceId": "AuthorizerPermission",
        "ResourceType": "Custom::DeployHelperGrant",
        "ResourceProperties": properties,
    }
    create = {"RequestType": "Create", "RequestId": str(uuid.uuid4()), **base}
    (events / "create.json").write_text(json.dumps(create, indent=2))
    return {"stack_id": stack_id, "service_token": token, "events": str(events)}


def _register(policies: Path, account: str, deploy_role: str) -> None:
    from deploy_helper.local.scenario import ACCOUNTS

    callers = yaml.safe_load((policies / "callers.yaml").read_text())
    callers["stacks"] = {
        STACKS_CALLER: {"account": account, "description": "service-a's stacks", "deploy_roles": [deploy_role]}
    }
    (policies / "callers.yaml").write_text(yaml.safe_dump(callers, sort_keys=False))
    rules = yaml.safe_load((policies / "rules.yaml").read_text())
    rules["rules"].append(
        {
            "id": "stack-authorizer-invoke",
            "description": "service-a's stacks may let their APIs use the token authorizer",
            "callers": [STACKS_CALLER],
            "kind": "lambda-invoke",
            "targets": [f"arn:aws:lambda:*:{ACCOUNTS['token-service']}:function:token-authorizer"],
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
    (policies / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("index.py", "def handler(event, context):\n    return None\n")
    return buf.getvalue()


# -- replaying an event ------------------------------------------------------------------------------


class _Context:
    """The Lambda context the handler gets: its time left and the function it runs as."""

    def __init__(self, function_arn: str | None, timeout_ms: int = 120_000) -> None:
        self.invoked_function_arn = function_arn
        self.function_name = FUNCTION_NAME
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def invoke(event: Any) -> dict[str, Any]:
    """Run the real handler on ``event`` here; for a custom-resource event, also what CloudFormation gets."""
    from deploy_helper import handler
    from deploy_helper.entry import custom_resource
    from deploy_helper.entry.cfn_response import loopback_response_url

    if not handler.is_custom_resource(event):
        return {"answer": handler.lambda_handler(event, _Context(None))}
    received: list[bytes] = []
    done = threading.Event()

    class Receiver(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            received.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            done.set()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    replayed = dict(event)
    replayed["ResponseURL"] = (
        f"http://127.0.0.1:{port}/cfn-response/{event.get('RequestId', 'event')}"
        "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=local"
    )
    custom_resource.configure(custom_resource.CustomResourceSettings(response_url_validator=loopback_response_url))
    try:
        answer = handler.lambda_handler(replayed, _Context(event.get("ServiceToken")))
        done.wait(30)
    finally:
        custom_resource.configure(None)
        server.shutdown()
        server.server_close()
    response = json.loads(received[0]) if received else None
    return {"answer": answer, "cloudformation_response": response}
