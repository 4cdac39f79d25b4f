"""Fixtures of the functional tests beyond tests/conftest.py."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from _ledger import run_cli

if TYPE_CHECKING:
    from deploy_helper.local.scenario import Scenario


@pytest.fixture
def populated(scenario: Scenario) -> Scenario:
    """The seed grants applied, one revoked, and checkpoint 1 written by the checkpointer."""
    client = scenario.client()
    client.request(scenario.seed_grants())
    client.request([scenario.bucket_grant("service-b")], action="revoke")
    assert scenario.checkpoint()["checkpoint"] == 1  # the checkpointer, fed by the table's stream
    result = run_cli(scenario, "ledger", "verify", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["whole"] is True
    return scenario
