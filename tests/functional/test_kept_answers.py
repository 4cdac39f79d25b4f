"""A request's answer is kept on its nonce by the request's last ledger write: one nonce call a request.

Through the real client and handler, acting as the broker's execution role against the
local AWS with AWS's refusals on (``strict_session``). Each test counts the calls that
touch the nonce table (alone or inside a transaction), reads the kept answer back from
the table, and sends the byte-identical envelope again: the retry gets that answer and
changes nothing anywhere (the ledger and the bucket policy are as they were).
"""

from __future__ import annotations

import json
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from deploy_helper.trust import nonces

if TYPE_CHECKING:
    import boto3

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario
    from pipeline_hooks.client import BrokerClient


class NonceCalls:
    """The DynamoDB calls a session makes that touch the nonce table, by operation."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def install(self, session: boto3.Session) -> None:
        session.events.register("before-parameter-build.dynamodb", self._seen)

    def _seen(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        tables = {params.get("TableName")}
        for item in params.get("TransactItems", []):
            tables |= {op.get("TableName") for op in item.values()}
        if self.table in tables:
            with self._lock:
                self.calls.append(model.name)


def kept(sc: Scenario, request_id: str) -> dict[str, Any]:
    items = sc.local.client("dynamodb").scan(TableName=sc.config.nonce_table, ConsistentRead=True)["Items"]
    answers = [json.loads(zlib.decompress(i["answer"]["B"])) for i in items if "answer" in i]
    (answer,) = [a for a in answers if a.get("request_id") == request_id]
    return answer


def world(sc: Scenario) -> tuple[list[Any], Any, Any]:
    """What a retry must leave as it is: the ledger's entries, the bucket policy, the key's grants."""
    return [e.entry for e in sc.ledger().ledger.entries()], sc.bucket_policy(), sc.key_grants()


def setup(sc: Scenario, session: boto3.Session) -> tuple[Broker, BrokerClient, NonceCalls]:
    calls = NonceCalls(sc.config.nonce_table)
    calls.install(session)
    broker = sc.broker(session=session)
    return broker, sc.client(broker), calls


def answer_and_retry(
    sc: Scenario, client: BrokerClient, calls: NonceCalls, payload: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Send ``payload`` once and its envelope again; the answer and the nonce calls of the first."""
    envelope = client.envelope(payload)
    first = client.send_envelope(envelope).model_dump(mode="json", exclude_none=True)
    first_calls = list(calls.calls)
    before = world(sc)
    again = client.send_envelope(envelope).model_dump(mode="json", exclude_none=True)
    assert again == first, "a retry gets the first delivery's answer"
    assert world(sc) == before, "a retry changes nothing"
    return first, first_calls


def test_several_resources_keep_their_answer_with_the_last_write(
    scenario: Scenario, strict_session: boto3.Session
) -> None:
    sc = scenario
    _, client, calls = setup(sc, strict_session)
    grants = [sc.bucket_grant("service-a"), sc.key_grant("service-a"), sc.authorizer_grant("service-a")]
    payload = client.payload(grants, action="apply", request_id="three-resources")

    answer, first_calls = answer_and_retry(sc, client, calls, payload)

    assert [r["decision"] for r in answer["results"]] == ["applied", "applied", "applied"]
    assert first_calls == ["PutItem", "TransactWriteItems"], "the claim, then the answer inside the last write"
    assert kept(sc, "three-resources") == answer


def test_a_denied_grant_and_an_applied_one(scenario: Scenario, strict_session: boto3.Session) -> None:
    sc = scenario
    _, client, calls = setup(sc, strict_session)
    grants = [sc.bucket_grant("service-a", access="write"), sc.key_grant("service-a")]
    payload = client.payload(grants, action="apply", request_id="denied-and-applied")

    answer, first_calls = answer_and_retry(sc, client, calls, payload)

    assert [r["decision"] for r in answer["results"]] == ["denied", "applied"]
    assert all(r.get("ledger_entry") for r in answer["results"]), "every result names its ledger entry"
    assert first_calls == ["PutItem", "TransactWriteItems"]
    assert kept(sc, "denied-and-applied") == answer


def test_only_denied_grants(scenario: Scenario, strict_session: boto3.Session) -> None:
    sc = scenario
    _, client, calls = setup(sc, strict_session)
    payload = client.payload([sc.bucket_grant("service-a", access="write")], action="apply", request_id="all-denied")

    answer, first_calls = answer_and_retry(sc, client, calls, payload)

    assert [r["decision"] for r in answer["results"]] == ["denied"]
    assert first_calls == ["PutItem", "TransactWriteItems"], "the denial's entry carries the answer"
    assert kept(sc, "all-denied") == answer


def test_a_dry_run(scenario: Scenario, strict_session: boto3.Session) -> None:
    sc = scenario
    _, client, calls = setup(sc, strict_session)
    grants = [sc.bucket_grant("service-a"), sc.key_grant("service-a")]
    payload = client.payload(grants, action="apply", dry_run=True, request_id="dry-run-kept")

    answer, first_calls = answer_and_retry(sc, client, calls, payload)

    assert [r["decision"] for r in answer["results"]] == ["would-apply", "would-apply"]
    assert first_calls == ["PutItem", "TransactWriteItems"]
    assert kept(sc, "dry-run-kept") == answer


def test_a_request_refused_after_its_signature_was_verified(scenario: Scenario, strict_session: boto3.Session) -> None:
    sc = scenario
    _, client, calls = setup(sc, strict_session)
    payload = client.payload([sc.bucket_grant("service-a")], action="apply", request_id="bad-payload")
    payload["grants"][0]["bucket"] = "not a bucket name"

    answer, first_calls = answer_and_retry(sc, client, calls, payload)

    assert answer["ok"] is False and answer["error"]["code"] == "invalid-request", answer
    assert first_calls == ["PutItem", "TransactWriteItems"], "the refusal's entry carries the answer"
    assert kept(sc, "bad-payload") == answer


def test_an_answer_too_large_to_ride_is_kept_with_a_write_of_its_own(
    scenario: Scenario, strict_session: boto3.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    sc = scenario
    monkeypatch.setattr(nonces, "MAX_RIDING_ANSWER", 10)
    _, client, calls = setup(sc, strict_session)
    grants = [sc.bucket_grant("service-a"), sc.key_grant("service-a")]
    payload = client.payload(grants, action="apply", request_id="too-large-to-ride")

    answer, first_calls = answer_and_retry(sc, client, calls, payload)

    assert [r["decision"] for r in answer["results"]] == ["applied", "applied"]
    assert first_calls == ["PutItem", "PutItem"], "the claim, then the answer on its own"
    assert kept(sc, "too-large-to-ride") == answer


def test_a_last_write_waits_for_an_earlier_one_still_under_way(
    scenario: Scenario, strict_session: boto3.Session
) -> None:
    """Two resources of one request finish at about the same time: the first one's write is
    held on its way to the ledger; the second, which settles the last grant, waits for it
    and then carries the answer with both results (without the wait it could not: the first
    grant's result is not known while its write is under way)."""
    from deploy_helper.execution.answers import AnswerKeeper
    from deploy_helper.local.stalls import Stalls
    from deploy_helper.models import GrantResult

    sc = scenario
    stalls = Stalls().install(strict_session)
    broker = sc.broker(session=strict_session)
    store = broker.authenticator.nonces
    key = ("ci-tooling", "race-nonce-0123456789abcdef", 2**31, "digest-of-the-envelope")
    store.claim(*key[:3], digest=key[3])
    head = {"ok": True, "request_id": "race", "caller": key[0], "action": "apply", "dry_run": False}
    keeper = AnswerKeeper(store, key, head, total=2)

    def write(index: int) -> list[GrantResult]:
        def results_of(ids: list[str]) -> list[GrantResult]:
            return [GrantResult(index=index, kind="bucket-access", decision="applied", ledger_entry=ids[0])]

        entry = {"type": "decision", "request_id": "race", "decision": "applied", "index": index}
        return keeper.append(broker._group, [entry], results_of, room=98)

    first_write = stalls.hold("dynamodb.PutItem")  # a single entry with nothing beside it: one PutItem
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(write, 0)
        assert first_write.wait_reached(), "the first write never reached the ledger"
        second = pool.submit(write, 1)
        assert keeper.waiting.wait(60), "the second write did not wait for the first"
        first_write.release()
        results = first.result(timeout=60) + second.result(timeout=60)

    assert keeper.kept is not None, "the second write carried the answer"
    assert [r["index"] for r in keeper.kept["results"]] == [0, 1]
    assert {r["ledger_entry"] for r in keeper.kept["results"]} == {r.ledger_entry for r in results}
    assert kept(sc, "race") == keeper.kept
