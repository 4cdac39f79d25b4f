"""The function's logs and metrics: ids on every line, EMF counts per caller and kind, the alarms' metrics."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from deploy_helper import handler

if TYPE_CHECKING:
    from collections.abc import Iterator

    from deploy_helper.local.scenario import Scenario

NAMESPACE = "DeployHelper/local"


@dataclass
class Context:
    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


@pytest.fixture
def invoke(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: Any
) -> Iterator[Any]:
    monkeypatch.setenv("DEPLOY_HELPER_METRICS_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "deploy-helper-local")
    handler.set_broker(scenario.broker())
    caplog.set_level(logging.INFO, logger="deploy_helper")
    caplog.set_level(logging.DEBUG, logger="botocore.endpoint")

    def run(event: dict[str, Any], aws_request_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[Any]]:
        capsys.readouterr()
        caplog.clear()
        answer = handler.lambda_handler(event, Context(aws_request_id))
        emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
        return answer, emf, list(caplog.records)

    yield run
    handler.set_broker(None)


def test_grant_outcomes_are_logged_with_their_ids_and_counted_per_caller_and_kind(
    scenario: Scenario, invoke: Any
) -> None:
    client = scenario.client()
    foreign = {**scenario.bucket_grant("service-b"), "principal": "arn:aws:iam::999999999999:role/deploy"}
    grants = [scenario.bucket_grant("service-a"), foreign, scenario.authorizer_grant("service-a")]
    event = client.envelope(client.payload(grants, request_id="req-telemetry-1"))
    answer, emf, records = invoke(event, "aws-req-1")
    assert [r["decision"] for r in answer["results"]] == ["applied", "denied", "applied"]
    # One log line per grant, with what an operator searches by.
    per_grant = [r for r in records if r.getMessage().startswith("grant ")]
    assert [(r.decision, r.kind) for r in per_grant] == [
        ("applied", "bucket-access"),
        ("denied", "bucket-access"),
        ("applied", "lambda-invoke"),
    ]
    for record, result in zip(per_grant, answer["results"], strict=True):
        assert (record.account, record.grant_id) == (result["account"], result["grant_id"])
    # Every line of the invocation carries its ids and the authenticated caller; lines written
    # while working on a target account (here botocore's, in the broker's account threads)
    # also carry that account.
    assert records and all(r.aws_request_id == "aws-req-1" for r in records)
    assert all((r.request_id, r.caller) == ("req-telemetry-1", "ci-tooling") for r in per_grant)
    in_accounts = [r for r in records if r.threadName.startswith("account")]
    assert in_accounts
    assert {r.account for r in in_accounts} == {scenario.accounts["tooling"], scenario.accounts["token-service"]}
    # EMF: counts per (caller, kind), published with and without dimensions.
    by_kind = {line["Kind"]: line for line in emf}
    assert set(by_kind) == {"bucket-access", "lambda-invoke"}
    assert (by_kind["bucket-access"]["Applied"], by_kind["bucket-access"]["Denied"]) == (1, 1)
    assert (by_kind["lambda-invoke"]["Applied"], by_kind["lambda-invoke"]["Failed"]) == (1, 0)
    for line in emf:
        assert line["Caller"] == "ci-tooling"
        (directive,) = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == NAMESPACE
        assert directive["Dimensions"] == [["Caller", "Kind"], []]
        assert {m["Name"] for m in directive["Metrics"]} == {"Applied", "Denied", "Failed"}


def test_a_refused_request_counts_as_denied_without_trusting_what_it_claims(scenario: Scenario, invoke: Any) -> None:
    client = scenario.client()
    event = client.envelope(client.payload([scenario.bucket_grant("service-a")], request_id="req-telemetry-2"))
    invoke(event, "aws-req-2")
    # Claims to be ci-tooling, but the signature is not ci-tooling's (another caller's key).
    impostor = scenario.client(signer=scenario.other_signer)
    forged = impostor.envelope(impostor.payload([scenario.bucket_grant("service-a")], request_id="req-telemetry-3"))
    answer, emf, records = invoke(forged, "aws-req-3")
    assert answer["ok"] is False
    assert emf == [
        {
            "_aws": emf[0]["_aws"],
            "Caller": "unauthenticated",
            "Kind": "request",
            "Applied": 0,
            "Denied": 1,
            "Failed": 0,
        }
    ]
    assert any(r.getMessage() == "request refused" and r.aws_request_id == "aws-req-3" for r in records)
    assert not any(hasattr(r, "aws_request_id") and r.aws_request_id == "aws-req-2" for r in records)
