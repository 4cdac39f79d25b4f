"""A resource-policy kind as a ``Custom::DeployHelperGrant``: properties derived from the spec, nothing per kind.

The stack below lets its own SNS topic deliver to the tooling account's queue
(``sqs-send``, SNS bound to the topic's ARN). Its properties are the grant's fields in
PascalCase -- ``custom_resource`` derives them from the kind's spec -- and the event is
confirmed against the real stack exactly as for ``lambda-invoke`` (the world, the
stand-in response bucket and the helpers are ``_cfn``'s).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from _cfn import DEPLOY_ROLE, SERVICE, SERVICE_TOKEN, Stack, answer, bucket, event, world, world_box

from deploy_helper import PRODUCT_PREFIX

if TYPE_CHECKING:
    from _cfn import ResponseBucket, World

__all__ = ["bucket", "world", "world_box"]  # fixtures used by the tests below

TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  DeployHelperServiceToken: {Type: String}
  QueueArn: {Type: String}
Resources:
  Deployments:
    Type: AWS::SNS::Topic
  DeliverToToolingQueue:
    Type: Custom::DeployHelperGrant
    Properties:
      ServiceToken: !Ref DeployHelperServiceToken
      Kind: sqs-send
      Queue: !Ref QueueArn
      Principal: sns.amazonaws.com
      SourceArn: !Ref Deployments
      Access: send
"""


def deploy(world: World) -> tuple[Stack, dict[str, Any]]:
    cfn = world.client("cloudformation", SERVICE)
    queue = world.scenario.resources["sqs-send"]
    stack_id = cfn.create_stack(
        StackName=f"events-{secrets.token_hex(4)}",
        TemplateBody=TEMPLATE,
        Parameters=[
            {"ParameterKey": "DeployHelperServiceToken", "ParameterValue": SERVICE_TOKEN},
            {"ParameterKey": "QueueArn", "ParameterValue": queue},
        ],
        RoleARN=DEPLOY_ROLE,
    )["StackId"]
    resources = cfn.describe_stack_resources(StackName=stack_id)["StackResources"]
    topic = next(r["PhysicalResourceId"] for r in resources if r["LogicalResourceId"] == "Deployments")
    properties = {
        "ServiceToken": SERVICE_TOKEN,
        "Kind": "sqs-send",
        "Queue": queue,
        "Principal": "sns.amazonaws.com",
        "SourceArn": topic,
        "Access": "send",
    }
    return Stack(stack_id.split("/")[1], stack_id, "", properties), properties


def statements(world: World) -> list[dict[str, Any]]:
    return list((world.scenario.resource_policy("sqs-send") or {}).get("Statement", []))


def test_create_and_delete_of_a_queue_grant_from_a_stack(world: World, bucket: ResponseBucket) -> None:
    stack, properties = deploy(world)
    body, name = event("Create", stack, bucket, logical="DeliverToToolingQueue")
    created = answer(world, bucket, body, name)
    assert created["Status"] == "SUCCESS", created.get("Reason")
    assert created["Data"]["Decision"] == "applied"
    sid = created["PhysicalResourceId"]
    (statement,) = [s for s in statements(world) if s.get("Sid") == sid]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"] == properties["SourceArn"]

    world.waiting.statuses[stack.stack_id] = "DELETE_IN_PROGRESS"
    deleted = answer(world, bucket, *event("Delete", stack, bucket, physical=sid, logical="DeliverToToolingQueue"))
    assert deleted["Status"] == "SUCCESS", deleted.get("Reason")
    assert deleted["Data"]["Decision"] == "revoked"
    assert [s for s in statements(world) if str(s.get("Sid", "")).startswith(PRODUCT_PREFIX)] == []


def test_a_queue_grant_bound_to_another_accounts_topic_is_refused(world: World, bucket: ResponseBucket) -> None:
    """The event claims a source the stack does not declare: refused, nothing written."""
    stack, properties = deploy(world)
    forged = {**properties, "SourceArn": "arn:aws:sns:us-east-1:444444444444:deployments"}
    before = statements(world)
    body, name = event("Create", stack, bucket, properties=forged, logical="DeliverToToolingQueue")
    refused = answer(world, bucket, body, name)
    assert refused["Status"] == "FAILED"
    assert "differ from DeliverToToolingQueue in the stack's template (SourceArn)" in refused["Reason"]
    assert statements(world) == before
