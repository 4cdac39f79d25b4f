"""One request with 500 grants over 100 accounts: the broker against a hand-written script.

The seed scenario at scale (``build_scaled``): 100 service accounts each get the
shared authorizer's invoke permission (one function), read on the shared artifact
bucket and a grant on its key (tooling account), and each service account's own
artifact bucket gets 2 statements for tooling roles. Printed, from one run:

- contender: the broker, one signed request, ``--workers`` accounts at once;
- baseline: what a hand-written script does -- per grant, sequentially: AssumeRole
  into the target account, read the policy (or the grants), write;
- wall time and AWS calls of each, the speedup, and the broker's calls over the lower
  bound: one AssumeRole per target account, one read per resource (plus pagination),
  one write per bucket policy, one call per Lambda permission or KMS grant made.

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
start from the same freshly built scenario. Grants AWS would refuse for a policy's
size are refused by the broker before any call (and are not in the lower bound);
moto would accept them, so the script makes those writes.

    python bench/batch.py [--services 100] [--latency 0.05] [--workers 32] [--exact] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

TARGET_SERVICES = {"sts", "lambda", "s3", "kms"}


class Meter:
    """Counts target-account calls; sleeps ``latency`` per call (``ledger_latency`` for DynamoDB)."""

    def __init__(self, latency: float, ledger_latency: float, own_bucket: str | None = None) -> None:
        #: The broker's own checkpoint bucket: its ledger, not a target account's policy.
        self.own_bucket = own_bucket
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

    def _delay(self, request: Any, **_: Any) -> None:
        context = getattr(request, "context", None) or {}
        delay = self.latency if context.get("bench.target", True) else self.ledger_latency
        if delay:
            time.sleep(delay)

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def grants_of(sc: Any) -> list[dict[str, Any]]:
    from deploy_helper.local import scenario as seed

    out: list[dict[str, Any]] = []
    for s in sc.services:
        out += [sc.authorizer_grant(s), sc.bucket_grant(s), sc.key_grant(s)]
        out += [sc.service_bucket_grant(s, role) for role in seed.TOOLING_ROLES]
    return out


def run_broker(sc: Any, grants: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    from deploy_helper.execution.broker import Broker

    meter = Meter(args.latency, args.ledger_latency, sc.config.checkpoint_bucket)
    session = sc.local.base_session()
    meter.install(session)
    config = dataclasses.replace(sc.config, max_workers=args.workers)
    broker = Broker.from_config(config, session=session)
    client = sc.client(broker)
    t0 = time.perf_counter()
    response = client.request(grants, request_id="bench-batch-500")
    wall = time.perf_counter() - t0
    decisions = Counter(r.decision for r in response.results)
    # the lower bound for what was asked and allowed
    accounts, resources, writes = set(), set(), 0
    bucket_written: set[str] = set()
    shared_permissions: set[str] = set()
    for result in response.results:
        if result.decision == "denied":
            continue
        accounts.add(result.account)
        resources.add(result.target)
        if result.decision == "applied":
            if result.kind == "bucket-access":
                bucket_written.add(result.target)
            elif result.kind == "lambda-invoke" and (result.compaction or "").startswith("widened into "):
                shared_permissions.add(result.compaction.split()[2])  # grants sharing one permission: one call
            else:
                writes += 1
    lower = len(accounts) + len(resources) + len(bucket_written) + len(shared_permissions) + writes
    # refusals grouped by resource; one full reason each (the sizes in them differ)
    reasons: dict[str, list[Any]] = {}
    for r in response.results:
        if r.decision == "failed":
            reasons.setdefault(r.target, [0, r.reason])[0] += 1
    return {
        "wall_s": round(wall, 3),
        "aws_calls": meter.total,
        "calls": dict(sorted(meter.calls.items())),
        "ledger_calls": meter.ledger_calls,
        "lower_bound": lower,
        "decisions": dict(decisions),
        "failed_reasons": {target: {"count": n, "example": reason} for target, (n, reason) in reasons.items()},
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each AWS call (e.g. 0.05)")
    parser.add_argument("--ledger-latency", type=float, default=None, help="seconds per DynamoDB call")
    parser.add_argument("--workers", type=int, default=32, help="accounts the broker works on at once")
    parser.add_argument("--exact", action="store_true", help="rules without compaction: one statement per grant")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.ledger_latency is None:
        args.ledger_latency = args.latency / 5

    from deploy_helper.local import scenario as seed
    from deploy_helper.local.server import LocalAws

    compaction = None if args.exact else ["merge-principals", "widen-source-arn"]
    with LocalAws() as local, tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        sc = seed.build_scaled(local, Path(tmp) / "a", args.services, compaction=compaction)
        grants = grants_of(sc)
        baseline = run_baseline(sc, grants, args)
        local.reset()
        sc = seed.build_scaled(local, Path(tmp) / "b", args.services, compaction=compaction)
        contender = run_broker(sc, grants_of(sc), args)

    speedup = baseline["wall_s"] / contender["wall_s"]
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
        "speedup": round(speedup, 2),
        "calls_over_lower_bound": round(over, 4),
        "counted": "STS + target accounts' Lambda/S3/KMS calls; not the broker's own DynamoDB tables",
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"bench/batch.py: {len(grants)} grants in one request, {args.services} service accounts")
    ddb_ms = args.ledger_latency * 1000
    print(
        f"latency per AWS call {args.latency * 1000:.0f} ms (broker's DynamoDB calls {ddb_ms:.0f} ms); "
        f"rules' compaction: {', '.join(compaction) if compaction else 'none (--exact)'}"
    )
    print(f"{'':28}{'wall s':>10}{'AWS calls':>11}")
    print(f"{'broker (one request)':28}{contender['wall_s']:>10.2f}{contender['aws_calls']:>11}")
    print(f"{'baseline (script)':28}{baseline['wall_s']:>10.2f}{baseline['aws_calls']:>11}")
    print(f"speedup: {speedup:.1f}x")
    print(
        f"broker calls {contender['aws_calls']} vs lower bound {contender['lower_bound']}: "
        f"{over * 100:+.1f}% (counted: {out['counted']})"
    )
    print(f"broker calls by operation: {contender['calls']}")
    print(
        f"broker's own DynamoDB calls (ledger, nonce, leases, references; not counted, in its wall time): "
        f"{contender['ledger_calls']}"
    )
    print(f"outcomes: {contender['decisions']}")
    for failed in contender["failed_reasons"].values():
        print(f"  failed x{failed['count']}, e.g.: {failed['example']}")


if __name__ == "__main__":
    main()
