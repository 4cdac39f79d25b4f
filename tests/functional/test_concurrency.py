"""No lost updates: many requests edit one bucket policy and one function policy at once.

Fifty requests each add a different principal to the shared artifact bucket's policy
(a whole-document read-modify-write, serialized by the broker's DynamoDB lease) and
fifty add a different API to the shared authorizer's function policy (one atomic
``AddPermission`` per grant). Every request runs in its own thread; the requests are
spread over several brokers, as over several warm Lambda instances.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest

from deploy_helper.execution.broker import Broker
from deploy_helper.execution.locks import DynamoLocks, NoLock
from deploy_helper.grants import kind_of
from deploy_helper.grants.bucket_access import BucketAccessGrant
from deploy_helper.grants.lambda_invoke import LambdaInvokeGrant
from deploy_helper.local import scenario as seed

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.local.server import LocalAws
    from deploy_helper.models import BrokerResponse

N = 50
BROKERS = 5


@pytest.fixture
def scaled(fresh_local: LocalAws, tmp_path: Path) -> seed.Scenario:
    return seed.build_scaled(fresh_local, tmp_path, N)


def _sid(grant: dict[str, Any]) -> str:
    spec = (BucketAccessGrant if grant["kind"] == "bucket-access" else LambdaInvokeGrant).model_validate(grant)
    return kind_of(spec).grant_id(spec)


def _sids(policy: dict[str, Any] | None) -> set[str]:
    return {s.get("Sid", "") for s in (policy or {}).get("Statement", [])}


def _send_all(sc: seed.Scenario, brokers: list[Broker], grants: list[dict[str, Any]]) -> list[BrokerResponse]:
    """Send one request per grant, all at once, each in its own thread."""
    client = sc.client(brokers[0])

    def send(i: int) -> BrokerResponse:
        envelope = client.envelope(client.payload([grants[i]], request_id=f"conc-{i:03d}"))
        return brokers[i % len(brokers)].handle(envelope)

    with ThreadPoolExecutor(max_workers=len(grants)) as pool:
        return list(pool.map(send, range(len(grants))))


def test_concurrent_requests_keep_every_grant(scaled: seed.Scenario) -> None:
    sc = scaled
    # The scenario's lease table; waiters may wait longer than the default 60 s, as 50
    # holders in a row on a busy machine can take that long (a lease still expires
    # after 60 s, so a crashed holder blocks nobody for longer).
    ddb = sc.local.client("dynamodb")
    brokers = [sc.broker(locks=DynamoLocks(ddb, sc.config.lock_table, wait_seconds=300)) for _ in range(BROKERS)]
    bucket_grants = [sc.bucket_grant(s) for s in sc.services]
    function_grants = [sc.authorizer_grant(s) for s in sc.services]
    grants = [g for pair in zip(bucket_grants, function_grants, strict=True) for g in pair]

    responses = _send_all(sc, brokers, grants)

    decisions = [r.results[0].decision if r.ok and r.results else r.error for r in responses]
    assert decisions == ["applied"] * len(grants)
    bucket_sids, function_sids = _sids(sc.bucket_policy()), _sids(sc.function_policy())
    assert {_sid(g) for g in bucket_grants} <= bucket_sids
    assert {_sid(g) for g in function_grants} <= function_sids
    assert len(bucket_sids) == len(function_sids) == N + 1
    # the statements the broker did not write are intact
    assert seed.FOREIGN_SID in bucket_sids and seed.FOREIGN_SID in function_sids
    foreign = next(s for s in sc.bucket_policy()["Statement"] if s["Sid"] == seed.FOREIGN_SID)  # type: ignore[index]
    assert foreign["Effect"] == "Deny" and foreign["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_without_the_lock_bucket_statements_are_lost(scaled: seed.Scenario) -> None:
    """The control run: the same requests with the lock disabled lose statements.

    moto handles one request at a time and each request's read → write window is
    short, so without help lost updates happen but their number varies from run to
    run. The test widens the window on purpose: a ``before-call`` hook on
    ``PutBucketPolicy`` holds every writer at a barrier until all N requests have
    read the policy -- an interleaving AWS allows for concurrent writers. Every
    writer then puts its own read plus its statement, and all but one are lost.

    The brokers also run without the reference table: its version-conditional owner
    write (``deploy_helper.execution.owners``) would otherwise let only one of the unlocked
    writers through, which hides what the lock is for.
    """
    sc = scaled
    barrier = threading.Barrier(N, timeout=60)

    def hold_writer(**_: Any) -> None:
        barrier.wait()

    brokers = []
    for _ in range(BROKERS):
        session = sc.local.base_session()
        session.events.register("before-call.s3.PutBucketPolicy", hold_writer)
        config = replace(sc.config, reference_table=None)
        brokers.append(Broker.from_config(config, session=session, locks=NoLock()))
    bucket_grants = [sc.bucket_grant(s) for s in sc.services]

    responses = _send_all(sc, brokers, bucket_grants)

    # every request believes it succeeded ...
    assert [r.results[0].decision for r in responses] == ["applied"] * N
    # ... but the policy keeps only the last writer's statement
    present = _sids(sc.bucket_policy()) & {_sid(g) for g in bucket_grants}
    assert len(present) < N
    assert len(present) == 1
    assert seed.FOREIGN_SID in _sids(sc.bucket_policy())
