"""``drift`` over 200 accounts: one read per resource, and little more time than the reads.

The seed scenario at scale (``build_scaled``): each of ``--services`` service accounts
gets the shared authorizer's invoke permission, read on the shared artifact bucket, a
grant on its key, and two statements on its own artifact bucket (one request through
the broker). Then, with every broker-role session already assumed (both runs share
them), it times:

- reads: every resource the ledger has grants on read once with the kind's own
  ``read``, with as many reads at once as drift makes;
- drift: ``DriftChecker.check`` — streams the ledger, starts each resource's read as
  soon as an entry names it, then classifies (the same reads, plus the ledger's own
  read, the references and the classification).

Printed: both wall times, their ratio (the target is at most 1.5), the AWS calls drift
made per operation (one per resource), the time of reading the ledger alone, and the
same check on a ledger view read beforehand (reads + classification only). On a
loaded machine every figure is CPU-bound (boto3 and the local AWS share the cores):
the ledger's read then adds to the reads instead of overlapping them. ``--latency S`` adds S seconds to every
target-account call (a ``before-send`` sleep; real control-plane calls take ~50 ms).

Each measurement runs ``--repeat`` times, alternated, and the best of each is printed
(the machine is shared: single runs vary by tens of percent).

    python bench/drift.py [--services 200] [--latency 0.05] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TARGET_SERVICES = {"lambda", "s3", "kms"}


class Meter:
    def __init__(self, latency: float, own_bucket: str | None = None) -> None:
        self.latency = latency
        #: The broker's own checkpoint bucket: its calls are not target-account calls.
        self.own_bucket = own_bucket
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def install(self, session: Any) -> None:
        session.events.register("before-call", self._count)
        session.events.register("before-send", self._delay)

    def _count(self, model: Any, params: Any, context: dict[str, Any], **_: Any) -> None:
        service = model.service_model.service_name
        own = service == "s3" and bool(self.own_bucket) and str(self.own_bucket) in str(params.get("url_path", ""))
        context["bench.target"] = service in TARGET_SERVICES and not own
        if context["bench.target"]:
            with self._lock:
                self.calls[f"{service}.{model.name}"] += 1

    def _delay(self, request: Any, **_: Any) -> None:
        if self.latency and (getattr(request, "context", None) or {}).get("bench.target"):
            time.sleep(self.latency)


def grants_of(sc: Any) -> list[dict[str, Any]]:
    from deploy_helper.local import scenario as seed

    out: list[dict[str, Any]] = []
    for s in sc.services:
        out += [sc.authorizer_grant(s), sc.bucket_grant(s), sc.key_grant(s)]
        out += [sc.service_bucket_grant(s, role) for role in seed.TOOLING_ROLES]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to each target-account call")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (best is printed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from deploy_helper.audit.drift import ACCOUNT_WORKERS, RESOURCE_WORKERS, DriftChecker, LedgerView
    from deploy_helper.audit.scheduled import stored_entries
    from deploy_helper.execution.broker import Broker
    from deploy_helper.grants import REGISTRY
    from deploy_helper.local import scenario as seed
    from deploy_helper.local.server import LocalAws

    with LocalAws() as local, tempfile.TemporaryDirectory() as tmp:
        sc = seed.build_scaled(local, Path(tmp), args.services, compaction=["merge-principals", "widen-source-arn"])
        grants = grants_of(sc)
        response = sc.client(sc.broker()).request(grants, request_id="bench-drift-setup")
        applied = Counter(r.decision for r in response.results)
        meter = Meter(args.latency, sc.config.checkpoint_bucket)
        session = sc.local.base_session()
        meter.install(session)
        broker = Broker.from_config(sc.config, session=session)
        view = LedgerView.of(stored_entries(broker.ledger))
        checker = DriftChecker(broker.sessions, broker.references, clock=broker.clock)
        work = checker.plan(view)

        for account in work:  # assume every broker role once; both runs use these sessions
            broker.sessions.for_account(account, "bench-drift")
        keys = [key for resources in work.values() for key in resources]

        def read(key: Any) -> int:
            kind = REGISTRY[key[1]]
            kind.read(clients[key[0]].client(kind.service, key[3]), key[2])
            return 1

        def time_reads() -> float:
            # As many reads at once as drift makes; each account's role assumed and its client made
            # in the timing, as drift does (a run id of its own: the sessions of earlier runs are not reused).
            nonlocal clients
            run = f"bench-drift-reads-{len(reads_runs)}"
            t0 = time.perf_counter()
            with ThreadPoolExecutor(ACCOUNT_WORKERS) as pool:
                clients = dict(zip(work, pool.map(lambda a: broker.sessions.for_account(a, run), work), strict=True))
            with ThreadPoolExecutor(ACCOUNT_WORKERS * RESOURCE_WORKERS) as pool:
                assert sum(pool.map(read, keys)) == len(keys)
            return time.perf_counter() - t0

        def time_check() -> tuple[float, Any]:
            t0 = time.perf_counter()
            found = DriftChecker(broker.sessions, broker.references, clock=broker.clock).check(broker.ledger)
            return time.perf_counter() - t0, found

        def time_on_view() -> tuple[float, float]:
            t0 = time.perf_counter()
            read_view = LedgerView.of(stored_entries(broker.ledger))
            ledger_s = time.perf_counter() - t0
            DriftChecker(broker.sessions, broker.references, clock=broker.clock).run(read_view)
            return ledger_s, time.perf_counter() - t0 - ledger_s

        clients: dict[str, Any] = {}
        reads = len(keys)
        meter.calls.clear()
        reads_runs, check_runs, view_runs = [], [], []
        for n in range(args.repeat):  # alternated; the best of each is printed
            meter.calls.clear()
            reads_runs.append(time_reads())
            if n == 0:
                read_calls = dict(meter.calls)
            meter.calls.clear()
            check_runs.append(time_check())
            if n == 0:
                drift_calls = dict(meter.calls)
            view_runs.append(time_on_view())
        reads_s = min(reads_runs)
        drift_s, report = min(check_runs, key=lambda r: r[0])
        view_s = min(v[0] for v in view_runs)
        on_view_s = min(v[1] for v in view_runs)

    out = {
        "accounts": len(work),
        "resources": reads,
        "active_grants": len(view.active),
        "setup_decisions": dict(applied),
        "latency_s": args.latency,
        "reads_s": round(reads_s, 3),
        "drift_s": round(drift_s, 3),
        "ledger_alone_s": round(view_s, 3),
        "ratio": round(drift_s / reads_s, 3),
        "repeat": args.repeat,
        "drift_on_read_view_s": round(on_view_s, 3),
        "ratio_on_read_view": round(on_view_s / reads_s, 3),
        "drift_reads": report.reads,
        "drift_calls": drift_calls,
        "read_calls": read_calls,
        "clean": report.clean,
        "counts": report.counts(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"bench/drift.py: {out['accounts']} accounts, {reads} resources, {len(view.active)} active grants")
    print(f"latency per target-account call: {args.latency * 1000:.0f} ms")
    print(f"  reading every resource once:  {reads_s:8.2f} s  ({sum(read_calls.values())} calls)")
    print(f"  drift (read + classify):      {drift_s:8.2f} s  ({sum(drift_calls.values())} calls: {drift_calls})")
    print(f"  (reading the ledger alone:    {view_s:8.2f} s, overlapped with the reads in drift)")
    print(f"  ratio drift / reads:          {drift_s / reads_s:8.2f}  (target <= 1.5)")
    print(f"  drift on a ledger view read beforehand: {on_view_s:.2f} s, ratio {on_view_s / reads_s:.2f}")
    print(f"  findings: {report.counts()}; unreadable: {len(report.errors)}")


if __name__ == "__main__":
    main()
