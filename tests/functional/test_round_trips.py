"""The broker's own DynamoDB round trips on a resource's way: two, plus one read beside the AWS read.

One signed request with one bucket grant, through the real client and broker, acting as
the execution role against the local AWS with AWS's refusals on. Every call is logged
as the local AWS answered it. The broker's own calls (the broker account's DynamoDB)
must be: the nonce claimed; the lease and the references read in one BatchGetItem
*while* the broker assumes its role in the target account (shown by holding both calls
at once: if the table read came after the AssumeRole, it could not be reached while
that is held) and before the bucket policy is read; the lease taken with the intent
(one transaction); the outcome written with the lease given back and the answer kept
on the nonce for a retry (one transaction).
"""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from _aws import exec_session

from deploy_helper.exceptions import ClaimConflict
from deploy_helper.execution.locks import DynamoLocks
from deploy_helper.grants import REGISTRY
from deploy_helper.ledger.group_commit import GroupCommit, _Pending
from deploy_helper.local import strict_aws
from deploy_helper.local.stalls import Stalls

if TYPE_CHECKING:
    from deploy_helper.local.scenario import Scenario


def own_calls(aws_calls: Any) -> list[str]:
    return [c.operation for c in aws_calls.calls if c.operation.startswith("dynamodb.")]


def kept_answer(sc: Scenario, request_id: str) -> dict[str, Any]:
    """The answer kept on the nonce of the request ``request_id``, read back from the nonce table."""
    items = sc.local.client("dynamodb").scan(TableName=sc.config.nonce_table, ConsistentRead=True)["Items"]
    answers = [json.loads(zlib.decompress(i["answer"]["B"])) for i in items if "answer" in i]
    (answer,) = [a for a in answers if a.get("request_id") == request_id]
    return answer


def test_a_resource_costs_two_own_round_trips_and_its_table_read_overlaps_the_assume_role(
    scenario: Scenario, aws_calls: Any
) -> None:
    sc = scenario
    session = exec_session(sc.local)
    aws_calls.install(session)
    strict_aws.install(session, sc.local)
    stalls = Stalls()
    stalls.install(session)
    locks = DynamoLocks(session.client("dynamodb", region_name=sc.config.region), sc.config.lock_table)
    broker = sc.broker(session=session, locks=locks)
    client = sc.client(broker)
    assert client.request([sc.bucket_grant("service-a")], request_id="warm-up-request").results[0].decision == "applied"
    aws_calls.clear()

    grant = sc.bucket_grant("service-b")
    assume = stalls.hold("sts.AssumeRole")
    table_read = stalls.hold("dynamodb.BatchGetItem")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(client.request, [grant], request_id="measured-request")
        try:
            assert assume.wait_reached(), "the role was never assumed"
            assert table_read.wait_reached(), "the lease and references were not read while the role was assumed"
        finally:
            assume.release()
            table_read.release()
        response = pending.result(timeout=120)

    assert [r.decision for r in response.results] == ["applied"]
    assert own_calls(aws_calls) == [
        "dynamodb.PutItem",  # the nonce, claimed
        "dynamodb.BatchGetItem",  # lease + references, beside sts.AssumeRole
        "dynamodb.TransactWriteItems",  # lease taken + intent entry
        "dynamodb.TransactWriteItems",  # outcome entry + lease given back + the answer, kept on the nonce
    ]
    assert [c.operation for c in aws_calls.calls if not c.operation.startswith("dynamodb.")] == [
        "sts.AssumeRole",
        "s3.GetBucketPolicy",
        "s3.PutBucketPolicy",
    ]
    order = [c.operation for c in aws_calls.calls]
    assert order.index("dynamodb.BatchGetItem") < order.index("s3.GetBucketPolicy"), "the lease is read first"
    # read back: the statement is there, the lease is free again, the ledger has intent then outcome
    kind = REGISTRY["bucket-access"]
    spec = kind.spec.model_validate(grant)
    assert kind.grant_id(spec) in {s.get("Sid") for s in (sc.bucket_policy() or {}).get("Statement", [])}
    item = sc.local.client("dynamodb").get_item(
        TableName=sc.config.lock_table, Key={"pk": {"S": kind.resource(spec)}}, ConsistentRead=True
    )["Item"]
    assert "owner" not in item, "the lease was given back with the outcome"
    recorded = [
        (e.entry["type"], e.entry["decision"])
        for e in broker.ledger.entries()  # type: ignore[attr-defined]
        if e.entry.get("request_id") == "measured-request"
    ]
    assert recorded == [("intent", "applied"), ("outcome", "applied")]
    assert kept_answer(sc, "measured-request") == response.model_dump(mode="json", exclude_none=True)


def test_a_resource_with_nothing_to_change_takes_no_lease(scenario: Scenario, aws_calls: Any) -> None:
    sc = scenario
    session = exec_session(sc.local)
    aws_calls.install(session)
    locks = DynamoLocks(session.client("dynamodb", region_name=sc.config.region), sc.config.lock_table)
    broker = sc.broker(session=session, locks=locks)
    client = sc.client(broker)
    grant = sc.bucket_grant("service-a")
    client.request([grant], request_id="first-request")
    aws_calls.clear()

    again = client.request([grant], request_id="again-request")

    assert [r.decision for r in again.results] == ["unchanged"], again.error
    assert own_calls(aws_calls) == [
        "dynamodb.PutItem",  # the nonce, claimed
        "dynamodb.BatchGetItem",
        "dynamodb.TransactWriteItems",  # the decision entry with the answer kept on the nonce: no lease
    ]
    assert kept_answer(sc, "again-request") == again.model_dump(mode="json", exclude_none=True)
    assert [c.operation for c in aws_calls.calls if not c.operation.startswith("dynamodb.")] == [
        "sts.AssumeRole",
        "s3.GetBucketPolicy",
    ]


def test_group_commit_refuses_only_the_caller_whose_condition_failed(scenario: Scenario) -> None:
    """Two callers in one ledger transaction: one's lease claim no longer holds.

    The caller whose lease another request took gets ``ClaimConflict`` and nothing of it
    is written; the other caller's entries and lease are written as if alone.
    """
    sc = scenario
    ddb = sc.local.client("dynamodb")
    ledger = sc.broker().ledger
    locks = DynamoLocks(ddb, sc.config.lock_table)
    held_elsewhere = locks.peek("arn:example:taken")
    other_item, _ = locks.take_item("arn:example:taken", held_elsewhere)
    ddb.transact_write_items(TransactItems=[other_item])  # another request takes it first
    stale_item, _ = locks.take_item("arn:example:taken", held_elsewhere)
    free_item, free_lease = locks.take_item("arn:example:free", locks.peek("arn:example:free"))
    group = GroupCommit(ledger, transact=ddb)
    before = ledger.head()[0]  # type: ignore[attr-defined]

    def entry(name: str) -> dict[str, Any]:
        return {"type": "decision", "decision": "unchanged", "request_id": name}

    # both queued before the leader drains: one transaction holds them both
    loser, winner = _Pending([entry("loser")], [stale_item]), _Pending([entry("winner")], [free_item])
    group._queue.extend([loser, winner])
    group._leading = True
    group._drain()

    assert isinstance(loser.error, ClaimConflict)
    assert winner.error is None and len(winner.ids) == 1
    stored = [e.entry["request_id"] for e in ledger.entries(before + 1)]  # type: ignore[attr-defined]
    assert stored == ["winner"], "only the winner's entry is in the ledger"
    assert locks.peek("arn:example:free").owner == free_lease.token
    taken = locks.peek("arn:example:taken")
    assert taken.generation == held_elsewhere.generation + 1 and taken.owner != free_lease.token


def test_a_write_between_the_table_read_and_the_policy_read_is_not_lost(scenario: Scenario) -> None:
    """Request B is held at its read of the lease; request A applies its grant meanwhile
    (lease taken, policy written, lease given back). Had B read the policy beside or before
    the lease, it would now hold a policy without A's statement and a lease generation
    that A's claim already moved past -- its claim would succeed and A's statement would
    be lost. The broker reads the lease first, so B reads the policy A wrote."""
    sc = scenario
    ddb = sc.local.client("dynamodb")

    def broker_with(stalls: Stalls | None = None) -> Any:
        session = exec_session(sc.local)
        strict_aws.install(session, sc.local)
        if stalls is not None:
            stalls.install(session)
        return sc.broker(session=session, locks=DynamoLocks(ddb, sc.config.lock_table))

    stalls = Stalls()
    slow, fast = broker_with(stalls), broker_with()
    grant_a, grant_b = sc.bucket_grant("service-a"), sc.bucket_grant("service-b")
    table_read = stalls.hold("dynamodb.BatchGetItem")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(sc.client(slow).request, [grant_b], request_id="b-reads-late")
        try:
            assert table_read.wait_reached(), "request B never read the lease"
            first = sc.client(fast).request([grant_a], request_id="a-writes-between")
        finally:
            table_read.release()
        second = pending.result(timeout=120)

    assert [r.decision for r in first.results] == ["applied"]
    assert [r.decision for r in second.results] == ["applied"], second.results[0].reason
    kind = REGISTRY["bucket-access"]
    present = {s.get("Sid") for s in (sc.bucket_policy() or {}).get("Statement", [])}
    for grant in (grant_a, grant_b):
        assert kind.grant_id(kind.spec.model_validate(grant)) in present, "no statement lost"
    recorded = [
        (e.entry["type"], e.entry["decision"])
        for e in fast.ledger.entries()
        if e.entry.get("request_id") == "b-reads-late"
    ]
    assert recorded == [("intent", "applied"), ("outcome", "applied")]
