"""One target-account client per service for every account; what is the account's stays the account's.

A scaled scenario with three service accounts, each with its own artifact bucket; one
request grants a tooling role access to all three buckets, so the broker makes S3 calls in
three accounts through one shared S3 client. The broker acts as its execution role with
AWS's refusals on top of moto (strict_aws), against the local server.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import botocore.retries.bucket
import pytest
from _aws import exec_session
from botocore.retries.standard import ExponentialBackoff

from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.faults import FaultInjector

if TYPE_CHECKING:
    from pathlib import Path

    import boto3

    from deploy_helper.execution.clients import AccountState
    from deploy_helper.local.server import LocalAws

N = 3


@pytest.fixture
def scaled(fresh_local: LocalAws, tmp_path: Path) -> tuple[seed.Scenario, boto3.Session]:
    sc = seed.build_scaled(fresh_local, tmp_path, N)
    session = exec_session(fresh_local)
    strict_aws.install(session, fresh_local)
    return sc, session


def _grants(sc: seed.Scenario) -> list[dict[str, Any]]:
    return [sc.service_bucket_grant(s) for s in sc.services]


def _s3_states(sc: seed.Scenario, broker: Any) -> dict[str, AccountState]:
    """Each service account's own S3 state on the broker's shared S3 client."""
    states = broker.sessions.clients.account_states()
    return {
        s: state
        for s in sc.services
        for (role, service, _), state in states.items()
        if service == "s3" and role == broker.sessions.role_arn(sc.accounts[s])
    }


def test_a_throttled_account_slows_and_spends_no_other_accounts_retries(
    scaled: tuple[seed.Scenario, boto3.Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    sc, session = scaled
    throttled, calm = sc.services[0], sc.services[1:]
    faults = FaultInjector(seed=3, endpoint_url=sc.local.endpoint).install(session)
    faults.fail("s3.PutBucketPolicy", "throttling", accounts=[sc.accounts[throttled]], times=2)
    # botocore's back-off shrunk, as in test_scale; the retries themselves are botocore's.
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.01)
    # Which rate limiter makes a call wait: every wait asked of a limiter's token bucket is
    # recorded (and granted at once: the test is about whose limiter is asked, not for how long).
    asked: list[int] = []
    lock = threading.Lock()

    def acquire(self: Any, amount: int = 1, block: bool = True) -> bool:
        with lock:
            asked.append(id(self))
        return True

    monkeypatch.setattr(botocore.retries.bucket.TokenBucket, "acquire", acquire)
    broker = sc.broker(session=session)

    response = sc.client(broker).request(_grants(sc), request_id="req-throttled")

    assert [r.decision for r in response.results] == ["applied"] * N, response
    assert faults.faults_by_kind() == {"s3.PutBucketPolicy": {"throttling": 2}}
    pool = broker.sessions.clients
    assert pool.across_accounts and pool.built <= 2  # one S3 client (and one Lambda/KMS at most), not one per account
    states = _s3_states(sc, broker)
    assert sorted(states) == sorted(sc.services)
    assert len({id(state.rate_limiter) for state in states.values()}) == N

    def bucket_of(state: AccountState) -> int:
        return id(state.rate_limiter._token_bucket)

    # The throttled account's limiter came on and its retries waited on it ...
    assert asked.count(bucket_of(states[throttled])) == 2
    assert states[throttled].rate_limiter._enabled
    assert states[throttled].retry_handler._retry_quota._quota.available_capacity < 500
    # ... and no call of another account waited on any limiter, or spent any retry quota.
    for s in calm:
        assert bucket_of(states[s]) not in asked
        assert not states[s].rate_limiter._enabled
        assert states[s].retry_handler._retry_quota._quota.available_capacity == 500
    assert set(asked) == {bucket_of(states[throttled])}

    # A second request keeps each account's state: the throttled account's limiter is still on.
    again = sc.client(broker).request(_grants(sc), action="revoke", request_id="req-after")
    assert [r.decision for r in again.results] == ["revoked"] * N, again
    assert _s3_states(sc, broker) == states
    assert states[throttled].rate_limiter._enabled
    assert not any(states[s].rate_limiter._enabled for s in calm)


def test_every_s3_call_names_its_own_account_as_owner_and_signs_as_it(
    scaled: tuple[seed.Scenario, boto3.Session],
) -> None:
    """Three accounts through one S3 client: each call's owner and signature are its own account's."""
    sc, session = scaled
    issued: dict[str, str] = {}  # access key id -> the account STS issued it for
    calls: list[tuple[str, str | None, str, int]] = []  # bucket, ExpectedBucketOwner, access key, signer
    lock = threading.Lock()

    def keep_issued(parsed: dict[str, Any], **_: Any) -> None:
        account = parsed["AssumedRoleUser"]["Arn"].split(":")[4]
        with lock:
            issued[parsed["Credentials"]["AccessKeyId"]] = account

    def keep_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["test-params"] = (params.get("Bucket"), params.get("ExpectedBucketOwner"))

    def keep_signed(context: dict[str, Any], request_signer: Any, **_: Any) -> None:
        key = request_signer._credentials.get_frozen_credentials().access_key
        with lock:
            calls.append((*context["test-params"], key, id(request_signer)))

    session.events.register("after-call.sts.AssumeRole", keep_issued)
    session.events.register("before-parameter-build.s3", keep_params)
    session.events.register("before-call.s3", keep_signed)
    broker = sc.broker(session=session)

    for request_id, action, decision in (("req-owner-1", "apply", "applied"), ("req-owner-2", "revoke", "revoked")):
        calls.clear()
        issued.clear()
        response = sc.client(broker).request(_grants(sc), action=action, request_id=request_id)
        assert [r.decision for r in response.results] == [decision] * N, response

        owners = {sc.service_bucket(s): sc.accounts[s] for s in sc.services}
        in_buckets = [c for c in calls if c[0] in owners]
        assert {bucket for bucket, *_ in in_buckets} == set(owners)
        assert len(in_buckets) >= 2 * N  # a read and a write per bucket
        for bucket, owner, key, _ in in_buckets:
            assert owner == owners[bucket], (bucket, owner)  # the bucket's account, never another's
            assert issued.get(key) == owners[bucket], (bucket, key)  # signed as this request in that account
        assert len({signer for *_, signer in in_buckets}) == 1  # one shared S3 client for all three
