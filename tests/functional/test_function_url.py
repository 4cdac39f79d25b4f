"""The broker behind a function URL with AWS_IAM auth, through the real Lambda handlers.

moto cannot call function URLs, so the events are built as Lambda builds them
(payload format 2.0, ``requestContext.authorizer.iam`` from the SigV4 check) and
given to the URL function's handler (``function_url_handler``), which only its URL
can invoke. The same event sent by plain ``Invoke`` reaches the broker function
(``lambda_handler``), where the caller identity in it is the invoker's own words:
refused there.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest

from deploy_helper import handler
from deploy_helper.local import scenario as seed
from deploy_helper.trust.signing import seal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario


def url_event(body: str, account: str | None, *, method: str = "POST", b64: bool = False) -> dict[str, Any]:
    context: dict[str, Any] = {
        "accountId": "anonymous",
        "apiId": "abcdefghijklmnop",
        "domainName": "abcdefghijklmnop.lambda-url.us-east-1.on.aws",
        "http": {"method": method, "path": "/", "protocol": "HTTP/1.1", "sourceIp": "10.0.0.1", "userAgent": "t"},
        "requestId": "c1b2",
        "routeKey": "$default",
        "stage": "$default",
        "time": "21/Nov/2026:12:00:00 +0000",
        "timeEpoch": 1795262400000,
    }
    if account is not None:
        context["authorizer"] = {
            "iam": {
                "accessKey": "ASIAEXAMPLE",
                "accountId": account,
                "callerId": "AROAEXAMPLE:pipeline",
                "cognitoIdentity": None,
                "principalOrgId": seed.ORG_ID,
                "userArn": f"arn:aws:sts::{account}:assumed-role/pipeline/run",
                "userId": "AROAEXAMPLE:pipeline",
            }
        }
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": context,
        "body": base64.b64encode(body.encode()).decode() if b64 else body,
        "isBase64Encoded": b64,
    }


@pytest.fixture
def broker(scenario: Scenario) -> Iterator[Broker]:
    built = scenario.broker()
    handler.set_broker(built)
    yield built
    handler.set_broker(None)


def call(event: Any, entry: Callable[[Any, Any], dict[str, Any]] = handler.function_url_handler) -> tuple[int, Any]:
    answer = entry(event, None)
    assert answer["headers"] == {"content-type": "application/json"}
    return int(answer["statusCode"]), dict(json.loads(answer["body"]))


def test_the_signing_key_must_belong_to_the_account_that_signed_the_http_request(
    scenario: Scenario, broker: Broker
) -> None:
    client = scenario.client()
    grant = scenario.bucket_grant("service-a")
    envelope = json.dumps(client.envelope(client.payload([grant])))
    before = scenario.snapshot()

    status, body = call(url_event(envelope, seed.ACCOUNTS["service-b"]))  # another account
    assert status == 403
    assert body["error"]["code"] == "account-mismatch"
    assert (
        "signed by account 444444444444, but key ci-tooling-local is registered to ci-tooling"
        in (body["error"]["message"])
    )
    assert scenario.snapshot() == before
    refusals = [e.entry for e in scenario.ledger().ledger.entries() if e.entry["type"] == "refusal"]
    assert refusals[-1]["reason"].startswith("function-url/account-mismatch: ")
    assert refusals[-1]["request_id"] == body["request_id"]

    # The same envelope from its own account is accepted: the refusal did not use up its nonce.
    status, body = call(url_event(envelope, seed.ACCOUNTS["tooling"], b64=True))
    assert status == 200, body
    assert [r["decision"] for r in body["results"]] == ["applied"]
    assert scenario.bucket_policy() != before["bucket_policy"]

    applied = body
    status, body = call(url_event(envelope, seed.ACCOUNTS["tooling"]))  # the same envelope again: its answer
    assert (status, body) == (200, applied)
    nonce = json.loads(json.loads(envelope)["signed"])["nonce"]
    revoke = client.payload([grant], action="revoke")
    forged_nonce = seal(scenario.signer, caller=seed.CALLER, audience=seed.AUDIENCE, payload=revoke, nonce=nonce)
    status, body = call(url_event(json.dumps(forged_nonce), seed.ACCOUNTS["tooling"]))  # a replay
    assert status == 401
    assert body["error"]["code"] == "replayed"


def test_requests_that_are_not_signed_posts_of_an_envelope_are_refused(scenario: Scenario, broker: Broker) -> None:
    client = scenario.client()
    envelope = json.dumps(client.envelope(client.payload([scenario.bucket_grant("service-a")])))
    tooling = seed.ACCOUNTS["tooling"]
    cases = [
        (url_event(envelope, None), 403, "not-signed-by-iam"),
        (url_event(envelope, tooling, method="GET"), 405, "method-not-allowed"),
        (url_event("not json", tooling), 400, "invalid-request"),
        (url_event("[" * 100 + "]" * 100, tooling), 400, "invalid-request"),
        (url_event("x" * (600 * 1024), tooling), 413, "payload-too-large"),
    ]
    before = scenario.snapshot()
    for event, status, code in cases:
        got_status, body = call(event)
        assert (got_status, body["error"]["code"]) == (status, code)
    assert scenario.snapshot() == before


def refusals(scenario: Scenario) -> list[dict[str, Any]]:
    return [e.entry for e in scenario.ledger().ledger.entries() if e.entry["type"] == "refusal"]


def test_a_hand_made_url_event_sent_by_plain_invoke_is_refused(scenario: Scenario, broker: Broker) -> None:
    """The attack: Invoke the broker function with a URL-shaped event that names the key's account.

    A registered account may Invoke the broker function, and can write any
    ``requestContext.authorizer.iam`` it likes. The envelope is valid and the claimed
    account is the key's own, so only the entry point stands between it and the grant.
    """
    client = scenario.client()
    envelope = json.dumps(client.envelope(client.payload([scenario.bucket_grant("service-a")])))
    before = scenario.snapshot()
    denied_before = len(refusals(scenario))

    for forged in (
        url_event(envelope, seed.ACCOUNTS["tooling"]),
        url_event(envelope, seed.ACCOUNTS["tooling"], b64=True),
        {**url_event(envelope, seed.ACCOUNTS["tooling"]), "requestContext": {"authorizer": {"iam": {}}}},  # no http
    ):
        status, body = call(forged, handler.lambda_handler)
        assert status == 403
        assert body["error"]["code"] == "not-the-url-function"
        assert "function-URL events are served only by the URL function" in body["error"]["message"]

    assert scenario.snapshot() == before  # function policy, bucket policy and key grants
    entries = refusals(scenario)[denied_before:]
    assert len(entries) == 3
    for entry in entries:
        assert entry["decision"] == "denied"
        assert entry["reason"].startswith(
            "function-url/not-the-url-function: function-URL events are served only by the URL function"
        )
        assert entry["authenticated"] is False
    assert entries[0]["caller"] == "ci-tooling"  # what the envelope claimed, recorded as unverified
    assert entries[0]["request_id"] == json.loads(json.loads(envelope)["signed"])["payload"]["request_id"]

    # Nothing was used up: the same envelope through the URL function is applied once.
    status, body = call(url_event(envelope, seed.ACCOUNTS["tooling"]))
    assert status == 200, body
    assert [r["decision"] for r in body["results"]] == ["applied"]


def test_the_url_function_serves_nothing_but_url_requests(scenario: Scenario, broker: Broker) -> None:
    """Envelopes, custom-resource events and heartbeats sent to the URL function are refused."""
    client = scenario.client()
    envelope = client.envelope(client.payload([scenario.bucket_grant("service-a")]))
    custom_resource = {
        "RequestType": "Create",
        "ResponseURL": "https://cloudformation-custom-resource-response-useast1.s3.amazonaws.com/x",
        "StackId": "arn:aws:cloudformation:us-east-1:333333333333:stack/s/1",
        "RequestId": "r-1",
        "LogicalResourceId": "Grant",
        "ResourceType": "Custom::DeployHelperGrant",
        "ResourceProperties": {"ServiceToken": "x", "Grant": scenario.bucket_grant("service-a")},
    }
    before = scenario.snapshot()
    denied_before = len(refusals(scenario))
    for event in (envelope, custom_resource, {"deploy_helper": "checkpoint"}, [], "text"):
        status, body = call(event)
        assert (status, body["error"]["code"]) == (403, "not-a-url-request")
        assert "the URL function serves only function-URL requests" in body["error"]["message"]
    assert scenario.snapshot() == before
    entries = refusals(scenario)[denied_before:]
    assert [e["reason"].split(":")[0] for e in entries] == ["function-url/not-a-url-request"] * 5
    assert entries[0]["caller"] == "ci-tooling"

    # The envelope refused there is still good where it belongs (its nonce was not used).
    assert handler.lambda_handler(envelope, None)["ok"] is True


def test_the_stack_makes_the_url_function_with_the_url(fresh_local: Any) -> None:
    """template.yaml created on the local AWS with EnableFunctionUrl: the URL is the URL function's."""
    from deploy_helper.local import stack as local_stack

    stack = local_stack.deploy_broker_stack(fresh_local, {**seed.broker_parameters(), "EnableFunctionUrl": "true"})
    assert stack.not_created == {}
    lam = fresh_local.client("lambda")
    handlers = {f["FunctionName"]: f["Handler"] for f in lam.list_functions()["Functions"]}
    url_functions = [name for name, h in handlers.items() if h == "deploy_helper.handler.function_url_handler"]
    assert len(url_functions) == 1
    assert lam.get_function_url_config(FunctionName=url_functions[0])["AuthType"] == "AWS_IAM"
    for name in handlers:
        if name not in url_functions:
            with pytest.raises(lam.exceptions.ResourceNotFoundException):
                lam.get_function_url_config(FunctionName=name)
