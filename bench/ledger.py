"""Ledger throughput and the ledger's share of one grant's time, on the local AWS.

Prints, from one run against one moto server on loopback:
- appends per second: single-entry appends (one transaction each) and
  batched appends (``append_many`` of 10 entries per transaction);
- one grant's wall time with the DynamoDB ledger and with an in-memory ledger
  (the baseline), and the ledger's share of the former.

    python bench/ledger.py [--appends 300] [--grants 30] [--json]
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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from deploy_helper.ledger import MemoryLedger
    from deploy_helper.ledger.store import DynamoLedger
    from deploy_helper.local import scenario as seed
    from deploy_helper.local.server import LocalAws

    with LocalAws() as local, tempfile.TemporaryDirectory() as tmp:
        sc = seed.build(local, Path(tmp))
        ddb = local.client("dynamodb", seed.DEFAULT_ACCOUNT)
        ledger = DynamoLedger(ddb, sc.config.ledger_table, ledger="bench")
        entry = {"type": "decision", "decision": "unchanged", "reason": "bench" * 10}
        t0 = time.perf_counter()
        for _ in range(args.appends):
            ledger.append(entry)
        single = args.appends / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(args.appends // 10):
            ledger.append_many([entry] * 10)
        batched = (args.appends // 10 * 10) / (time.perf_counter() - t0)

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
    figures = {
        "appends_per_second_single": round(single, 1),
        "appends_per_second_batched_10": round(batched, 1),
        "grant_ms_with_dynamodb_ledger": round(with_ledger * 1000, 2),
        "grant_ms_with_memory_ledger_baseline": round(without * 1000, 2),
        "ledger_share_of_grant_time": round(share, 3),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{'measure':42} {'value':>10}")
    for key, value in figures.items():
        print(f"{key:42} {value:>10}")


if __name__ == "__main__":
    main()
