"""A writer whose lease ran out while it worked: the newer change wins; the late write fails or never starts.

The race of issue 10 (item 5), forced deterministically. Request 1 applies a grant and
is held just before its write (``deploy_helper.local.stalls``: the call waits on an
event, no sleeping); the lease clock is moved past request 1's lease; request 2 takes
the lease over and revokes a grant; request 1 is released. Through the real broker,
acting as its execution role with AWS's refusals on (``strict_aws``) and every call
in a target account logged:

- with the lease: request 1's write never starts (its pre-write check finds the lease
  taken over); the revoke stands; request 1's outcome in the ledger is ``failed``
  with the reason;
- the control, with no lease at all on request 1: on S3, which has no precondition,
  the late PutBucketPolicy puts the revoked statement back -- the hazard is real;
- on Lambda the policy's ``RevisionId`` refuses the stale AddPermission even with no
  lease check at all (defense in depth).

Request 1's heartbeat is off (``heartbeat_seconds=None``): it stands for a holder that
cannot renew in time (a paused process, an unreachable table). The heartbeat itself
and the lease's own checks are tested at the end.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from _aws import exec_session

from deploy_helper.exceptions import ExecutionError, LeaseLostError
from deploy_helper.execution import fencing
from deploy_helper.execution.locks import DynamoLocks, Locker, NoLock
from deploy_helper.grants import REGISTRY
from deploy_helper.grants.base import SourceScope
from deploy_helper.grants.lambda_invoke import LambdaInvoke
from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.server import LOCAL_REGION
from deploy_helper.local.stalls import Stalls

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario
    from deploy_helper.local.server import LocalAws
    from deploy_helper.models import BrokerResponse

LEASE = 60


class Clock:
    """Wall time plus an offset the test moves forward: the lease table's notion of now."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass(frozen=True)
class Kind:
    """One leased grant kind: its grants in the scenario, its write, and its policy read back."""

    name: str
    grant: Callable[[Scenario, str], dict[str, Any]]
    write: str
    policy: Callable[[Scenario], dict[str, Any] | None]


BUCKET = Kind("bucket-access", lambda sc, s: sc.bucket_grant(s), "s3.PutBucketPolicy", lambda sc: sc.bucket_policy())
FUNCTION = Kind(
    "lambda-invoke", lambda sc, s: sc.authorizer_grant(s), "lambda.AddPermission", lambda sc: sc.function_policy()
)


def sid(grant: dict[str, Any]) -> str:
    kind = REGISTRY[grant["kind"]]
    return kind.grant_id(kind.spec.model_validate(grant))


def sids(policy: dict[str, Any] | None) -> set[str]:
    return {s.get("Sid", "") for s in (policy or {}).get("Statement", [])}


def broker(sc: Scenario, aws_calls: Any, locks: Locker, stalls: Stalls | None = None) -> Broker:
    """A broker acting as the execution role, AWS's refusals on, its calls logged (and held, with ``stalls``)."""
    session: boto3.Session = exec_session(sc.local)
    aws_calls.install(session)
    strict_aws.install(session, sc.local)
    if stalls is not None:
        stalls.install(session)
    return sc.broker(session=session, locks=locks)


def leases(sc: Scenario, clock: Clock, **kwargs: Any) -> DynamoLocks:
    return DynamoLocks(sc.local.client("dynamodb"), sc.config.lock_table, lease_seconds=LEASE, clock=clock, **kwargs)


def race(
    sc: Scenario,
    slow: tuple[Broker, Stalls],
    fast: Broker,
    stall_on: str,
    apply: list[dict[str, Any]],
    revoke: list[dict[str, Any]],
    clock: Clock,
    *,
    skip: int = 0,
    action: str = "revoke",
) -> tuple[BrokerResponse, BrokerResponse]:
    """Request 1 (``slow``) applies ``apply`` and is held at its write; the lease clock passes its
    lease; request 2 (``fast``) revokes ``revoke``; then request 1 goes on. Both responses."""
    slow_broker, stalls = slow
    stall = stalls.hold(stall_on, skip=skip)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(sc.client(slow_broker).request, apply, request_id="slow-apply")
        try:
            assert stall.wait_reached(), f"request 1 never reached {stall_on}"
            clock.advance(LEASE + 1)
            second = sc.client(fast).request(revoke, action=action, request_id="newer-revoke")
        finally:
            stall.release()
        return first.result(timeout=120), second


def held(sc: Scenario, aws_calls: Any, locks: Locker) -> tuple[Broker, Stalls]:
    """Request 1's broker, and the stalls that hold its calls."""
    stalls = Stalls()
    return broker(sc, aws_calls, locks, stalls), stalls


def entries_of(b: Broker, request_id: str) -> list[dict[str, Any]]:
    return [e.entry for e in b.ledger.entries() if e.entry.get("request_id") == request_id]  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", [BUCKET, FUNCTION], ids=lambda k: k.name)
def test_a_write_held_past_its_lease_never_starts_and_the_revoke_wins(
    scenario: Scenario, aws_calls: Any, kind: Kind
) -> None:
    sc, clock = scenario, Clock()
    fast = broker(sc, aws_calls, leases(sc, clock))
    revoked, applied_late = kind.grant(sc, "service-a"), kind.grant(sc, "service-b")
    assert sc.client(fast).request([revoked]).results[0].decision == "applied"
    slow = held(sc, aws_calls, leases(sc, clock, heartbeat_seconds=None))
    aws_calls.clear()

    first, second = race(sc, slow, fast, kind.write, [applied_late], [revoked], clock)

    assert [r.decision for r in second.results] == ["revoked"]
    result = first.results[0]
    assert result.decision == "failed"
    assert "lease on" in result.reason and "was lost" in result.reason
    assert "another request took it over (lease generation 3, this request had 2)" in result.reason
    assert "nothing was sent" in result.reason
    # read back: the revoke stands, the late grant was never written, the foreign statement is intact
    present = sids(kind.policy(sc))
    assert sid(revoked) not in present and sid(applied_late) not in present
    assert seed.FOREIGN_SID in present
    writes = [c.operation for c in aws_calls.in_targets() if c.operation == kind.write]
    assert writes == ([kind.write] if kind is BUCKET else []), "only request 2 wrote (a revoke removes on Lambda)"
    assert aws_calls.failures() == [], "request 1's write was stopped before it was sent, not refused by AWS"
    # the ledger: request 1's intent, then its outcome `failed` with the reason; the policy unchanged by it
    recorded = entries_of(fast, "slow-apply")
    assert [(e["type"], e["decision"]) for e in recorded] == [("intent", "applied"), ("outcome", "failed")]
    assert recorded[1]["reason"] == result.reason
    assert recorded[1]["policy_after"] == recorded[1]["policy_before"]
    assert [(e["type"], e["decision"]) for e in entries_of(fast, "newer-revoke")] == [
        ("intent", "revoked"),
        ("outcome", "revoked"),
    ]


def test_control_without_a_lease_the_late_bucket_write_restores_the_revoked_statement(
    scenario: Scenario, aws_calls: Any
) -> None:
    """S3 has no precondition on PutBucketPolicy: without the lease check the stale writer wins."""
    sc, clock = scenario, Clock()
    fast = broker(sc, aws_calls, leases(sc, clock))
    revoked, applied_late = sc.bucket_grant("service-a"), sc.bucket_grant("service-b")
    sc.client(fast).request([revoked])
    slow = held(sc, aws_calls, NoLock())

    first, second = race(sc, slow, fast, BUCKET.write, [applied_late], [revoked], clock)

    assert [r.decision for r in second.results] == ["revoked"]
    assert [r.decision for r in first.results] == ["applied"]
    assert sid(revoked) in sids(sc.bucket_policy()), "the revoked statement came back"


def test_a_stale_lambda_write_is_refused_by_its_revision_even_without_the_lease_check(
    scenario: Scenario, aws_calls: Any
) -> None:
    """Defense in depth: request 1 holds no lease at all; Lambda's RevisionId still stops it.

    Request 1 plans two permissions on the policy it read and is held before its first
    call. Request 2 changes the function policy meanwhile (it grants another API of service-a).
    Request 1's first call is pinned to the revision it read, so Lambda refuses it and
    nothing of request 1's stale plan is sent; request 2's change stands.
    """
    sc, clock = scenario, Clock()
    fast = broker(sc, aws_calls, leases(sc, clock))
    slow = held(sc, aws_calls, NoLock())
    grants = [FUNCTION.grant(sc, "service-a"), FUNCTION.grant(sc, "service-b")]
    other_api = sc.api_ids["service-a"][:-1] + ("x" if sc.api_ids["service-a"][-1] != "x" else "y")
    newer = {**grants[0], "source_arn": grants[0]["source_arn"].replace(sc.api_ids["service-a"], other_api)}

    first, second = race(sc, slow, fast, FUNCTION.write, grants, [newer], clock, action="apply")

    assert [r.decision for r in second.results] == ["applied"]
    assert [r.decision for r in first.results] == ["failed", "failed"]
    assert all("RevisionId precondition" in r.reason for r in first.results)
    present = sids(sc.function_policy())
    assert sid(newer) in present, "the newer change stands"
    assert not {sid(g) for g in grants} & present, "nothing of the stale plan was written"
    assert seed.FOREIGN_SID in present
    refused = [(c.operation, c.error, c.status) for c in aws_calls.failures()]
    assert refused == [("lambda.AddPermission", "PreconditionFailedException", 412)]
    outcomes = [e for e in entries_of(fast, "slow-apply") if e["type"] == "outcome"]
    assert [e["decision"] for e in outcomes] == ["failed", "failed"]
    assert "RevisionId precondition" in outcomes[0]["reason"]


def test_the_local_lambda_keeps_revisions_as_aws_does(scenario: Scenario) -> None:
    """A removal renews the revision, and a RemovePermission with the current one is accepted."""
    lam = scenario.local.client("lambda", seed.ACCOUNTS["token-service"])
    name = "token-authorizer"
    permission = {
        "Action": "lambda:InvokeFunction",
        "Principal": "events.amazonaws.com",
        "SourceAccount": "222222222222",
    }

    def revision() -> str:
        return str(lam.get_policy(FunctionName=name)["RevisionId"])

    before_add = revision()
    lam.add_permission(FunctionName=name, StatementId="Added", RevisionId=before_add, **permission)
    before_remove = revision()
    assert before_remove != before_add
    lam.remove_permission(FunctionName=name, StatementId="Added", RevisionId=before_remove)
    assert revision() not in (before_add, before_remove)
    for stale in (
        lambda: lam.add_permission(FunctionName=name, StatementId="Added", RevisionId=before_remove, **permission),
        lambda: lam.remove_permission(FunctionName=name, StatementId=seed.FOREIGN_SID, RevisionId=before_remove),
    ):
        with pytest.raises(lam.exceptions.PreconditionFailedException) as refused:
            stale()
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert sids(scenario.function_policy()) == {seed.FOREIGN_SID}


# -- the lease itself ------------------------------------------------------------


def test_the_heartbeat_keeps_a_slow_holders_lease(scenario: Scenario) -> None:
    clock = Clock()
    client = scenario.local.client("dynamodb")
    renewals = threading.Semaphore(0)
    locks = DynamoLocks(client, scenario.config.lock_table, lease_seconds=LEASE, clock=clock, heartbeat_seconds=0.05)
    other = DynamoLocks(
        scenario.local.client("dynamodb"), scenario.config.lock_table, lease_seconds=LEASE, clock=clock, wait_seconds=0
    )

    with locks.hold("res") as lease:
        clock.advance(LEASE - 10)
        client.meta.events.register("after-call.dynamodb.UpdateItem", lambda **_: renewals.release())
        # two renewals seen from here on: the second surely began after the clock moved
        assert renewals.acquire(timeout=30) and renewals.acquire(timeout=30), "the heartbeat renews the lease"
        clock.advance(20)  # past the lease's first term
        with pytest.raises(ExecutionError, match="being changed by another request"), other.hold("res"):
            pass
        lease.ensure(1)  # still held
    with other.hold("res"):  # given back on exit
        pass


def test_a_lost_lease_is_known_and_no_write_is_sent_under_it(scenario: Scenario) -> None:
    sc, clock = scenario, Clock()
    locks = leases(sc, clock, heartbeat_seconds=None)
    s3 = sc.local.client("s3", seed.ACCOUNTS["tooling"])
    fencing.guard(s3)
    before = sc.bucket_policy()

    with locks.hold(f"arn:aws:s3:::{sc.bucket}") as lease:
        clock.advance(LEASE + 1)
        with leases(sc, clock).hold(f"arn:aws:s3:::{sc.bucket}"):
            pass  # another request took it over and finished
        with fencing.fenced(lease), pytest.raises(LeaseLostError, match="generation 2, this request had 1"):
            s3.put_bucket_policy(Bucket=sc.bucket, Policy='{"Version": "2012-10-17", "Statement": []}')
        assert lease.lost is not None  # type: ignore[attr-defined]
    assert sc.bucket_policy() == before
    with pytest.raises(LeaseLostError, match="outside its lease"):
        s3.put_bucket_policy(Bucket=sc.bucket, Policy='{"Version": "2012-10-17", "Statement": []}')
    assert sc.bucket_policy() == before
    s3.get_bucket_policy(Bucket=sc.bucket)  # reads are not fenced


def test_a_lease_shorter_than_the_write_is_refused(scenario: Scenario) -> None:
    locks = DynamoLocks(
        scenario.local.client("dynamodb"), scenario.config.lock_table, lease_seconds=30, margin_seconds=10
    )
    with locks.hold("res") as lease:
        lease.ensure(19)  # 30 s less the margin, less the second the table rounds off
        with pytest.raises(LeaseLostError, match="less than the 25 s a write may take plus a 10 s margin"):
            lease.ensure(25)


# -- the shared permission and its references ----------------------------------------


def test_a_revoke_removes_no_shared_permission_when_its_references_changed(
    fresh_local: LocalAws, tmp_path: Path, aws_calls: Any
) -> None:
    """The last grant of a shared permission is revoked while another grant joins it.

    Two APIs of one account under a rule with ``widen-source-arn``: the first stands in
    a shared permission (its reference recorded); request 1 (with no lease, so nothing
    stops it but the references' version) revokes it and is held just before it writes;
    request 2 applies the second API, which joins the shared permission (a reference
    write, no AWS call). Request 1's claim of the references it read (written with its
    intent, in one transaction) then fails: it writes nothing, reads again, and now
    only takes its grant out of the references -- the permission that stands for the
    second grant stays.
    """
    sc = seed.build_scaled(fresh_local, tmp_path, 1, compaction=["widen-source-arn"])
    service = sc.services[0]
    account = sc.accounts[service]
    api = "arn:aws:execute-api:{region}:{account}:a000{n}bcdefg/authorizers/*"
    leaving, joining = (
        {**sc.authorizer_grant(service), "source_arn": api.format(region=LOCAL_REGION, account=account, n=n)}
        for n in (0, 1)
    )
    kind = LambdaInvoke()
    scope = SourceScope(account, f"arn:aws:execute-api:{LOCAL_REGION}:{account}:*/authorizers/*")
    spec = kind.spec.model_validate(leaving)
    shared = kind.shared_sid(spec, scope)  # type: ignore[arg-type]
    statement = kind.shared_statement(spec, scope)  # type: ignore[arg-type]
    lam = sc.local.client("lambda", seed.ACCOUNTS["token-service"])
    lam.add_permission(
        FunctionName=sc.authorizer_arn,
        StatementId=shared,
        Action="lambda:InvokeFunction",
        Principal="apigateway.amazonaws.com",
        SourceArn=statement["Condition"]["ArnLike"]["AWS:SourceArn"],
        SourceAccount=account,
    )
    tables = sc.local.client("dynamodb")
    references = sc.config.reference_table
    tables.put_item(
        TableName=references,
        Item={
            "pk": {"S": sc.authorizer_arn},
            "statements": {"M": {shared: {"SS": [sid(leaving)]}}},
            "version": {"N": "1"},
        },
    )
    fast = broker(sc, aws_calls, leases(sc, Clock()))
    slow_broker, stalls = held(sc, aws_calls, NoLock())
    # request 1's claim of the version it read: the transaction (with its intent) just before it removes
    stall = stalls.hold(
        "dynamodb.TransactWriteItems",
        where=lambda p: any(i.get("Update", {}).get("TableName") == references for i in p.get("TransactItems", [])),
    )

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(sc.client(slow_broker).request, [leaving], action="revoke", request_id="last-leaves")
        try:
            assert stall.wait_reached()
            second = sc.client(fast).request([joining], request_id="joins-shared")
        finally:
            stall.release()
        revoke = first.result(timeout=120)

    assert second.ok, second.error
    assert second.results[0].decision == "applied"
    assert second.results[0].compaction is not None and shared in second.results[0].compaction
    assert revoke.results[0].decision == "revoked", revoke.results[0].reason
    assert shared in sids(sc.function_policy()), "the shared permission stays: it stands for the joining grant"
    assert "lambda.RemovePermission" not in aws_calls.operations()
    item = tables.get_item(TableName=references, Key={"pk": {"S": sc.authorizer_arn}}, ConsistentRead=True)["Item"]
    assert item["statements"]["M"][shared]["SS"] == [sid(joining)]
    recorded = [(e["type"], e["decision"]) for e in entries_of(fast, "last-leaves")]
    assert recorded == [("intent", "revoked"), ("outcome", "revoked")], "the refused claim wrote no entry"


def test_the_brokers_writes_fit_in_a_default_lease() -> None:
    """Every target-account write attempt, and a whole reference write with its retries, fits a renewed lease."""
    from deploy_helper.execution.broker import TABLE_CLIENT_CONFIG, TARGET_CLIENT_CONFIG

    defaults = DynamoLocks(None, "locks")
    room = defaults.lease_seconds - defaults.margin
    assert fencing.attempt_seconds(TARGET_CLIENT_CONFIG) == 25 <= room
    # 3 attempts of 3 + 5 s, and back-offs of at most 1 and 2 s, each plus up to 5 s of Retry-After
    assert fencing.worst_case_seconds(TABLE_CLIENT_CONFIG) == 3 * 8 + (1 + 5) + (2 + 5) <= room


# -- the stall tool ------------------------------------------------------------------


def test_a_stall_holds_only_the_calls_it_names_and_fails_when_never_released(scenario: Scenario) -> None:
    from deploy_helper.local.stalls import StallNotReleased

    admin = scenario.local.admin_session(seed.ACCOUNTS["tooling"]).get_credentials().get_frozen_credentials()
    session = boto3.Session(  # a session of its own: the hook must not reach the harness's shared ones
        aws_access_key_id=admin.access_key,
        aws_secret_access_key=admin.secret_key,
        aws_session_token=admin.token,
        region_name=LOCAL_REGION,
    )
    stalls = Stalls(timeout=0.2).install(session)
    stall = stalls.hold("s3.GetBucketPolicy", where=lambda p: p["Bucket"] == scenario.bucket, skip=1)
    s3 = session.client("s3", endpoint_url=scenario.local.endpoint)

    s3.get_bucket_policy(Bucket=scenario.bucket)  # skipped
    s3.list_buckets()  # another operation
    with pytest.raises(StallNotReleased, match=r"s3\.GetBucketPolicy was held"):
        s3.get_bucket_policy(Bucket=scenario.bucket)
    assert stall.reached.is_set() and stall.held == 1
    s3.get_bucket_policy(Bucket=scenario.bucket)  # held only once (times=1)
    stall.release()
    assert stall.seen == 3
