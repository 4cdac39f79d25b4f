"""Cold-start import time of the broker's entry point, next to boto3 alone.

Every measurement runs in a fresh interpreter, as a new Lambda execution
environment would, and all of them run in one invocation of this script so the
figures are comparable:

- wall: the time of ``python -c "import X"`` as a whole, minus the median time of
  ``python -c "pass"`` (the interpreter's own start-up) measured in the same run;
- CPU: the same for the child's user + system time, which other load on the machine
  disturbs less than wall time;
- import-time: from a second, separate run under ``python -X importtime``, the sum
  of the ``self`` times of the modules ``import X`` loads beyond those loaded at
  start-up, and how many modules that is; for the handler also its heaviest
  top-level packages.

Runs are interleaved (pass, boto3, handler, pass, boto3, …) so that a busy machine
affects all targets alike; each figure is the median of ``--runs`` runs.

Then the first invocation, against the local AWS (a moto server on 127.0.0.1,
``deploy_helper.local.server.LocalAws``) with the seed scenario deployed in it as
``deploy-helper local up`` does (``deploy_helper.local.scenario.build``: the broker's
tables, policies and keys, its role in the target accounts), each in a fresh
interpreter with the same environment:

- baseline: the minimum for one grant -- import boto3, AssumeRole into the bucket's
  account (the broker role, with its ExternalId and session tag), GetBucketPolicy,
  PutBucketPolicy with one more statement;
- broker: import ``deploy_helper.handler`` and call ``lambda_handler`` once with a
  signed one-grant ``bucket-access`` request (signed by the parent, as a pipeline
  would), which must answer ``applied``. The scenario's policies directory gets the
  ``parsed.json`` that ``function/build.py`` puts in the function's package.

Before each run the bucket policy is put back to the scenario's own, so both write.
The two alternate (baseline, broker, baseline, …) after one unmeasured run of each.
Each is measured as a whole process (wall from the parent; CPU = the child's user +
system time) and from its first statement to its answer (``in-process``: without
the interpreter's own start-up); figures are medians of ``--invocations`` runs.

    python bench/cold_start.py [--runs 7] [--invocations 7] [--no-first-invocation] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

TARGETS = {
    "startup": "pass",
    "boto3": "import boto3",
    "handler": "import deploy_helper.handler",
    # The broker alone (the handler imports it, and the entry points' models besides).
    "broker": "import deploy_helper.execution.broker",
}


@dataclass
class Figure:
    """One target's medians over the runs."""

    target: str
    statement: str
    wall_ms: float
    wall_minus_startup_ms: float
    cpu_ms: float
    cpu_minus_startup_ms: float
    importtime_ms: float
    modules: int
    runs: list[float]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def wall_once(python: str, statement: str) -> tuple[float, float]:
    """Milliseconds of one fresh interpreter running ``statement``: wall, and CPU (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([python, "-c", statement], capture_output=True, text=True, env=_env(), check=False)
    elapsed = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{statement!r} failed:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return elapsed, cpu


def importtime_once(python: str, statement: str) -> dict[str, int]:
    """``-X importtime`` self-times (µs) per module of one fresh interpreter."""
    done = subprocess.run(
        [python, "-X", "importtime", "-c", statement], capture_output=True, text=True, env=_env(), check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{statement!r} failed:\n{done.stderr[-2000:]}")
    self_us: dict[str, int] = {}
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # not a timing line, or the header
        module = fields[2].strip()
        self_us[module] = self_us.get(module, 0) + int(fields[0])
    return self_us


def measure(python: str, runs: int) -> tuple[dict[str, Figure], dict[str, float]]:
    walls: dict[str, list[float]] = {name: [] for name in TARGETS}
    cpus: dict[str, list[float]] = {name: [] for name in TARGETS}
    imports: dict[str, list[tuple[float, int]]] = {name: [] for name in TARGETS}
    packages: dict[str, list[float]] = {}
    wall_once(python, "import deploy_helper.handler, boto3")  # warm the file-system cache and .pyc files
    for _ in range(runs):
        for name, statement in TARGETS.items():
            wall, cpu = wall_once(python, statement)
            walls[name].append(wall)
            cpus[name].append(cpu)
        startup = set(importtime_once(python, TARGETS["startup"]))
        for name, statement in TARGETS.items():
            loaded = {m: us for m, us in importtime_once(python, statement).items() if m not in startup}
            imports[name].append((sum(loaded.values()) / 1000, len(loaded)))
            if name == "broker":
                by_package: dict[str, float] = {}
                for module, us in loaded.items():
                    top = module.split(".")[0]
                    by_package[top] = by_package.get(top, 0) + us / 1000
                for top, ms in by_package.items():
                    packages.setdefault(top, []).append(ms)
    startup_ms = statistics.median(walls["startup"])
    startup_cpu_ms = statistics.median(cpus["startup"])
    figures = {}
    for name, statement in TARGETS.items():
        wall = statistics.median(walls[name])
        cpu = statistics.median(cpus[name])
        figures[name] = Figure(
            target=name,
            statement=statement,
            wall_ms=round(wall, 1),
            wall_minus_startup_ms=round(wall - startup_ms, 1),
            cpu_ms=round(cpu, 1),
            cpu_minus_startup_ms=round(cpu - startup_cpu_ms, 1),
            importtime_ms=round(statistics.median(ms for ms, _ in imports[name]), 1),
            modules=int(statistics.median(n for _, n in imports[name])),
            runs=[round(w, 1) for w in walls[name]],
        )
    heaviest = sorted(
        ((top, round(statistics.median(ms + [0.0] * (runs - len(ms))), 1)) for top, ms in packages.items()),
        key=lambda item: -item[1],
    )[:6]
    return figures, dict(heaviest)


#: The baseline: the minimum one grant needs, with boto3 alone (configuration in the environment).
BASELINE = r"""
import json, os, time
started, cpu = time.perf_counter(), time.process_time()
import boto3
e = os.environ
creds = boto3.client("sts").assume_role(
    RoleArn=e["BENCH_ROLE_ARN"], RoleSessionName="baseline", SourceIdentity="baseline",
    ExternalId=e["DEPLOY_HELPER_EXTERNAL_ID"], Tags=[{"Key": "DeployHelperMinBootstrap", "Value": "1"}],
)["Credentials"]
s3 = boto3.client("s3", aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                  aws_session_token=creds["SessionToken"])
bucket = e["BENCH_BUCKET"]
policy = json.loads(s3.get_bucket_policy(Bucket=bucket, ExpectedBucketOwner=e["BENCH_ACCOUNT"])["Policy"])
policy["Statement"].append(json.loads(e["BENCH_STATEMENT"]))
s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy), ExpectedBucketOwner=e["BENCH_ACCOUNT"])
print(json.dumps({"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "outcome": "put"}))
"""

#: The broker's first invocation: the handler, one signed request (stdin).
BROKER = r"""
import json, sys, time
started, cpu = time.perf_counter(), time.process_time()
event = json.loads(sys.stdin.read())
from deploy_helper.handler import lambda_handler
answer = lambda_handler(event, None)
wall, cpu = time.perf_counter() - started, time.process_time() - cpu
outcome = ",".join(r["decision"] for r in answer.get("results", [])) or str(answer.get("error"))
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "outcome": outcome}))
"""


class _NoBroker:
    """Stands for the broker in a client that only signs."""


_NO_BROKER: Any = _NoBroker()


@dataclass
class Invocation:
    """One side's medians over its runs: whole process and in-process, wall and CPU seconds."""

    target: str
    process_wall_s: float
    process_cpu_s: float
    in_process_wall_s: float
    in_process_cpu_s: float
    outcomes: list[str]
    process_wall_runs: list[float]


def run_child(python: str, script: str, env: dict[str, str], stdin: str = "") -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter: its own figures plus whole-process wall and CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([python, "-c", script], input=stdin, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"a first-invocation run failed:\n{done.stderr[-3000:]}")
    own = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**own, "process_wall_s": wall, "process_cpu_s": cpu}


def first_invocations(python: str, runs: int) -> dict[str, Invocation]:
    """Baseline and broker first invocations against the seed scenario on the local AWS, interleaved."""
    from deploy_helper.local import scenario as seed
    from deploy_helper.local.server import LocalAws
    from deploy_helper.trust import policyfiles
    from deploy_helper.trust.callers import CallerRegistry
    from deploy_helper.trust.rules import RuleSet

    results: dict[str, list[dict[str, Any]]] = {"baseline": [], "broker": []}
    with LocalAws() as local, tempfile.TemporaryDirectory() as tmp:
        sc = seed.build(local, Path(tmp))
        if hasattr(policyfiles, "write_parsed"):  # as build.py does (a broker older than parsed.json reads the YAML)
            policyfiles.write_parsed(sc.policies_dir, {"callers.yaml": CallerRegistry, "rules.yaml": RuleSet})
        tooling = seed.ACCOUNTS["tooling"]
        grant = sc.bucket_grant("service-a")
        statement = {
            "Sid": "BaselineRead",
            "Effect": "Allow",
            "Principal": {"AWS": grant["principal"]},
            "Action": ["s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": [f"arn:aws:s3:::{sc.bucket}", f"arn:aws:s3:::{sc.bucket}/*"],
        }
        env = {
            **{k: v for k, v in os.environ.items() if k.startswith("AWS_") or k in ("PATH", "HOME")},
            **sc.environ(),
            "BENCH_ROLE_ARN": f"arn:aws:iam::{tooling}:role/{sc.config.target_role_name}",
            "BENCH_BUCKET": sc.bucket,
            "BENCH_ACCOUNT": tooling,
            "BENCH_STATEMENT": json.dumps(statement),
        }
        s3 = local.client("s3", tooling)

        def reset() -> None:
            s3.put_bucket_policy(Bucket=sc.bucket, Policy=json.dumps(seed._foreign_bucket_policy(sc.bucket)))

        def broker_run(index: int) -> dict[str, Any]:
            client = sc.client(broker=_NO_BROKER)  # signs only: the broker runs in the child
            payload = client.payload([grant], request_id=f"bench-cold-{index}", context={"pipeline": "bench-cold"})
            return run_child(python, BROKER, env, json.dumps(client.envelope(payload)))

        for index in range(runs + 1):  # run 0 is unmeasured: it writes the .pyc files and warms the server
            reset()
            baseline = run_child(python, BASELINE, env)
            reset()
            broker = broker_run(index)
            if broker["outcome"] != "applied":
                raise SystemExit(f"the broker's first invocation answered {broker['outcome']!r}, not 'applied'")
            if index:
                results["baseline"].append(baseline)
                results["broker"].append(broker)
        reset()

    def median(rows: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 4)

    return {
        name: Invocation(
            target=name,
            process_wall_s=median(rows, "process_wall_s"),
            process_cpu_s=median(rows, "process_cpu_s"),
            in_process_wall_s=median(rows, "wall_s"),
            in_process_cpu_s=median(rows, "cpu_s"),
            outcomes=sorted({r["outcome"] for r in rows}),
            process_wall_runs=[round(r["process_wall_s"], 3) for r in rows],
        )
        for name, rows in results.items()
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per import target (default 7)")
    parser.add_argument("--invocations", type=int, default=7, help="first invocations per side (default 7)")
    parser.add_argument("--no-first-invocation", action="store_true", help="measure the imports only")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure (default: this one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.runs < 1 or args.invocations < 1:
        parser.error("--runs and --invocations must be at least 1")

    figures, heaviest = measure(args.python, args.runs)
    handler, boto3, broker_modules = figures["handler"], figures["boto3"], figures["broker"]
    ratio = {
        "wall": _ratio(handler.wall_minus_startup_ms, boto3.wall_minus_startup_ms),
        "cpu": _ratio(handler.cpu_minus_startup_ms, boto3.cpu_minus_startup_ms),
        "importtime": _ratio(handler.importtime_ms, boto3.importtime_ms),
    }
    broker_ratio = {
        "wall": _ratio(broker_modules.wall_minus_startup_ms, boto3.wall_minus_startup_ms),
        "cpu": _ratio(broker_modules.cpu_minus_startup_ms, boto3.cpu_minus_startup_ms),
        "importtime": _ratio(broker_modules.importtime_ms, boto3.importtime_ms),
    }
    firsts = None if args.no_first_invocation else first_invocations(args.python, args.invocations)
    first_ratio = None
    if firsts is not None:
        broker, baseline = firsts["broker"], firsts["baseline"]
        first_ratio = {
            "process_wall": _ratio(broker.process_wall_s, baseline.process_wall_s),
            "process_cpu": _ratio(broker.process_cpu_s, baseline.process_cpu_s),
            "in_process_wall": _ratio(broker.in_process_wall_s, baseline.in_process_wall_s),
            "in_process_cpu": _ratio(broker.in_process_cpu_s, baseline.in_process_cpu_s),
        }
    if args.json:
        print(
            json.dumps(
                {
                    "python": platform.python_version(),
                    "runs": args.runs,
                    "figures": {name: asdict(f) for name, f in figures.items()},
                    "handler_over_boto3": ratio,
                    "broker_modules_over_boto3": broker_ratio,
                    "broker_heaviest_packages_ms": heaviest,
                    **(
                        {
                            "invocations": args.invocations,
                            "first_invocation": {name: asdict(f) for name, f in firsts.items()},
                            "broker_over_baseline": first_ratio,
                        }
                        if firsts is not None
                        else {}
                    ),
                },
                indent=2,
            )
        )
        return
    print(f"cold import in a fresh interpreter, median of {args.runs} runs (Python {platform.python_version()})")
    minus = "- start-up"
    print(f"{'':38} {'wall ms':>9} {minus:>11} {'CPU ms':>8} {minus:>11} {'importtime ms':>14} {'modules':>8}")
    for f in figures.values():
        extra = "" if f.target == "startup" else f"{f.wall_minus_startup_ms:>11.1f}"
        cpu_extra = "" if f.target == "startup" else f"{f.cpu_minus_startup_ms:>11.1f}"
        importtime = "" if f.target == "startup" else f"{f.importtime_ms:>14.1f}"
        modules = "" if f.target == "startup" else f"{f.modules:>8}"
        label = "python -c pass" if f.target == "startup" else f.statement
        cpu = f"{f.cpu_ms:>8.1f}"
        print(f"{label:38} {f.wall_ms:>9.1f} {extra:>11} {cpu} {cpu_extra:>11} {importtime:>14} {modules:>8}")
    print(
        f"deploy_helper.handler / boto3: {ratio['wall']}x wall, {ratio['cpu']}x CPU (minus start-up), "
        f"{ratio['importtime']}x import time"
    )
    print(
        f"deploy_helper.execution.broker / boto3: {broker_ratio['wall']}x wall, {broker_ratio['cpu']}x CPU "
        f"(minus start-up), {broker_ratio['importtime']}x import time (the handler imports it at init)"
    )
    print("heaviest packages in the broker's import (ms): " + ", ".join(f"{p} {ms}" for p, ms in heaviest.items()))
    if firsts is None or first_ratio is None:
        return
    print()
    print(f"first invocation in a fresh interpreter, one bucket-access grant, median of {args.invocations} runs")
    print(f"{'':34} {'process wall s':>14} {'CPU s':>7} {'in-process wall s':>18} {'CPU s':>7}  outcome")
    labels = {
        "baseline": "baseline (boto3: STS, Get+Put)",
        "broker": "broker (handler, signed request)",
    }
    for name, f in firsts.items():
        print(
            f"{labels[name]:34} {f.process_wall_s:>14.3f} {f.process_cpu_s:>7.3f} {f.in_process_wall_s:>18.3f}"
            f" {f.in_process_cpu_s:>7.3f}  {','.join(f.outcomes)}"
        )
    print(
        f"broker / baseline: {first_ratio['process_wall']}x wall, {first_ratio['process_cpu']}x CPU (whole process); "
        f"{first_ratio['in_process_wall']}x wall, {first_ratio['in_process_cpu']}x CPU (in-process)"
    )


if __name__ == "__main__":
    main()
