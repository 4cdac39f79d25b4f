"""Ledger throughput, the ledger's share of one grant's time, and the cost of a checkpoint, on the local AWS.

Prints, from one run against moto servers on loopback:
- appends per second: single-entry appends (one transaction each) and
  batched appends (``append_many`` of 10 entries per transaction), on the
  ledger table with its stream (as deployed now, for the checkpointer) beside
  the same table without a stream (as before);
- one grant's wall time with the DynamoDB ledger and with an in-memory ledger
  (the baseline), and the ledger's share of the former;
- the checkpointer's cost of writing one checkpoint when 10, 1,000 and 100,000
  checkpoints exist: wall time and S3 requests per write, beside the requests
  the previous design made (it listed and read every checkpoint before each write).
  The first checkpoints are written by the checkpointer; to reach 1,000 and
  100,000 the rest are put straight into the local S3 (in process) and the head
  pointer advanced to match, since writing them one by one would take hours.

    python bench/ledger.py [--appends 300] [--grants 30] [--levels 10,1000,100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=300)
    parser.add_argument("--grants", type=int, default=30)
    parser.add_argument("--levels", default="10,1000,100000", help="Existing checkpoints to measure at.")
    parser.add_argument("--writes", type=int, default=20, help="Checkpoints written (and timed) at each level.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from deploy_helper.ledger import MemoryLedger
    from deploy_helper.ledger.store import DynamoLedger
    from deploy_helper.local import scenario as seed
    from deploy_helper.local.server import LocalAws

    with LocalAws() as local, tempfile.TemporaryDirectory() as tmp:
        sc = seed.build(local, Path(tmp))
        ddb = local.client("dynamodb", seed.DEFAULT_ACCOUNT)
        no_stream = "deploy-helper-ledger-without-stream"
        ddb.create_table(
            TableName=no_stream,
            KeySchema=[{"AttributeName": "ledger", "KeyType": "HASH"}, {"AttributeName": "seq", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "ledger", "AttributeType": "S"},
                {"AttributeName": "seq", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        single, batched = _appends(DynamoLedger(ddb, sc.config.ledger_table, ledger="bench"), args.appends)
        single_before, batched_before = _appends(DynamoLedger(ddb, no_stream, ledger="bench"), args.appends)

        def grant_times(broker_factory: object) -> list[float]:
            client = sc.client(broker_factory())  # type: ignore[operator]
            grant = sc.bucket_grant("service-a")
            times = []
            for i in range(args.grants):
                t = time.perf_counter()
                response = client.request([grant], action="apply" if i % 2 == 0 else "revoke")
                times.append(time.perf_counter() - t)
                assert response.results[0].decision in ("applied", "revoked"), response
            return times

        with_ledger = statistics.median(grant_times(lambda: sc.broker()))
        without = statistics.median(grant_times(lambda: sc.broker(ledger=MemoryLedger())))
    share = max(0.0, (with_ledger - without) / with_ledger)
    levels = [int(n) for n in args.levels.split(",")]
    checkpoints = checkpoint_costs(levels, args.writes)
    figures = {
        "appends_per_second_single": round(single, 1),
        "appends_per_second_single_without_stream": round(single_before, 1),
        "appends_per_second_batched_10": round(batched, 1),
        "appends_per_second_batched_10_without_stream": round(batched_before, 1),
        "grant_ms_with_dynamodb_ledger": round(with_ledger * 1000, 2),
        "grant_ms_with_memory_ledger_baseline": round(without * 1000, 2),
        "ledger_share_of_grant_time": round(share, 3),
    }
    if args.json:
        print(json.dumps({**figures, "checkpoint_write": checkpoints}, indent=2))
        return
    print(f"{'measure':46} {'value':>10}")
    for key, value in figures.items():
        print(f"{key:46} {value:>10}")
    print()
    print("checkpoint write, by checkpoints already in the bucket:")
    print(f"{'existing':>10} {'ms/write (median)':>18} {'S3 requests/write':>18} {'before: requests/write':>23}")
    for row in checkpoints:
        print(
            f"{row['existing']:>10,} {row['ms_per_write']:>18} {row['s3_requests_per_write']:>18} "
            f"{row['before_s3_requests_per_write']:>23,}"
        )


def _appends(ledger: object, count: int) -> tuple[float, float]:
    entry = {"type": "decision", "decision": "unchanged", "reason": "bench" * 10}
    t0 = time.perf_counter()
    for _ in range(count):
        ledger.append(entry)  # type: ignore[attr-defined]
    single = count / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(count // 10):
        ledger.append_many([entry] * 10)  # type: ignore[attr-defined]
    return single, (count // 10 * 10) / (time.perf_counter() - t0)


def checkpoint_costs(levels: list[int], writes: int) -> list[dict[str, object]]:
    """Time ``writes`` checkpoint writes with 10, 1,000, ... checkpoints already stored."""
    from moto.s3.models import s3_backends

    from deploy_helper.ledger.checkpoints import Head, head_key, note_key
    from deploy_helper.ledger.setup import open_ledger
    from deploy_helper.local import scenario as seed
    from deploy_helper.local.server import LocalAws

    rows: list[dict[str, object]] = []
    with LocalAws(separate_process=False) as local, tempfile.TemporaryDirectory() as tmp:
        sc = seed.build(local, Path(tmp))
        handle = open_ledger(
            local.base_session(),
            table=str(sc.config.ledger_table),
            bucket=sc.config.checkpoint_bucket,
            checkpoint_key=sc.config.checkpoint_key,
            region="us-east-1",
            ledger="bench",
        )
        checkpointer = handle.checkpointer
        assert checkpointer is not None
        bucket = str(sc.config.checkpoint_bucket)
        backend = s3_backends[seed.DEFAULT_ACCOUNT]["aws"]
        entry = {"type": "decision", "decision": "unchanged", "reason": "bench"}
        for _ in range(min(levels)):
            handle.ledger.append(entry)
            written = checkpointer.write()
        for level in levels:
            head = checkpointer.read_head()
            assert head is not None
            if head.checkpoint < level:  # fill up to `level` checkpoints, straight into the local S3
                for number in range(head.checkpoint + 1, level + 1):
                    backend.put_object(bucket, note_key("bench", number), written.raw)
                moved = head.model_copy(update={"checkpoint": level})
                backend.put_object(bucket, head_key("bench"), Head.model_validate(moved).model_dump_json().encode())
            times, requests = [], []
            for _ in range(writes):
                handle.ledger.append(entry)
                before = checkpointer.s3_requests
                t0 = time.perf_counter()
                written = checkpointer.write()
                times.append(time.perf_counter() - t0)
                requests.append(checkpointer.s3_requests - before)
            stored = sum(1 for key in backend.get_bucket(bucket).keys if key.startswith("checkpoints/bench/note/"))
            rows.append(
                {
                    "existing": level,
                    "stored_at_end": stored,
                    "ms_per_write": round(statistics.median(times) * 1000, 2),
                    "s3_requests_per_write": max(requests),
                    # The previous design: list every checkpoint (1,000 per page), read each, then write.
                    "before_s3_requests_per_write": -(-level // 1000) + level + 1,
                }
            )
    return rows


if __name__ == "__main__":
    main()
