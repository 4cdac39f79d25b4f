"""Hypothesis throws malformed envelopes and payloads at ``deploy_helper.handler.lambda_handler``.

Every event gets a structured answer — ``ok: false`` with an error code and message,
or per-grant ``denied`` — the handler never raises, every answer is recorded in the
ledger as denied, and nothing changes in any account: no call reaches a target
account, and every policy and grant reads back as before.

Each test builds the broker once (the scenario fixture is function-scoped) and checks
the snapshot after all its examples.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy_helper import handler
from deploy_helper.grants import REGISTRY
from deploy_helper.handler import is_custom_resource, is_function_url
from deploy_helper.local.scenario import AUDIENCE, CALLER, OTHER_CALLER
from deploy_helper.models import PipelineContext
from deploy_helper.request import RequestPayload
from deploy_helper.trust.signing import b64url, seal, signing_input

if TYPE_CHECKING:
    from collections.abc import Iterator

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Whole-request refusal codes the handler may answer with.
CODES = {
    "invalid-request",
    "authentication-failed",
    "bad-signature",
    "unknown-key",
    "key-of-another-caller",
    "key-not-valid",
    "wrong-audience",
    "stale",
    "replayed",
}
#: Every field name a request may carry: an added key outside these is always unknown.
KNOWN_FIELDS = (
    set(RequestPayload.model_fields)
    | set(PipelineContext.model_fields)
    | {f for kind in REGISTRY.values() for f in kind.spec.model_fields}
)
#: Characters none of the request's strict string fields accepts anywhere.
HOSTILE = [*"\"'{}[]\\\n\t <>", "\u2028", "\x00", "\u00e9"]

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)


class Fuzzer:
    """Sends events through the handler and checks every answer; checks the accounts at the end."""

    def __init__(self, scenario: Scenario, broker: Broker, calls: Any) -> None:
        self.scenario = scenario
        self.broker = broker
        self.calls = calls
        self.before = scenario.snapshot()
        self.seq = broker.ledger.head()[0]  # type: ignore[attr-defined]
        self.sent = 0
        handler.set_broker(broker)
        calls.clear()

    def send(self, event: Any) -> dict[str, Any]:
        wire = json.loads(json.dumps(event))  # what Lambda hands the function
        response = handler.lambda_handler(wire, None)  # must not raise
        json.dumps(response)
        self.sent += 1
        assert isinstance(response, dict)
        assert self.calls.in_targets() == [], "no call may reach a target account"
        return response

    def refused(self, event: Any, codes: set[str] = CODES) -> dict[str, Any]:
        response = self.send(event)
        assert response["ok"] is False, response
        assert response["error"]["code"] in codes, response["error"]
        assert response["error"]["message"].strip()
        assert not response.get("results")
        return response

    def refused_or_denied(self, event: Any) -> dict[str, Any]:
        response = self.send(event)
        if response["ok"]:
            assert response["results"], response
            for result in response["results"]:
                assert result["decision"] == "denied", result
                assert result["reason"].strip()
        else:
            assert response["error"]["code"] in CODES, response["error"]
        return response

    def check_nothing_changed(self) -> None:
        assert self.scenario.snapshot() == self.before
        entries = [e.entry for e in self.broker.ledger.entries(start=self.seq + 1)]  # type: ignore[attr-defined]
        assert entries, "every answer is recorded"
        assert {e["decision"] for e in entries} == {"denied"}
        assert len(entries) >= self.sent


@pytest.fixture(autouse=True)
def _no_broker_left_behind() -> Iterator[None]:
    yield
    handler.set_broker(None)


@pytest.fixture
def fuzz(scenario: Scenario, strict_broker: Broker, aws_calls: Any) -> Iterator[Fuzzer]:
    fuzzer = Fuzzer(scenario, strict_broker, aws_calls)
    yield fuzzer
    fuzzer.check_nothing_changed()


def base_payload(scenario: Scenario) -> dict[str, Any]:
    return {
        "request_id": f"req-{secrets.token_hex(6)}",
        "action": "apply",
        "dry_run": False,
        "context": {"pipeline": "service-a-deploy", "commit": "0a1b2c3"},
        "grants": scenario.seed_grants(),
    }


def nodes(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every (path, value) in a JSON document, the root last."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from nodes(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from nodes(item, (*path, index))
    yield path, value


def put(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    target = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return document


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


# -- envelopes ------------------------------------------------------------------------------------

envelope_keys = st.sampled_from(["signed", "signature", "Signed", "sig", "payload"]) | st.text(max_size=10)


@FUZZ
@given(event=json_value | st.dictionaries(envelope_keys, json_value, max_size=4))
def test_arbitrary_events(fuzz: Fuzzer, event: Any) -> None:
    if is_custom_resource(event) or is_function_url(event):
        return  # other entry points, fuzzed with their own shapes
    fuzz.refused(event)


@FUZZ
@given(
    text=st.text(max_size=300) | json_value.map(json.dumps) | json_value.map(lambda v: rfc8785.dumps(v).decode()),
    signature=st.from_regex(r"\A[A-Za-z0-9_-]{40,200}\Z") | st.text(max_size=50),
)
def test_arbitrary_signed_text(fuzz: Fuzzer, text: str, signature: str) -> None:
    fuzz.refused({"signed": text, "signature": signature})


@FUZZ
@given(data=st.data())
def test_genuine_text_with_a_wrong_signature(fuzz: Fuzzer, data: st.DataObject) -> None:
    scenario = fuzz.scenario
    envelope = seal(scenario.signer, caller=CALLER, audience=AUDIENCE, payload=base_payload(scenario))
    signature = data.draw(st.binary(min_size=30, max_size=140).map(b64url).filter(lambda s: 40 <= len(s) <= 200))
    fuzz.refused({**envelope, "signature": signature}, {"bad-signature"})


# -- validly signed, malformed ------------------------------------------------------------------


def _header(scenario: Scenario, payload: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "v": 1,
        "caller": CALLER,
        "key_id": scenario.signer.key_id,
        "audience": AUDIENCE,
        "issued_at": now,
        "expires_at": now + 300,
        "nonce": secrets.token_urlsafe(24),
        "payload": payload,
    }


def _sign(scenario: Scenario, body: dict[str, Any]) -> dict[str, str]:
    text = rfc8785.dumps(body)
    return {"signed": text.decode(), "signature": b64url(scenario.signer.sign(signing_input(text)))}


def _acceptable(field: str, value: Any, original: Any) -> bool:
    """Whether a replacement header value could still be a valid header (then it is skipped)."""
    if value == original and type(value) is type(original):
        return True
    now = time.time()
    if field == "nonce" and isinstance(value, str):
        return True  # any well-formed fresh nonce is fine
    if field in ("issued_at", "expires_at") and isinstance(value, int) and not isinstance(value, bool):
        return abs(value - now) < 2000
    return False


@FUZZ
@given(
    field=st.sampled_from(["v", "caller", "key_id", "audience", "issued_at", "expires_at", "nonce", "payload"]),
    value=json_value | st.integers(min_value=0, max_value=2**40),
)
def test_genuinely_signed_header_with_a_wrong_field(fuzz: Fuzzer, field: str, value: Any) -> None:
    body = _header(fuzz.scenario, base_payload(fuzz.scenario))
    if _acceptable(field, value, body[field]):
        return
    body[field] = value
    fuzz.refused(_sign(fuzz.scenario, body))


@FUZZ
@given(data=st.data())
def test_genuinely_signed_payload_made_invalid(fuzz: Fuzzer, data: st.DataObject) -> None:
    """From the caller that may make these grants: every mutation here breaks the payload.

    Hostile characters in any string, a value of another JSON type anywhere, or an
    unknown field in any object: each is refused as a whole (nothing partially applied).
    """
    payload = base_payload(fuzz.scenario)
    how = data.draw(st.sampled_from(["hostile-character", "other-type", "unknown-field"]))
    if how == "hostile-character":
        strings = [(p, v) for p, v in nodes(payload) if isinstance(v, str)]
        path, value = data.draw(st.sampled_from(strings))
        at = data.draw(st.integers(min_value=0, max_value=len(value)))
        put(payload, path, value[:at] + data.draw(st.sampled_from(HOSTILE)) + value[at:])
    elif how == "other-type":
        targets = [(p, v) for p, v in nodes(payload) if p]
        path, value = data.draw(st.sampled_from(targets))
        replacement = data.draw(json_value.filter(lambda v: v is not None and json_type(v) != json_type(value)))
        put(payload, path, replacement)
    else:
        objects = [(p, v) for p, v in nodes(payload) if isinstance(v, dict)]
        path, obj = data.draw(st.sampled_from(objects))
        key = data.draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in KNOWN_FIELDS))
        obj[key] = data.draw(json_value)
    envelope = seal(fuzz.scenario.signer, caller=CALLER, audience=AUDIENCE, payload=payload)
    fuzz.refused(envelope, {"invalid-request"})


@FUZZ
@given(data=st.data())
def test_genuinely_signed_anything_from_a_caller_without_rules(fuzz: Fuzzer, data: st.DataObject) -> None:
    """From a registered caller no rule names: whatever it sends is refused or denied."""
    payload: Any = base_payload(fuzz.scenario)
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        targets = list(nodes(payload))
        path, value = data.draw(st.sampled_from(targets))
        how = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if how == "replace" or not path:
            payload = put(payload, path, data.draw(json_value))
        elif how == "delete":
            parent = payload
            for part in path[:-1]:
                parent = parent[part]
            del parent[path[-1]]
        elif isinstance(value, dict):
            value[data.draw(st.text(max_size=12))] = data.draw(json_value)
    if not isinstance(payload, dict) and data.draw(st.booleans()):
        payload = {"request_id": "req-fuzz-0001", "action": "revoke", "grants": [payload]}
    envelope = seal(fuzz.scenario.other_signer, caller=OTHER_CALLER, audience=AUDIENCE, payload=payload)
    fuzz.refused_or_denied(envelope)
