"""``Custom::DeployHelperGrant`` end to end: real handler, real stacks in moto, a stand-in S3.

The harness (stacks in moto, the stand-in response bucket, hand-built events through
``deploy_helper.handler.lambda_handler``) is ``_cfn``; its docstring says what is real
and what stands in for CloudFormation. Owners of grants shared by several stacks and
pipelines are tested in ``test_owners``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from _cfn import (
    DEPLOY_ROLE,
    OTHER_SERVICE,
    SERVICE,
    SERVICE_TOKEN,
    STACKS_CALLER,
    LambdaContext,
    ResponseBucket,
    World,
    answer,
    bucket,
    event,
    grant_id,
    world,
    world_box,
)

from deploy_helper import handler
from deploy_helper.entry import custom_resource
from deploy_helper.entry.cfn_response import (
    CustomResourceResponse,
    ResponseUrlRefused,
    cloudformation_response_url,
)
from deploy_helper.grants.lambda_invoke import LambdaInvoke
from deploy_helper.local import scenario as seed
from deploy_helper.local.server import LOCAL_REGION

__all__ = ["bucket", "world", "world_box"]  # fixtures used by the tests below


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
    # The broker tells a deleted function from one without a policy (as for a deleted bucket
    # or key): the revoke fails on the missing target, and the stack's Delete succeeds.
    assert deleted["Reason"] == "the target no longer exists; nothing to remove"
    assert deleted["Data"]["Decision"] == "failed"


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
