"""Shared fixtures: one moto server on loopback per test session, reset per test.

Tests talk to it over HTTP through boto3, exactly as the broker does in AWS.
``scenario`` builds the seed scenario (see deploy_helper.local.scenario) on a
freshly reset server; ``strict_session`` is a boto3 session with AWS's
documented refusals added on top of moto (deploy_helper.local.strict_aws).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from deploy_helper.local import scenario as seed
from deploy_helper.local.server import LocalAws

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="session")
def local() -> Iterator[LocalAws]:
    with LocalAws() as server:
        yield server


@pytest.fixture
def fresh_local(local: LocalAws) -> LocalAws:
    local.reset()
    return local


@pytest.fixture
def scenario(fresh_local: LocalAws, tmp_path: Path) -> seed.Scenario:
    return seed.build(fresh_local, tmp_path)
