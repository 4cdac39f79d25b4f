"""Many grants through the broker against a hand-written script, and against the critical path.

The seed scenario at scale (``build_scaled``): each service account may get the shared
authorizer's invoke permission (one function), read on the shared artifact bucket and a
grant on its key (tooling account), and the ``pipeline`` and ``builder`` tooling roles on
its own artifact bucket (``Scenario.scaled_grants``). ``--services S`` gives all 5 grants
to each of S accounts (default 100: 500 grants); ``--grants N`` picks the size: N/5
accounts up to one request's cap (100 / 500 / 1,000 grants over 20 / 100 / 200
accounts), 2N/5 past it (5,000 grants over 2,000 accounts: each account's own-bucket
pair and the key's grant for half of them). A set past one request's cap goes through
the client's splitting (``pipeline_hooks.parts``) as several signed requests, one after
another, with a line per part on stderr. Printed, from one run:

- contender: the broker, through the real client and handler, ``--workers`` accounts at
  once, run in a child process of its own (a fresh interpreter: its memory is the
  broker's);
- baseline: what a hand-written script does -- per grant, sequentially: AssumeRole
  into the target account, read the policy (or the grants), write (``--no-script``
  skips it: at 5,000 grants it takes many minutes);
- wall time and AWS calls of each, the speedup, and the broker's calls over the lower
  bound: per request, one AssumeRole per target account, one read per resource (plus
  pagination), one write per bucket policy, one call per Lambda permission or KMS grant;
- the broker's wall time over the critical-path lower bound (below);
- CPU seconds of the broker (this child process, ``time.process_time`` deltas around each
  request it serves, all threads) and of the local AWS server process (utime + stime from
  ``/proc/<pid>/stat``, deltas around the same requests), each per grant: the harness's
  CPU is not the broker's;
- peak RSS of the broker's process (``ru_maxrss``; also before the request: interpreter,
  imports, the broker built) against the function's default ``MemorySize`` in template.yaml.

The critical-path lower bound, for the run made (its results, the injected latencies and
the broker's concurrency). With t_aws = ``--latency`` per target-account call and
t_ddb = ``--ledger-latency`` per call to the broker's own DynamoDB tables:

    bound = t_ddb + LB                        (t_ddb: the nonce claim)
    LB    = max(max_a d_a, Σ_a d_a / max_workers)          over the target accounts a
    d_a   = t_aws + LB_res(a)                 (t_aws: the AssumeRole)
    LB_res(a) = max(max_r c_r, Σ_r c_r / RESOURCE_WORKERS) over a's resources r
    c_r   = t_aws + 2·t_ddb + t_aws·w_r       (the read; the broker's own calls a resource
                                               needs at least: lease + intent, outcome +
                                               release; the write rounds)
    w_r   = a whole-policy kind (bucket policy etc.): 1 if written, else 0;
            KMS grants: ceil(n / WRITE_WORKERS) for n grants created or revoked;
            Lambda permissions: 1 + ceil((n - 1) / WRITE_WORKERS) for n ≥ 1 permissions
            added or removed (the first pinned to the revision read, the rest in parallel;
            grants widened into one shared permission count once), else 0

RESOURCE_WORKERS from ``deploy_helper.execution.broker``, WRITE_WORKERS from
``deploy_helper.grants.base``, max_workers from the broker configuration the bench uses
(``--workers``). A resource whose grants were all denied is not in it; one refused for a
policy's size was still read. The AWS-only bound is the same with t_ddb = 0. A set split
into several requests has the sum of its requests' bounds (they are sent one after
another).

AWS calls counted: STS and the target accounts' Lambda, S3 and KMS, with a botocore
``before-call`` hook on the session the broker (or the script) uses. Not counted: the
broker's own DynamoDB tables (ledger, nonces, leases, references) on the same local
server; their time is in the broker's wall time.

The rules allow compaction (``merge-principals`` for buckets, ``widen-source-arn`` for
the authorizer), as a shared artifact store's rules would; ``--exact`` runs with one
statement per grant.

``--latency S`` adds S seconds to every counted call (a ``before-send`` sleep, as real
control-plane calls take ~50 ms); ``--ledger-latency`` the same for the broker's
DynamoDB calls (default: a fifth of ``--latency``, DynamoDB being faster). Both runs
start from the same freshly built scenario, each on a local AWS started for it. Grants
AWS would refuse for a policy's size are refused by the broker before any call (and are
not in the lower bound); moto would accept them, so the script makes those writes.

    python bench/batch.py [--grants 500 | --services 100] [--latency 0.05] [--ledger-latency 0.01]
                          [--workers 32] [--exact] [--no-script] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

TARGET_SERVICES = {"sts", "lambda", "s3", "kms"}
ROOT = Path(__file__).resolve().parents[1]


class Meter:
    """Counts target-account calls; sleeps ``latency`` per call (``ledger_latency`` for DynamoDB)."""

    def __init__(
        self, latency: float, ledger_latency: float, own_bucket: str | None = None, nonce_table: str | None = None
    ) -> None:
        #: The broker's own checkpoint bucket: its ledger, not a target account's policy.
        self.own_bucket = own_bucket
        #: Calls that touch the nonce table (alone or in a transaction), by operation.
        self.nonce_table = nonce_table
        self.nonce_calls: Counter[str] = Counter()
        self.latency = latency
        self.ledger_latency = ledger_latency
        self.calls: Counter[str] = Counter()
        self.ledger_calls = 0
        self._lock = threading.Lock()

    def install(self, session: Any) -> None:
        session.events.register("before-call", self._count)
        session.events.register("before-send", self._delay)

    def _count(self, model: Any, params: Any, context: dict[str, Any], **_: Any) -> None:
        service = model.service_model.service_name
        where = str(params.get("url_path", "")) + str(params.get("url", ""))
        own = service == "s3" and self.own_bucket is not None and self.own_bucket in where
        target = service in TARGET_SERVICES and not own
        context["bench.target"] = target
        with self._lock:
            if target:
                self.calls[f"{service}.{model.name}"] += 1
            else:
                self.ledger_calls += 1
                body = params.get("body") or b""
                if self.nonce_table and f'"{self.nonce_table}"'.encode() in (body if isinstance(body, bytes) else b""):
                    self.nonce_calls[model.name] += 1

    def _delay(self, request: Any, **_: Any) -> None:
        context = getattr(request, "context", None) or {}
        delay = self.latency if context.get("bench.target", True) else self.ledger_latency
        if delay:
            time.sleep(delay)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


# -- the broker, in a process of its own ------------------------------------------------


def server_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process ``pid`` has used so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MeteredTransport:
    """Hands envelopes to the broker's handler; adds up wall and CPU time while the broker works."""

    def __init__(self, inner: Any, server_pid: int) -> None:
        self.inner = inner
        self.server_pid = server_pid
        self.wall = self.cpu = self.server_cpu = 0.0

    def send(self, envelope: dict[str, str]) -> dict[str, Any]:
        wall, cpu, server = time.perf_counter(), time.process_time(), server_cpu(self.server_pid)
        try:
            return dict(self.inner.send(envelope))
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu
            self.server_cpu += server_cpu(self.server_pid) - server


def print_part(part: Any) -> None:
    """One line per part of a split request on stderr, as ``deploy-helper request`` prints them."""
    if part.status == "sending":
        sys.stderr.write(f"  {part.heading()}")
    else:
        sys.stderr.write(f"{part.ending()}\n")
    sys.stderr.flush()


def broker_process(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter: build the broker, send the grants through the client, measure."""
    import resource

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import AUDIENCE, CALLER
    from deploy_helper.local.server import LocalAws
    from deploy_helper.trust.signing import Ed25519Signer
    from pipeline_hooks.client import BrokerClient, InProcessTransport

    config = job["config"]
    meter = Meter(job["latency"], job["ledger_latency"], config.checkpoint_bucket, config.nonce_table)
    session = LocalAws(set_environ=False).base_session()
    meter.install(session)
    broker = Broker.from_config(config, session=session)
    transport = MeteredTransport(InProcessTransport(broker), job["server_pid"])
    signer = Ed25519Signer.from_file("ci-tooling-local", Path(job["key_file"]))
    client = BrokerClient(caller=CALLER, audience=AUDIENCE, signer=signer, transport=transport)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    response = client.request(job["grants"], request_id=job["request_id"], progress=print_part)
    wall = time.perf_counter() - t0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    parts = [p.indexes for p in getattr(response, "parts", [])] or [list(range(len(job["grants"])))]
    return {
        "wall_s": wall,
        "broker_cpu_s": transport.cpu,
        "broker_wall_in_handler_s": transport.wall,
        "aws_server_cpu_s": transport.server_cpu,
        "rss_before_mb": rss_before / 1024,
        "rss_peak_mb": rss_peak / 1024,
        "aws_calls": meter.total,
        "calls": dict(sorted(meter.calls.items())),
        "ledger_calls": meter.ledger_calls,
        "nonce_calls": dict(meter.nonce_calls),
        "parts": parts,
        "part_ids": [p.request_id for p in getattr(response, "parts", [])],
        "results": [
            r.model_dump(include={"index", "kind", "decision", "account", "target", "compaction", "reason"})
            for r in response.results
        ],
        "error": response.error.model_dump() if response.error else None,
    }


# -- the lower bounds -----------------------------------------------------------------


def resources_of(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """account -> resource -> {kind, writes}: what the request had to read and write."""
    accounts: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        if r["decision"] == "denied":
            continue
        entry = accounts.setdefault(r["account"], {}).setdefault(
            r["target"], {"kind": r["kind"], "written": False, "calls": 0, "shared": set()}
        )
        if r["decision"] in ("applied", "revoked"):
            entry["written"] = True
            compaction = r.get("compaction") or ""
            if r["kind"] == "lambda-invoke" and compaction.startswith("widened into "):
                entry["shared"].add(compaction.split()[2])  # grants sharing one permission: one call
            else:
                entry["calls"] += 1
    return accounts


def write_rounds(entry: dict[str, Any], write_workers: int) -> int:
    """w_r: the resource's sequential write rounds (see the module's docstring)."""
    n = entry["calls"] + len(entry["shared"])
    if entry["kind"] == "kms-grant":
        return math.ceil(n / write_workers)
    if entry["kind"] == "lambda-invoke":
        return 0 if n == 0 else 1 + math.ceil((n - 1) / write_workers)
    return 1 if entry["written"] else 0


def critical_path(results: list[dict[str, Any]], t_aws: float, t_ddb: float, max_workers: int) -> float:
    """The critical-path lower bound of one request (the module's docstring defines it)."""
    from deploy_helper.execution.broker import RESOURCE_WORKERS
    from deploy_helper.grants.base import WRITE_WORKERS

    spans = []
    for resources in resources_of(results).values():
        costs = [t_aws + 2 * t_ddb + t_aws * write_rounds(e, WRITE_WORKERS) for e in resources.values()]
        spans.append(t_aws + max(max(costs), sum(costs) / RESOURCE_WORKERS))
    if not spans:
        return t_ddb
    return t_ddb + max(max(spans), sum(spans) / max_workers)


def call_lower_bound(results: list[dict[str, Any]]) -> int:
    """AssumeRole per account, a read per resource, the writes (one per bucket policy)."""
    total = 0
    for resources in resources_of(results).values():
        total += 1 + len(resources)
        for e in resources.values():
            total += (1 if e["written"] else 0) if e["kind"] not in ("kms-grant", "lambda-invoke") else e["calls"]
            total += len(e["shared"])
    return total


def run_broker(sc: Any, grants: list[dict[str, Any]], args: argparse.Namespace, server_pid: int) -> dict[str, Any]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    job = {
        "config": dataclasses.replace(sc.config, max_workers=args.workers),
        "latency": args.latency,
        "ledger_latency": args.ledger_latency,
        "server_pid": server_pid,
        "key_file": str(sc.workdir / "ci-tooling.pem"),
        "grants": grants,
        "request_id": f"bench-batch-{len(grants)}",
    }
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = pool.submit(broker_process, job).result()
    results = out.pop("results")
    by_index = {r["index"]: r for r in results}
    per_part = [[by_index[i] for i in part if i in by_index] for part in out["parts"]]
    bound = sum(critical_path(p, args.latency, args.ledger_latency, args.workers) for p in per_part)
    aws_bound = sum(critical_path(p, args.latency, 0.0, args.workers) for p in per_part)
    # refusals grouped by resource; one full reason each (the sizes in them differ)
    reasons: dict[str, list[Any]] = {}
    for r in results:
        if r["decision"] == "failed":
            reasons.setdefault(r["target"], [0, r["reason"]])[0] += 1
    n = len(grants)
    return {
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in out.items() if k != "parts"},
        "requests": len(out["parts"]),
        "lower_bound": sum(call_lower_bound(p) for p in per_part),
        "bound_s": round(bound, 3),
        "bound_aws_only_s": round(aws_bound, 3),
        "wall_over_bound": round(out["wall_s"] / bound, 2) if bound else None,
        "wall_over_aws_bound": round(out["wall_s"] / aws_bound, 2) if aws_bound else None,
        "broker_cpu_ms_per_grant": round(out["broker_cpu_s"] / n * 1000, 3),
        "aws_server_cpu_ms_per_grant": round(out["aws_server_cpu_s"] / n * 1000, 3),
        "decisions": dict(Counter(r["decision"] for r in results)),
        "failed_reasons": {target: {"count": c, "example": reason} for target, (c, reason) in reasons.items()},
    }


def default_memory_mb() -> int:
    """The function's default ``MemorySize`` (template.yaml's parameter)."""
    text = (ROOT / "template.yaml").read_text()
    found = re.search(r"^  MemorySize:\n(?:    .*\n)*?    Default: (\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError("template.yaml has no MemorySize parameter with a default")
    return int(found.group(1))


def run_baseline(sc: Any, grants: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """A hand-written script: per grant, assume the role, read, modify, write; one at a time."""
    from botocore.config import Config

    from deploy_helper.local import scenario as seed

    meter = Meter(args.latency, 0.0, sc.config.checkpoint_bucket)
    session = sc.local.base_session()
    meter.install(session)
    cfg = Config(retries={"mode": "standard", "max_attempts": 3})
    sts = session.client("sts", config=cfg)
    t0 = time.perf_counter()
    for i, g in enumerate(grants):
        if g["kind"] == "lambda-invoke":
            account = g["function"].split(":")[4]
        elif g["kind"] == "kms-grant":
            account = g["key"].split(":")[4]
        else:
            account = g["account"]
        creds = sts.assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/deploy-helper-broker",
            RoleSessionName=f"script-{i}",
            ExternalId=seed.EXTERNAL_ID,
        )["Credentials"]
        keys = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
        sid = f"Script{i:04d}"
        if g["kind"] == "lambda-invoke":
            lam = session.client("lambda", config=cfg, **keys)
            policy = json.loads(lam.get_policy(FunctionName=g["function"])["Policy"])
            if not any(s.get("Sid") == sid for s in policy["Statement"]):
                lam.add_permission(
                    FunctionName=g["function"],
                    StatementId=sid,
                    Action="lambda:InvokeFunction",
                    Principal=g["principal"],
                    SourceArn=g["source_arn"],
                    SourceAccount=g["source_account"],
                )
        elif g["kind"] == "kms-grant":
            kms = session.client("kms", config=cfg, **keys)
            existing = kms.list_grants(KeyId=g["key"])["Grants"]
            if not any(x.get("Name") == sid for x in existing):
                kms.create_grant(KeyId=g["key"], GranteePrincipal=g["grantee"], Operations=g["operations"], Name=sid)
        else:
            s3 = session.client("s3", config=cfg, **keys)
            policy = json.loads(s3.get_bucket_policy(Bucket=g["bucket"])["Policy"])
            policy["Statement"].append(
                {
                    "Sid": sid,
                    "Effect": "Allow",
                    "Principal": {"AWS": g["principal"]},
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{g['bucket']}", f"arn:aws:s3:::{g['bucket']}/*"],
                }
            )
            s3.put_bucket_policy(Bucket=g["bucket"], Policy=json.dumps(policy))
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 3), "aws_calls": meter.total, "calls": dict(sorted(meter.calls.items()))}


def services_for(grants: int) -> int:
    """Accounts for a size: 5 grants each up to one request's cap, 2.5 each past it."""
    from deploy_helper.local.scenario import SCALED_GRANTS
    from deploy_helper.models import MAX_GRANTS

    if grants <= MAX_GRANTS:
        return math.ceil(grants / SCALED_GRANTS)
    return math.ceil(grants * 2 / SCALED_GRANTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grants", type=int, default=None, help="size of the set (e.g. 100, 500, 1000, 5000)")
    parser.add_argument("--services", type=int, default=None, help="service accounts (default: from --grants)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each AWS call (e.g. 0.05)")
    parser.add_argument("--ledger-latency", type=float, default=None, help="seconds per DynamoDB call")
    parser.add_argument("--workers", type=int, default=32, help="accounts the broker works on at once")
    parser.add_argument("--exact", action="store_true", help="rules without compaction: one statement per grant")
    parser.add_argument("--no-script", action="store_true", help="skip the hand-written script's run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.ledger_latency is None:
        args.ledger_latency = args.latency / 5
    if args.services is None:
        args.services = 100 if args.grants is None else services_for(args.grants)

    from deploy_helper.local import scenario as seed
    from deploy_helper.local.server import LocalAws

    compaction = None if args.exact else ["merge-principals", "widen-source-arn"]
    baseline: dict[str, Any] | None = None
    # Each side gets a local AWS of its own, freshly started: a server that has served the
    # script's thousands of calls (and was then reset) is not the one the script started with.
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_script:
            with LocalAws() as local:
                (Path(tmp) / "a").mkdir()
                sc = seed.build_scaled(local, Path(tmp) / "a", args.services, compaction=compaction)
                baseline = run_baseline(sc, sc.scaled_grants(args.grants), args)
        with LocalAws() as local:
            (Path(tmp) / "b").mkdir()
            sc = seed.build_scaled(local, Path(tmp) / "b", args.services, compaction=compaction)
            grants = sc.scaled_grants(args.grants)
            contender = run_broker(sc, grants, args, local._process.pid)

    memory = default_memory_mb()
    speedup = baseline["wall_s"] / contender["wall_s"] if baseline else None
    over = contender["aws_calls"] / contender["lower_bound"] - 1
    out = {
        "grants": len(grants),
        "accounts": args.services,
        "latency_s": args.latency,
        "ledger_latency_s": args.ledger_latency,
        "workers": args.workers,
        "compaction": compaction or [],
        "broker": contender,
        "baseline": baseline,
        "speedup": round(speedup, 2) if speedup else None,
        "calls_over_lower_bound": round(over, 4),
        "memory": {
            "peak_rss_mb": contender["rss_peak_mb"],
            "rss_before_request_mb": contender["rss_before_mb"],
            "template_default_memory_mb": memory,
            "peak_share_of_default": round(contender["rss_peak_mb"] / memory, 3),
        },
        "counted": "STS + target accounts' Lambda/S3/KMS calls; not the broker's own DynamoDB tables",
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    b = contender
    requests = f"{b['requests']} requests (split by the client)" if b["requests"] > 1 else "one request"
    print(f"bench/batch.py: {len(grants)} grants in {requests}, {args.services} service accounts")
    ddb_ms = args.ledger_latency * 1000
    print(
        f"latency per AWS call {args.latency * 1000:.0f} ms (broker's DynamoDB calls {ddb_ms:.0f} ms); "
        f"rules' compaction: {', '.join(compaction) if compaction else 'none (--exact)'}"
    )
    print(f"{'':28}{'wall s':>10}{'AWS calls':>11}")
    print(f"{'broker (' + requests.split(' (')[0] + ')':28}{b['wall_s']:>10.2f}{b['aws_calls']:>11}")
    if baseline:
        print(f"{'baseline (script)':28}{baseline['wall_s']:>10.2f}{baseline['aws_calls']:>11}")
    else:
        print(f"{'baseline (script)':28}{'skipped (--no-script)':>21}")
    ratio = f"{b['wall_over_bound']:.2f}x" if b["wall_over_bound"] else "n/a (no latency)"
    aws_ratio = f"{b['wall_over_aws_bound']:.2f}x" if b["wall_over_aws_bound"] else "n/a"
    print(
        f"speedup: {f'{speedup:.1f}x' if speedup else 'n/a'}; wall / critical-path bound: {ratio} "
        f"(bound {b['bound_s']:.3f} s; AWS-only bound {b['bound_aws_only_s']:.3f} s: {aws_ratio}); "
        f"calls {b['aws_calls']} vs lower bound {b['lower_bound']}"
    )
    print(
        f"broker calls {b['aws_calls']} vs lower bound {b['lower_bound']}: "
        f"{over * 100:+.1f}% (counted: {out['counted']})"
    )
    print(f"broker calls by operation: {b['calls']}")
    print(
        f"broker's own DynamoDB calls (ledger, nonce, leases, references; not counted, in its wall time): "
        f"{b['ledger_calls']}; touching the nonce table, by operation: {b['nonce_calls']} "
        f"(per request: the claim, and the answer inside its last ledger write)"
    )
    print(
        f"CPU: broker {b['broker_cpu_s']:.2f} s ({b['broker_cpu_ms_per_grant']:.2f} ms per grant), "
        f"local AWS server {b['aws_server_cpu_s']:.2f} s ({b['aws_server_cpu_ms_per_grant']:.2f} ms per grant); "
        f"both only while the broker served the request(s), {b['broker_wall_in_handler_s']:.2f} s of wall time"
    )
    print(
        f"memory: the broker's process peaked at {b['rss_peak_mb']:.0f} MB RSS "
        f"({b['rss_before_mb']:.0f} MB before the request: interpreter, imports, broker built); "
        f"template default MemorySize {memory} MB: {b['rss_peak_mb'] / memory * 100:.0f}% used"
    )
    print(f"outcomes: {b['decisions']}")
    for failed in b["failed_reasons"].values():
        print(f"  failed x{failed['count']}, e.g.: {failed['example']}")


if __name__ == "__main__":
    main()
