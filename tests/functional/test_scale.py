"""Many accounts in one request, with AWS throttling and one account that cannot be entered.

A 200-grant request over 40 service accounts (the authorizer's invoke permission,
read on the shared artifact bucket and a grant on its key for each, plus two
tooling-role statements on each service's own artifact bucket) runs while 30 % of
the calls to STS, Lambda, S3 and KMS are throttled and one service account has no
broker role. The broker acts as its execution role with AWS's refusals on top of
moto (strict_aws: a role that does not exist cannot be assumed).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from _aws import exec_session
from botocore.config import Config
from botocore.retries.standard import ExponentialBackoff

from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.faults import FaultInjector

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.local.server import LocalAws

N = 40
BROKEN = "svc-013"
WRITES = {"PutBucketPolicy", "DeleteBucketPolicy", "AddPermission", "RemovePermission", "CreateGrant", "RevokeGrant"}


def _grants(sc: seed.Scenario) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for s in sc.services:
        out += [sc.authorizer_grant(s), sc.bucket_grant(s), sc.key_grant(s)]
        out += [sc.service_bucket_grant(s, role) for role in seed.TOOLING_ROLES]
    return out


def _policy(sc: seed.Scenario, bucket: str, account: str) -> dict[str, Any]:
    return dict(json.loads(sc.local.client("s3", account).get_bucket_policy(Bucket=bucket)["Policy"]))


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore waits rand(0, 1 s * 2^i) after a throttle. The retries, their number and
    # the adaptive rate limiter stay as they are; only the scale shrinks so the file
    # runs in seconds (no test waits on a clock of its own).
    monkeypatch.setitem(ExponentialBackoff._DEFAULT_BACKOFF_CONFIG, "throttling_base_scale", 0.02)


@pytest.mark.usefixtures("fast_backoff")
def test_throttled_batch_with_a_broken_account(fresh_local: LocalAws, tmp_path: Path) -> None:
    sc = seed.build_scaled(fresh_local, tmp_path, N)
    broken_account = sc.accounts[BROKEN]
    fresh_local.client("iam", broken_account).delete_role(RoleName="deploy-helper-broker")

    session = exec_session(fresh_local)
    strict_aws.install(session, fresh_local)
    faults = FaultInjector(seed=6, endpoint_url=fresh_local.endpoint).install(session)
    for service in ("sts", "lambda", "s3", "kms"):
        faults.fail(operation=f"{service}.*", error="throttling", rate=0.3)
    writes: list[str] = []
    session.events.register(
        "before-call", lambda model, **_: writes.append(model.name) if model.name in WRITES else None
    )
    # 15 attempts: the chance that one call is throttled every time is 0.3^15 (1e-8).
    retries = Config(retries={"mode": "adaptive", "max_attempts": 15}, connect_timeout=5, read_timeout=20)
    broker = sc.broker(session=session, client_config=retries)
    client = sc.client(broker)
    grants = _grants(sc)
    assert len(grants) == 200

    first = client.request(grants, request_id="batch-200")

    assert first.ok
    assert faults.faults_by_kind(), "no call was throttled: the test proves nothing"
    throttled = sum(kinds.get("throttling", 0) for kinds in faults.faults_by_kind().values())
    assert throttled > 50
    broken = {i for i, g in enumerate(grants) if g.get("account") == broken_account}
    assert len(broken) == 2
    by_index = {r.index: r for r in first.results}
    assert sorted(by_index) == list(range(200))
    for i, result in by_index.items():
        if i in broken:
            assert result.decision == "failed"
            assert f"cannot assume arn:aws:iam::{broken_account}:role/deploy-helper-broker" in result.reason
            assert "bootstrap" in result.reason
        else:
            assert result.decision == "applied", (i, result.reason)

    # what AWS holds: every grant outside the broken account, and the foreign statements
    function_sids = {s["Sid"] for s in sc.function_policy()["Statement"]}  # type: ignore[index]
    bucket_sids = {s["Sid"] for s in sc.bucket_policy()["Statement"]}  # type: ignore[index]
    assert len(function_sids) == len(bucket_sids) == N + 1
    assert seed.FOREIGN_SID in function_sids and seed.FOREIGN_SID in bucket_sids
    assert len({g["Name"] for g in sc.key_grants()}) == N
    for s in sc.services:
        own = _policy(sc, sc.service_bucket(s), sc.accounts[s])
        expected = 1 if s == BROKEN else 3
        assert len(own["Statement"]) == expected, s
        assert own["Statement"][0]["Sid"] == seed.FOREIGN_SID

    # the same request again: nothing new is written, everything reports unchanged
    writes.clear()
    second = client.request(grants, request_id="batch-200")

    assert writes == []
    decisions = {r.index: r.decision for r in second.results}
    assert {decisions[i] for i in broken} == {"failed"}
    assert {d for i, d in decisions.items() if i not in broken} == {"unchanged"}
