"""Owners of grants, and the custom-resource attacks they stop, through the real handler.

Stacks, events and the response bucket come from ``_cfn`` (see its docstring); pipeline
requests are signed with the scenario's keys and go through the same
``deploy_helper.handler.lambda_handler``. After every step the function policy is read
back from the local AWS, and the owners from the broker's reference table.

The world lets service-a's stacks, the tooling pipelines (``ci-tooling``, by the seed's
own rule) and service-b's pipeline (``ci-service-b``, added here) grant the same
authorizer permissions, so that one grant can have owners of every sort.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

import pytest
from _cfn import (
    SERVICE,
    SERVICE_TOKEN,
    STAGING_TOKEN,
    LambdaContext,
    ResponseBucket,
    Stack,
    World,
    answer,
    bucket,
    build_world,
    event,
    grant_id,
    world,
)
from botocore.exceptions import ClientError

from deploy_helper import handler
from deploy_helper.execution.owners import LEGACY
from deploy_helper.execution.references import DynamoReferences
from deploy_helper.local import scenario as seed

if TYPE_CHECKING:
    from deploy_helper.execution.broker import Broker
    from pipeline_hooks.client import BrokerClient

__all__ = ["bucket", "world"]  # fixtures used by the tests below

LOGICAL = "AuthorizerPermission"


@pytest.fixture(scope="module")
def world_box(local: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, World]:
    return {"world": build_world(local, tmp_path_factory.mktemp("owners-world"), shared_callers=(seed.OTHER_CALLER,))}


# -- helpers ---------------------------------------------------------------------------


def new_api(world: World) -> str:
    """A fresh API in service-a: its authorizer grant belongs to this test only."""
    return str(world.client("apigateway", SERVICE).create_rest_api(name=f"api-{secrets.token_hex(4)}")["id"])


def as_grant(properties: dict[str, Any]) -> dict[str, Any]:
    """The grant a stack's properties declare, as a pipeline writes it in a request."""
    return {
        "kind": "lambda-invoke",
        "function": properties["Function"],
        "principal": properties["Principal"],
        "source_arn": properties["SourceArn"],
        "source_account": properties["SourceAccount"],
    }


def owners(world: World, sid: str) -> list[str]:
    """The owners the broker recorded for a grant on the authorizer (read from its table)."""
    table = DynamoReferences(world.client("dynamodb"), world.scenario.config.reference_table)
    return table.read_record(world.scenario.authorizer_arn).owners.get(sid, [])


def stack_owner(stack: Stack, sid: str) -> str:
    return f"stack:{stack.stack_id}/{LOGICAL}/{sid}"


def pipeline(world: World, other: bool = False) -> BrokerClient:
    if other:
        return world.scenario.client(world.broker, caller=seed.OTHER_CALLER, signer=world.scenario.other_signer)
    return world.scenario.client(world.broker)


def send(client: BrokerClient, grant: dict[str, Any], action: str, **kwargs: Any) -> tuple[str, str]:
    """One signed request for ``grant``; its decision and request id."""
    request_id = f"req-{secrets.token_hex(6)}"
    response = client.request([grant], action=action, request_id=request_id, **kwargs)
    assert response.ok, response.error
    return response.results[0].decision, request_id


def entries(world: World, request_id: str, kind: str | None = None) -> list[dict[str, Any]]:
    found = world.ledger_entries(request_id)
    return [e for e in found if kind is None or e["type"] == kind]


def create(world: World, bucket: ResponseBucket, stack: Stack) -> dict[str, Any]:
    response = answer(world, bucket, *event("Create", stack, bucket))
    assert response["Status"] == "SUCCESS", response["Reason"]
    return response


def delete(world: World, bucket: ResponseBucket, stack: Stack, sid: str, status: str = "DELETE_IN_PROGRESS") -> Any:
    world.waiting.statuses[stack.stack_id] = status
    body, name = event("Delete", stack, bucket, physical=sid)
    response = answer(world, bucket, body, name)
    assert response["Status"] == "SUCCESS"  # a Delete never blocks the stack
    return response, name


# -- two owners, one grant -------------------------------------------------------------


@pytest.mark.parametrize("first", [0, 1])
def test_two_stacks_declaring_one_grant_keep_it_until_both_are_deleted(
    world: World, bucket: ResponseBucket, first: int
) -> None:
    api = new_api(world)  # an API moving from one stack to another: both declare its grant
    stacks = [world.deploy(api_id=api), world.deploy(api_id=api)]
    created = [create(world, bucket, s) for s in stacks]
    sid = created[0]["PhysicalResourceId"]
    assert created[1]["PhysicalResourceId"] == sid
    assert [c["Data"]["Decision"] for c in created] == ["applied", "unchanged"]
    both = sorted(stack_owner(s, sid) for s in stacks)
    assert sorted(owners(world, sid)) == both
    added = entries(world, f"cfn-{stacks[1].request_ids[0]}", "outcome")[0]
    assert added["owner"] == stack_owner(stacks[1], sid)
    assert added["owners"] == both
    assert "added" in added["reason"]

    gone, then = stacks[first], stacks[1 - first]
    kept, name = delete(world, bucket, gone, sid)
    assert kept["Data"]["Decision"] == "kept"
    assert "still owned by 1 other owner" in kept["Reason"]
    assert world.statement(sid) is not None  # read back: still in the function policy
    assert owners(world, sid) == [stack_owner(then, sid)]
    removed = entries(world, f"cfn-{name}", "outcome")[0]
    assert removed["decision"] == "kept"
    assert (removed["owner"], removed["owners"]) == (stack_owner(gone, sid), [stack_owner(then, sid)])

    revoked, name = delete(world, bucket, then, sid)
    assert revoked["Data"]["Decision"] == "revoked"
    assert world.statement(sid) is None
    assert owners(world, sid) == []
    last = entries(world, f"cfn-{name}", "outcome")[0]
    assert (last["decision"], last["owner"], last["owners"]) == ("revoked", stack_owner(then, sid), [])


@pytest.mark.parametrize("stack_first", [True, False])
def test_a_pipeline_and_a_stack_sharing_a_grant_keep_it_until_both_revoke(
    world: World, bucket: ResponseBucket, stack_first: bool
) -> None:
    stack = world.deploy(api_id=new_api(world))
    grant = as_grant(stack.properties)
    tooling = pipeline(world)
    context = {"pipeline": "service-a-deploy"}
    decision, request_id = send(tooling, grant, "apply", context=context)
    assert decision == "applied"
    sid = create(world, bucket, stack)["PhysicalResourceId"]
    pipeline_owner = "pipeline:ci-tooling/service-a-deploy"
    assert sorted(owners(world, sid)) == sorted([pipeline_owner, stack_owner(stack, sid)])
    assert entries(world, request_id, "outcome")[0]["owners"] == [pipeline_owner]
    assert send(tooling, grant, "apply", context=context)[0] == "unchanged"  # a re-run: the same owner
    assert len(owners(world, sid)) == 2

    if stack_first:
        assert delete(world, bucket, stack, sid)[0]["Data"]["Decision"] == "kept"
        assert world.statement(sid) is not None
        decision, request_id = send(tooling, grant, "revoke", context=context)
        assert decision == "revoked"
    else:
        decision, request_id = send(tooling, grant, "revoke", context=context)
        assert decision == "kept"
        assert world.statement(sid) is not None
        assert owners(world, sid) == [stack_owner(stack, sid)]
        assert entries(world, request_id, "outcome")[0]["owners"] == [stack_owner(stack, sid)]
        assert delete(world, bucket, stack, sid)[0]["Data"]["Decision"] == "revoked"
    assert world.statement(sid) is None
    assert owners(world, sid) == []


def test_a_pipeline_caller_cannot_remove_a_stacks_or_another_callers_ownership(
    world: World, bucket: ResponseBucket
) -> None:
    stack = world.deploy(api_id=new_api(world))
    sid = create(world, bucket, stack)["PhysicalResourceId"]
    service_b = pipeline(world, other=True)
    grant = as_grant(stack.properties)
    assert send(service_b, grant, "apply")[0] == "unchanged"
    recorded = sorted([stack_owner(stack, sid), "pipeline:ci-service-b/default"])
    assert sorted(owners(world, sid)) == recorded
    before = world.scenario.snapshot()

    # ci-tooling's rule allows this grant, but it owns no part of it: every name it can use is its own.
    tooling = pipeline(world)
    for kwargs in ({}, {"owner": "default"}, {"context": {"pipeline": "default"}}):
        decision, request_id = send(tooling, grant, "revoke", **kwargs)
        assert decision == "denied"
        denied = entries(world, request_id)
        assert [e["decision"] for e in denied] == ["denied"]
        assert denied[0]["reason"].startswith("not an owner: the grant is owned by ")
        assert denied[0]["owner"] == "pipeline:ci-tooling/default"
    # an owner name cannot reach into another caller's or a stack's namespace
    for forged in ("ci-service-b/default", f"../{stack.stack_id}", "stack:x"):
        response = tooling.request([grant], action="revoke", owner=forged)
        assert not response.ok and response.error is not None
        assert response.error.code == "invalid-request"
        assert "owner" in response.error.message
    assert world.scenario.snapshot() == before
    assert sorted(owners(world, sid)) == recorded

    # the owners themselves still can: the grant goes with the last
    assert send(service_b, grant, "revoke")[0] == "kept"
    assert delete(world, bucket, stack, sid)[0]["Data"]["Decision"] == "revoked"
    assert world.statement(sid) is None


def test_owners_are_written_before_an_apply_and_after_a_revoke_so_no_grant_is_left_unowned(
    world: World, bucket: ResponseBucket
) -> None:
    stack = world.deploy(api_id=new_api(world))
    grant = as_grant(stack.properties)
    sid = grant_id(world, stack.properties)
    owner = "pipeline:ci-tooling/default"

    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "ServiceException", "Message": "injected"}}, "Injected")

    # AddPermission fails after the owner was recorded: an owner without a grant ...
    failing = world.scenario.client(world.another_broker({"before-call.lambda.AddPermission": refuse}))
    decision, request_id = send(failing, grant, "apply")
    assert decision == "failed"
    assert world.statement(sid) is None
    assert owners(world, sid) == [owner]
    assert entries(world, request_id, "outcome")[0]["owners"] == [owner]  # the ledger says what was written
    # ... which re-sending the request repairs.
    assert send(pipeline(world), grant, "apply")[0] == "applied"
    assert world.statement(sid) is not None and owners(world, sid) == [owner]

    # RemovePermission fails: the owner stays recorded with its grant.
    failing = world.scenario.client(world.another_broker({"before-call.lambda.RemovePermission": refuse}))
    decision, request_id = send(failing, grant, "revoke")
    assert decision == "failed"
    assert world.statement(sid) is not None
    assert owners(world, sid) == [owner]
    assert entries(world, request_id, "outcome")[0]["owners"] == [owner]
    assert send(pipeline(world), grant, "revoke")[0] == "revoked"
    assert world.statement(sid) is None and owners(world, sid) == []


# -- clean-up Deletes ----------------------------------------------------------------


def test_a_forged_cleanup_delete_naming_a_grant_the_stack_never_owned_revokes_nothing(
    world: World, bucket: ResponseBucket
) -> None:
    victim = world.deploy()
    sid = create(world, bucket, victim)["PhysicalResourceId"]
    other = world.deploy()  # any stack of the account, while an ordinary update cleans up
    create(world, bucket, other)
    before = world.scenario.snapshot()

    # The attacker names the other stack in its clean-up phase, and the victim's grant.
    world.waiting.statuses[other.stack_id] = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"
    body, name = event("Delete", other, bucket, properties=victim.properties, physical=sid)
    response = answer(world, bucket, body, name)
    assert response["Status"] == "SUCCESS"
    assert "left in place (denied): not an owner" in response["Reason"]
    assert world.scenario.snapshot() == before
    assert world.statement(sid) is not None
    assert owners(world, sid) == [stack_owner(victim, sid)]
    denied = entries(world, f"cfn-{name}")
    assert [(e["type"], e["decision"]) for e in denied] == [("decision", "denied")]
    assert "not an owner" in denied[0]["reason"]


def test_a_cleanup_delete_of_the_resources_current_physical_id_is_refused(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy()
    sid = create(world, bucket, stack)["PhysicalResourceId"]
    before = world.scenario.snapshot()
    # Another resource of the stack was replaced; this one is current and stays.
    world.waiting.resources[(stack.stack_id, LOGICAL)] = (sid, "UPDATE_COMPLETE")
    response, name = delete(world, bucket, stack, sid, status="UPDATE_COMPLETE_CLEANUP_IN_PROGRESS")
    assert f"left in place: {sid} is still the current physical id of {LOGICAL}" in response["Reason"]
    assert world.scenario.snapshot() == before
    refusals = [e for e in entries(world, f"cfn-{name}") if e["type"] == "refusal"]
    assert len(refusals) == 1 and refusals[0]["decision"] == "denied"
    assert refusals[0]["reason"].startswith("custom-resource/cleanup-current-resource: ")


# -- grants applied before owners were kept ------------------------------------------


def legacy_broker(world: World) -> Broker:
    """The broker as it was before owners: the same tables and AWS, no reference table."""
    return world.another_broker(reference_table=None)


def test_a_grant_without_owners_is_still_revoked_and_can_gain_owners(world: World, bucket: ResponseBucket) -> None:
    stack = world.deploy(api_id=new_api(world))
    grant = as_grant(stack.properties)
    old = world.scenario.client(legacy_broker(world))
    assert send(old, grant, "apply")[0] == "applied"
    sid = grant_id(world, stack.properties)
    assert owners(world, sid) == []  # applied before owners existed

    # a revoke keeps the old behaviour (any allowed revoke removes an unowned grant) ...
    tooling = pipeline(world)
    assert send(tooling, grant, "revoke")[0] == "revoked"
    assert world.statement(sid) is None

    # ... and a new owner of an old grant shares it with the unrecorded old owner.
    assert send(old, grant, "apply")[0] == "applied"
    handler.set_broker(world.broker)
    assert create(world, bucket, stack)["Data"]["Decision"] == "unchanged"
    assert sorted(owners(world, sid)) == sorted([LEGACY, stack_owner(stack, sid)])
    decision, request_id = send(tooling, grant, "revoke")  # not an owner: takes the old owner's share
    assert decision == "kept"
    assert entries(world, request_id, "outcome")[0]["owners"] == [stack_owner(stack, sid)]
    assert world.statement(sid) is not None
    assert delete(world, bucket, stack, sid)[0]["Data"]["Decision"] == "revoked"
    assert world.statement(sid) is None


def test_a_cleanup_delete_of_a_grant_without_owners_needs_cloudformations_confirmation(
    world: World, bucket: ResponseBucket
) -> None:
    stack = world.deploy()
    handler.set_broker(legacy_broker(world))  # the stack was created before owners existed
    old_sid = create(world, bucket, stack)["PhysicalResourceId"]
    handler.set_broker(world.broker)
    assert owners(world, old_sid) == []

    new_properties = world.update(stack, "narrow")
    world.waiting.statuses[stack.stack_id] = "UPDATE_IN_PROGRESS"
    body, name = event("Update", stack, bucket, properties=new_properties, physical=old_sid, old=stack.properties)
    new_sid = answer(world, bucket, body, name)["PhysicalResourceId"]
    assert new_sid != old_sid
    before = world.scenario.snapshot()

    # CloudFormation's events do not (yet) show that the resource had the old id: left in place.
    unconfirmed, name = delete(world, bucket, stack, old_sid, status="UPDATE_COMPLETE_CLEANUP_IN_PROGRESS")
    assert "left in place (denied): no owner of this grant is recorded" in unconfirmed["Reason"]
    assert world.scenario.snapshot() == before
    denied = entries(world, f"cfn-{name}")
    assert [e["decision"] for e in denied] == ["denied"]
    assert "CloudFormation does not show" in denied[0]["reason"]

    # CloudFormation shows it: the clean-up Delete removes the old grant.
    world.waiting.had[(stack.stack_id, LOGICAL)] = [old_sid]
    confirmed, _ = delete(world, bucket, stack, old_sid, status="UPDATE_COMPLETE_CLEANUP_IN_PROGRESS")
    assert confirmed["Data"]["Decision"] == "revoked"
    assert world.statement(old_sid) is None
    assert world.statement(new_sid) is not None


# -- ServiceToken ----------------------------------------------------------------------


@pytest.mark.parametrize("request_type", ["Create", "Delete"])
def test_an_event_for_another_broker_is_refused_and_changes_nothing(
    world: World, bucket: ResponseBucket, request_type: str
) -> None:
    stack = world.deploy(service_token=STAGING_TOKEN)  # the stack is staging's
    sid = grant_id(world, stack.properties)
    if request_type == "Delete":  # the grant exists here, say from an older deployment of this broker's
        stack_ours = world.deploy(api_id=stack.api_id)
        sid = create(world, bucket, stack_ours)["PhysicalResourceId"]
        world.waiting.statuses[stack.stack_id] = "DELETE_IN_PROGRESS"
    before = world.scenario.snapshot()
    physical = sid if request_type == "Delete" else None
    body, name = event(request_type, stack, bucket, physical=physical, service_token=STAGING_TOKEN)
    response = answer(world, bucket, body, name)  # forwarded here, invoked through this broker's ARN
    assert f"ServiceToken ({STAGING_TOKEN}) is not this broker ({SERVICE_TOKEN})" in response["Reason"]
    if request_type == "Delete":
        assert response["Status"] == "SUCCESS"
        assert response["Reason"].startswith("not this broker's resource: ")
    else:
        assert response["Status"] == "FAILED"
    assert world.scenario.snapshot() == before
    refusals = [e for e in entries(world, f"cfn-{name}") if e["type"] == "refusal"]
    assert len(refusals) == 1 and refusals[0]["decision"] == "denied"
    assert refusals[0]["reason"].startswith("custom-resource/service-token: ")


def test_an_event_claiming_this_broker_for_another_brokers_resource_is_refused(
    world: World, bucket: ResponseBucket
) -> None:
    stack = world.deploy(service_token=STAGING_TOKEN)
    before = world.scenario.snapshot()
    forged = {**stack.properties, "ServiceToken": SERVICE_TOKEN}  # the event lies; the template does not
    body, name = event("Create", stack, bucket, properties=forged)
    response = answer(world, bucket, body, name)
    assert response["Status"] == "FAILED"
    assert f"the stack's template's ServiceToken ({STAGING_TOKEN}) is not this broker" in response["Reason"]
    assert world.scenario.snapshot() == before
    assert world.statement(grant_id(world, stack.properties)) is None
    refusals = [e for e in entries(world, f"cfn-{name}") if e["type"] == "refusal"]
    assert len(refusals) == 1 and refusals[0]["reason"].startswith("custom-resource/service-token: ")


@pytest.mark.parametrize("invoked", [None, SERVICE_TOKEN + ":staging"])
def test_an_event_is_refused_unless_invoked_through_its_service_token(
    world: World, bucket: ResponseBucket, invoked: str | None
) -> None:
    stack = world.deploy()
    before = world.scenario.snapshot()
    body, name = event("Create", stack, bucket)
    context = LambdaContext(invoked_function_arn=invoked)
    response = answer(world, bucket, body, name, context)
    assert response["Status"] == "FAILED"
    expected = "no Lambda context" if invoked is None else f"is not this broker ({invoked})"
    assert expected in response["Reason"]
    assert world.scenario.snapshot() == before
    assert json.dumps(entries(world, f"cfn-{name}")).count('"denied"') == 1
