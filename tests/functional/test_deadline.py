"""The broker's deadline: work not started in time is reported, and a re-send finishes it.

``remaining_ms`` stands in for the Lambda context's ``get_remaining_time_in_millis``: a
fake that reports plenty of time for its first calls and then too little (below
``DEADLINE_RESERVE_MS``), so the test needs no clock and no sleep. Accounts run one at a
time here (``max_workers=1``) so which work starts before the deadline is deterministic:
the token-service account (the authorizer) first, then the tooling account (bucket, key).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from deploy_helper.execution.broker import DEADLINE_RESERVE_MS, NOT_ATTEMPTED, Broker
from deploy_helper.grants import REGISTRY

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.local.scenario import Scenario
    from deploy_helper.models import BrokerResponse

PLENTY, LITTLE = 900_000, DEADLINE_RESERVE_MS - 1
#: Calls into target accounts: AssumeRole and every grant kind's operations (not the broker's
#: own tables and checkpoint bucket).
TARGET_CALLS = {"sts.AssumeRole"} | {p.replace(":", ".") for kind in REGISTRY.values() for p in kind.permissions}


class Countdown:
    """Reports ``PLENTY`` for the first ``calls`` questions, then ``LITTLE``."""

    def __init__(self, calls: int) -> None:
        self.left = calls
        self.asked = 0

    def __call__(self) -> int:
        self.asked += 1
        self.left -= 1
        return PLENTY if self.left >= 0 else LITTLE


@pytest.fixture
def calls(scenario: Scenario) -> list[str]:
    return []


def _broker(scenario: Scenario, calls: list[str]) -> Broker:
    session = scenario.local.base_session()

    def record(model: Any, **_: Any) -> None:
        call = f"{model.service_model.endpoint_prefix}.{model.name}"
        if call in TARGET_CALLS:
            calls.append(call)

    session.events.register("before-call", record)
    return Broker.from_config(replace(scenario.config, max_workers=1), session=session)


def _send(scenario: Scenario, broker: Broker, request_id: str, remaining: Callable[[], int]) -> BrokerResponse:
    client = scenario.client(broker)
    envelope = client.envelope(client.payload(scenario.seed_grants(), request_id=request_id))
    return broker.handle(envelope, remaining_ms=remaining)


def test_out_of_time_before_any_work_changes_nothing(scenario: Scenario, calls: list[str]) -> None:
    broker = _broker(scenario, calls)
    function_before, bucket_before = scenario.function_policy(), scenario.bucket_policy()

    response = _send(scenario, broker, "deadline-none", Countdown(0))

    assert response.ok
    assert [r.decision for r in response.results] == ["failed"] * 6
    assert {r.reason for r in response.results} == {NOT_ATTEMPTED}
    assert "re-send" in NOT_ATTEMPTED
    assert all(r.ledger_entry for r in response.results), "each unstarted grant is recorded"
    assert calls == [], "not even an AssumeRole once the deadline is near"
    assert scenario.function_policy() == function_before
    assert scenario.bucket_policy() == bucket_before
    assert scenario.key_grants() == []


def test_partial_result_then_resend_finishes_only_what_is_left(scenario: Scenario, calls: list[str]) -> None:
    broker = _broker(scenario, calls)
    authorizer = {0, 1}  # seed_grants: 2 authorizer, 2 bucket, 2 key grants
    # time for: the token-service account, its function, the tooling account; not its resources
    countdown = Countdown(3)

    first = _send(scenario, broker, "deadline-partial", countdown)

    assert first.ok
    by_index = {r.index: r for r in first.results}
    assert sorted(by_index) == list(range(6))
    for i, result in by_index.items():
        if i in authorizer:
            assert result.decision == "applied", result.reason
        else:
            assert (result.decision, result.reason) == ("failed", NOT_ATTEMPTED)
    assert countdown.asked == 5, "asked per account and per resource"
    # the tooling account was entered (AssumeRole), but neither its bucket nor its key was read
    assert calls.count("sts.AssumeRole") == 2
    # one read; the first AddPermission pinned to the revision read, the second sent under the lease
    assert [c for c in calls if not c.startswith("sts.")] == ["lambda.GetPolicy"] + ["lambda.AddPermission"] * 2
    assert len(scenario.function_policy()["Statement"]) == 3  # type: ignore[index]
    assert len(scenario.bucket_policy()["Statement"]) == 1  # type: ignore[index]  # the foreign one
    assert scenario.key_grants() == []

    # The same request again (a new envelope: new nonce, same request id), with time to spare.
    calls.clear()
    second = _send(scenario, broker, "deadline-partial", lambda: PLENTY)

    decisions = {r.index: r.decision for r in second.results}
    assert decisions == {0: "unchanged", 1: "unchanged", 2: "applied", 3: "applied", 4: "applied", 5: "applied"}
    writes = sorted(c for c in calls if c.split(".")[1].startswith(("Add", "Put", "Create", "Remove", "Delete")))
    assert writes == ["kms.CreateGrant", "kms.CreateGrant", "s3.PutBucketPolicy"], "only what was left"
    assert len(scenario.bucket_policy()["Statement"]) == 3  # type: ignore[index]
    assert len(scenario.key_grants()) == 2
