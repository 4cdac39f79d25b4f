"""The broker behind a function URL with AWS_IAM auth, through the real Lambda handler.

moto cannot call function URLs, so the events are built as Lambda builds them
(payload format 2.0, ``requestContext.authorizer.iam`` from the SigV4 check).
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest

from deploy_helper import handler
from deploy_helper.local import scenario as seed
from deploy_helper.signing import seal

if TYPE_CHECKING:
    from collections.abc import Iterator

    from deploy_helper.broker import Broker
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


def call(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    answer = handler.lambda_handler(event, None)
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
