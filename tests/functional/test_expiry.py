"""Grants that expire: rules that require a lifetime, the scheduled sweeper, renewal.

The broker runs with an injected clock; the sweep is the scheduled event sent to the
real handler. The key's grants are read back from the local AWS after each step.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from click.testing import CliRunner

from deploy_helper import handler
from deploy_helper.cli import main
from deploy_helper.execution.references import DynamoReferences
from deploy_helper.grants import REGISTRY

if TYPE_CHECKING:
    from collections.abc import Iterator

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed(scenario: Scenario, clock: Clock) -> Iterator[Broker]:
    """The scenario with ``artifact-decrypt`` limited to 8 hours and needing a ticket; its broker on ``clock``."""
    rules_file = scenario.policies_dir / "rules.yaml"
    rules = yaml.safe_load(rules_file.read_text())
    rule = next(r for r in rules["rules"] if r["id"] == "artifact-decrypt")
    rule["max_ttl"] = "8h"
    rule["requires"] = ["ticket"]
    rules_file.write_text(yaml.safe_dump(rules))
    broker = scenario.broker(clock=clock)
    handler.set_broker(broker)
    yield broker
    handler.set_broker(None)


def key_grant_names(sc: Scenario) -> set[str]:
    return {str(g.get("Name")) for g in sc.key_grants()}


def gid(grant: dict[str, Any]) -> str:
    from deploy_helper.audit.drift import parse_spec

    spec = parse_spec(grant)
    return REGISTRY[spec.kind].grant_id(spec)


def cli(args: list[str], sc: Scenario) -> Any:
    return CliRunner().invoke(main, args, env=sc.environ(), catch_exceptions=False)


def test_max_ttl_refuses_a_grant_without_expiry_naming_the_rule(scenario: Scenario, timed: Broker) -> None:
    before = scenario.snapshot()
    response = scenario.client(timed).request([{**scenario.key_grant("service-a"), "ticket": "CHG-1"}])
    (result,) = response.results
    assert result.decision == "denied" and result.rule_id == "artifact-decrypt"
    assert "max-ttl" in result.reason and "8h" in result.reason
    too_long = scenario.client(timed).request([{**scenario.key_grant("service-a"), "ttl": "9h", "ticket": "CHG-1"}])
    assert too_long.results[0].decision == "denied" and "longer than max_ttl 8h" in too_long.results[0].reason
    no_ticket = scenario.client(timed).request([{**scenario.key_grant("service-a"), "ttl": "1h"}])
    assert no_ticket.results[0].decision == "denied" and "requires-ticket" in no_ticket.results[0].reason
    assert scenario.snapshot() == before
    denied = [e.entry for e in scenario.ledger().ledger.entries() if e.entry["decision"] == "denied"]
    assert [e["rule_id"] for e in denied] == ["artifact-decrypt"] * 3


def test_a_one_hour_grant_is_revoked_by_the_sweeper_once_the_clock_passes_its_expiry(
    scenario: Scenario, timed: Broker, clock: Clock
) -> None:
    grant = {**scenario.key_grant("service-a"), "ttl": "1h", "reason": "hotfix deploy", "ticket": "CHG-42"}
    other = {**scenario.key_grant("service-b"), "ttl": "8h", "ticket": "CHG-43"}
    response = scenario.client(timed).request([grant, other], context={"pipeline": "hotfix"})
    assert [r.decision for r in response.results] == ["applied", "applied"], response
    name = gid(grant)
    assert name in key_grant_names(scenario)

    active = {g["grant_id"]: g for g in json.loads(cli(["ledger", "active", "--json"], scenario).stdout)}
    assert active[name]["ticket"] == "CHG-42" and active[name]["reason"] == "hotfix deploy"
    assert active[name]["expires_at"] is not None
    shown = json.loads(cli(["ledger", "show", str(active[name]["entry"])], scenario).stdout)
    assert shown["entry"]["grant"]["spec"]["ticket"] == "CHG-42"
    drift = json.loads(cli(["drift", "--json"], scenario).stdout)
    assert {f["expires_at"] for f in drift["findings"] if f["grant_id"] == name} == {active[name]["expires_at"]}

    # Before the expiry the sweep (sent as the schedule sends it) removes nothing.
    early = handler.lambda_handler({"deploy_helper": "sweep-expired"}, None)
    assert early == {"ok": True, "expired": 0, "results": []}
    assert name in key_grant_names(scenario)

    clock.now += HOUR + 1
    swept = handler.lambda_handler({"deploy_helper": "sweep-expired"}, None)
    assert swept["ok"] and swept["expired"] == 1, swept
    assert name not in key_grant_names(scenario)
    assert gid(other) in key_grant_names(scenario)  # not expired yet
    entries = [e.entry for e in scenario.ledger().ledger.entries()]
    (expired,) = [e for e in entries if e["decision"] == "expired" and e["type"] == "outcome"]
    assert expired["grant"]["grant_id"] == name and expired["caller"] == "deploy-helper:sweeper"
    assert expired["owners"] == []
    owners = DynamoReferences(scenario.local.client("dynamodb"), scenario.config.reference_table or "")
    assert name not in owners.read_record(scenario.key_arn).owners
    active_after = {g["grant_id"] for g in json.loads(cli(["ledger", "active", "--json"], scenario).stdout)}
    assert name not in active_after and gid(other) in active_after
    again = handler.lambda_handler({"deploy_helper": "sweep-expired"}, None)
    assert again["expired"] == 0  # idempotent


def test_renewing_is_resending_with_a_new_expiry(scenario: Scenario, timed: Broker, clock: Clock) -> None:
    grant = {**scenario.key_grant("service-a"), "ttl": "1h", "ticket": "CHG-7"}
    client = scenario.client(timed)
    client.clock = clock  # the pipeline's clock moves with the broker's
    assert client.request([grant]).results[0].decision == "applied"
    clock.now += HOUR / 2
    renewed = client.request([grant])
    assert renewed.results[0].decision == "unchanged"  # the same grant: lifecycle fields are not its identity
    clock.now += HOUR / 2 + 1
    assert handler.lambda_handler({"deploy_helper": "sweep-expired"}, None)["expired"] == 0
    assert gid(grant) in key_grant_names(scenario)
    clock.now += HOUR / 2
    assert handler.lambda_handler({"deploy_helper": "sweep-expired"}, None)["expired"] == 1
    assert gid(grant) not in key_grant_names(scenario)


def test_a_sweep_event_with_anything_more_is_not_a_sweep(scenario: Scenario, timed: Broker, clock: Clock) -> None:
    grant = {**scenario.key_grant("service-a"), "ttl": "1h", "ticket": "CHG-8"}
    assert scenario.client(timed).request([grant]).results[0].decision == "applied"
    clock.now += HOUR + 1
    forged = handler.lambda_handler({"deploy_helper": "sweep-expired", "grants": ["*"]}, None)
    assert forged["ok"] is False  # read as a (refused) signed request, not as a sweep
    assert gid(grant) in key_grant_names(scenario)


def test_an_expiry_in_the_past_is_refused(scenario: Scenario, timed: Broker) -> None:
    grant = {**scenario.bucket_grant("service-a"), "expires_at": "2001-01-01T00:00:00Z"}
    (result,) = scenario.client(timed).request([grant]).results
    assert result.decision == "denied" and "already past" in result.reason
