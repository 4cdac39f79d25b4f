"""A slow broker and a client that retries: the retry gets the first answer, one set of changes.

The pipeline's client invokes the broker through a real botocore Lambda client
(``pipeline_hooks.client.lambda_client``). moto cannot run the function, so a
``before-send`` hook answers each Invoke attempt by calling the real handler, as
Lambda would. The first delivery is made slow by fault injection: its
``PutBucketPolicy`` waits at a gate, and that attempt ends in botocore's
``ReadTimeoutError`` while the function goes on running — what a read timeout
shorter than the function's run time does. botocore retries the same bytes; the
broker answers "in progress"; the client asks again until the first delivery's
answer is there.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import yaml
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError

from deploy_helper import handler
from deploy_helper.local import scenario as seed
from pipeline_hooks.client import BROKER_TIMEOUT_S, INVOKE_READ_TIMEOUT_S, BrokerClient, LambdaTransport, lambda_client

if TYPE_CHECKING:
    from collections.abc import Iterator

    from deploy_helper.local.scenario import Scenario

WAIT = 30  # seconds: a bound for a test that went wrong, never reached when it works


class _Body(io.BytesIO):
    """The ``raw`` of a synthetic ``AWSResponse`` (read as a stream or whole)."""

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


class SlowFirstDelivery:
    """Lambda for the Invoke calls of one client: runs the real handler; the first run is slow."""

    def __init__(self) -> None:
        self.gate = threading.Event()  # opened to let the first delivery's write go on
        self.at_gate = threading.Event()
        self.first: dict[str, Any] = {}
        self.thread: threading.Thread | None = None
        self.attempts = 0
        self.writes = 0

    # botocore hook on the broker's session: the first PutBucketPolicy waits at the gate
    def slow_write(self, **_: Any) -> None:
        self.writes += 1
        if self.writes == 1:
            self.at_gate.set()
            assert self.gate.wait(WAIT), "the gate was never opened"

    # botocore hook on the pipeline's Lambda client
    def invoke(self, request: Any, **_: Any) -> AWSResponse:
        self.attempts += 1
        event = json.loads(request.body)
        if self.attempts == 1:
            self.thread = threading.Thread(target=lambda: self.first.update(handler.lambda_handler(event, None)))
            self.thread.start()
            assert self.at_gate.wait(WAIT)
            raise ReadTimeoutError(endpoint_url=request.url)  # the function is still running
        answer = handler.lambda_handler(event, None)
        body = json.dumps(answer).encode()
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, _Body(body))

    def finish_first(self, _seconds: float) -> None:
        """The client's pause before asking again: by then the first delivery has finished."""
        self.gate.set()
        assert self.thread is not None
        self.thread.join(WAIT)


def test_a_retry_of_a_slow_request_returns_the_first_answer_and_changes_once(scenario: Scenario) -> None:
    fake = SlowFirstDelivery()
    session = scenario.local.base_session()
    session.events.register("before-send.s3.PutBucketPolicy", fake.slow_write)
    handler.set_broker(scenario.broker(session=session))
    try:
        pipeline = scenario.local.base_session()
        lam = lambda_client(pipeline)
        lam.meta.events.register("before-send.lambda.Invoke", fake.invoke)
        pauses: list[float] = []

        def pause(seconds: float) -> None:
            pauses.append(seconds)
            fake.finish_first(seconds)

        client = BrokerClient(
            caller=seed.CALLER,
            audience=seed.AUDIENCE,
            signer=scenario.signer,
            transport=LambdaTransport("deploy-helper", lam),
            sleep=pause,
        )
        grants = [scenario.bucket_grant("service-a"), scenario.bucket_grant("service-b")]
        response = client.request(grants, context={"pipeline": "retries"})
    finally:
        handler.set_broker(None)

    # Three deliveries of one envelope: timed out, "in progress", then the first delivery's answer.
    assert fake.attempts == 3
    assert len(client.sent) == 1
    assert len(pauses) == 1
    assert [r.decision for r in response.results] == ["applied", "applied"]
    assert response.model_dump(mode="json", exclude_none=True) == fake.first
    # Exactly one set of changes: one write, one intent and one outcome per grant, no refusal.
    assert fake.writes == 1
    entries = [e.entry for e in scenario.ledger().ledger.entries()]
    mine = [e for e in entries if e.get("request_id") == response.request_id]
    assert (
        sorted((e["type"], e["decision"]) for e in mine) == [("intent", "applied")] * 2 + [("outcome", "applied")] * 2
    )
    assert not [e for e in entries if e["type"] == "refusal"]
    sids = {s["Sid"] for s in (scenario.bucket_policy() or {})["Statement"]}
    assert {r.grant_id for r in response.results} <= sids


def test_the_client_waits_longer_than_the_broker_may_run() -> None:
    """The read timeout exceeds the function's timeout in template.yaml, so a slow answer is awaited."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((Path(__file__).parents[2] / "template.yaml").read_text(), Loader=Loader)  # noqa: S506
    timeouts = {
        r["Properties"]["Timeout"]
        for r in template["Resources"].values()
        if isinstance(r, dict) and r.get("Properties", {}).get("Handler") == "deploy_helper.handler.lambda_handler"
    }
    assert timeouts == {BROKER_TIMEOUT_S}
    config = lambda_client(boto3.Session(region_name="us-east-1")).meta.config
    assert config.read_timeout == INVOKE_READ_TIMEOUT_S > BROKER_TIMEOUT_S
