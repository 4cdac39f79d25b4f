"""The function's memory size, from measured CPU: duration and cost for 1, 100 and 1,000 grants.

Lambda gives a function CPU in proportion to its memory: one full vCPU at 1,769 MB
(more vCPUs above that, which one Python interpreter cannot use beyond its one core
for Python code). The broker's own work is CPU-bound, so its CPU time at a memory
size is modelled from CPU time measured here at full speed (a model, not a
measurement on Lambda):

    cpu_time(M) = cpu_seconds / min(1, M / 1769)

- ``cpu_seconds``: the broker's own CPU (``time.process_time`` of this process, all
  threads; the local AWS runs in another process and is not counted) for one signed
  request of N grants of the seed scenario at scale (``build_scaled``, rules with
  compaction, as ``bench/batch.py``), warm: the execution environment already served
  a request. The first invocation (``cold``) is measured in a fresh interpreter: import
  of the handler, configuration, one request of 1 grant (``getrusage`` user + system).
- the time spent waiting for AWS comes on top, whatever the memory size (``bench/batch.py``
  measures it: about 5 s for 500 grants at 50 ms per call); the wall time minus CPU
  seen here is the local AWS on loopback, printed but not modelled.
- cost of the CPU time: arm64 price, $0.0000133334 per GB-second plus $0.20 per
  million requests. Below 1,769 MB it does not depend on the memory size (half the
  memory, twice the time); the waiting time costs in proportion to memory.

    python bench/memory.py [--sizes 128,256,512,1024,1769,3008] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FULL_CPU_MB = 1769
GB_SECOND = 0.0000133334  # arm64, us-east-1
PER_REQUEST = 0.0000002
TIMEOUT_S = 120  # template.yaml: the function's Timeout
SIZES = (128, 256, 512, 1024, 1769, 3008)
COUNTS = (1, 100, 1000)

#: A fresh interpreter: the handler's first invocation (stdin: the signed envelope).
COLD = r"""
import json, resource, sys, time
started = time.perf_counter()
from deploy_helper.handler import lambda_handler
result = lambda_handler(json.load(sys.stdin), None)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter() - started,
                  "decisions": [r["decision"] for r in result.get("results", [])]}))
"""


def grants_of(sc: Any, services: list[str]) -> list[dict[str, Any]]:
    from deploy_helper.local import scenario as seed

    out: list[dict[str, Any]] = []
    for s in services:
        out += [sc.authorizer_grant(s), sc.bucket_grant(s), sc.key_grant(s)]
        out += [sc.service_bucket_grant(s, role) for role in seed.TOOLING_ROLES]
    return out


def measure(client: Any, grants: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    response = client.request(grants, request_id=request_id)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    decisions: dict[str, int] = {}
    for r in response.results:
        decisions[r.decision] = decisions.get(r.decision, 0) + 1
    return {"grants": len(grants), "cpu_s": cpu, "io_s": max(0.0, wall - cpu), "decisions": decisions}


def cold_start(sc: Any, grant: dict[str, Any]) -> dict[str, Any]:
    client = sc.client()
    envelope = client.envelope(client.payload([grant], request_id="bench-memory-cold"))
    env = {**{k: v for k, v in os.environ.items() if k.startswith("AWS_") or k == "PATH"}, **sc.environ()}
    done = subprocess.run(
        [sys.executable, "-c", COLD], input=json.dumps(envelope), capture_output=True, text=True, env=env, check=True
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"grants": 1, "cpu_s": out["cpu_s"], "io_s": max(0.0, out["wall_s"] - out["cpu_s"]), **out}


def model(run: dict[str, Any], memory: int) -> dict[str, float]:
    share = min(1.0, memory / FULL_CPU_MB)
    duration = run["cpu_s"] / share
    return {"duration_s": duration, "cost_usd": duration * memory / 1024 * GB_SECOND + PER_REQUEST}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="memory sizes in MB")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from deploy_helper.local import scenario as seed
    from deploy_helper.local.server import LocalAws

    services_needed = 1 + 100 // 5 + 1000 // 5  # cold + 1 grant, 100 grants, 1,000 grants: each on fresh services
    with LocalAws() as local, tempfile.TemporaryDirectory() as tmp:
        sc = seed.build_scaled(local, Path(tmp), services_needed, compaction=["merge-principals", "widen-source-arn"])
        names = list(sc.scaled)
        runs: dict[str, dict[str, Any]] = {"cold": cold_start(sc, sc.key_grant(names[0]))}
        broker = sc.broker()
        client = sc.client(broker)
        client.request([sc.bucket_grant(names[0])], dry_run=True)  # the environment is warm from here on
        runs["1"] = measure(client, [sc.authorizer_grant(names[0])], "bench-memory-1")
        runs["100"] = measure(client, grants_of(sc, names[1:21]), "bench-memory-100")
        runs["1000"] = measure(client, grants_of(sc, names[21:221]), "bench-memory-1000")

    table = {
        str(m): {name: model(run, m) for name, run in runs.items()} | {"vcpu": min(1.0, m / FULL_CPU_MB)} for m in sizes
    }
    if args.json:
        print(json.dumps({"runs": runs, "model": table, "full_cpu_mb": FULL_CPU_MB}, indent=2))
        return
    print("bench/memory.py: the broker's CPU measured at full speed, scaled by Lambda's CPU share (M / 1769 MB)")
    for name, run in runs.items():
        label = "first invocation (fresh interpreter), 1 grant" if name == "cold" else f"warm, {name} grant(s)"
        print(
            f"  {label}: CPU {run['cpu_s']:.2f} s ({run['cpu_s'] / run['grants'] * 1000:.1f} ms per grant), "
            f"other wall time {run['io_s']:.2f} s; outcomes {run['decisions']}"
        )
    print()
    print("CPU time of one request at each memory size (seconds; AWS waiting time comes on top):")
    columns = ("cold 1", "warm 1", "100", "1,000")
    print(f"{'memory MB':>9} {'vCPU':>5} " + " ".join(f"{c:>8}" for c in columns) + f" {'$ per 1,000 grants':>19}")
    for m in sizes:
        row = table[str(m)]
        cells = []
        for name in ("cold", "1", "100", "1000"):
            d = row[name]["duration_s"]
            cells.append(f"{d:7.2f}s" if d <= TIMEOUT_S else f"{'>120s':>8}")
        print(f"{m:>9} {row['vcpu']:>5.2f} {' '.join(cells)} {row['1000']['cost_usd']:>19.6f}")
    print(
        "modelled: CPU measured at full speed / min(1, M/1769); '>120s' passes the function's Timeout;"
        " cost of that CPU time: arm64 $0.0000133334/GB-s + $0.20/M requests"
    )


if __name__ == "__main__":
    main()
