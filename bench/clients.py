"""The broker's CPU: its target-account clients, and one 500-grant request, before and after.

Two figures, from one run:

1. The target-client path, N accounts x 2 requests: each request gets a client of
   ``s3``, ``lambda`` and ``kms`` in each account and makes one call with each (answered
   in-process by a ``before-send`` stub, so signing and parsing are counted, no server).
   - plain: what the broker did before ``deploy_helper.execution.clients`` -- a new client
     per account, service and request (``ClientPool(share=False)``);
   - shared: one client per service and region for every account, each request's calls
     signed with its own credentials (``ClientPool()``).
   CPU seconds (this process), wall seconds and garbage collections (all generations).

2. The broker's own CPU for one request of 500 grants over 100 accounts (the
   ``bench/batch.py`` scenario, no added latency; the local AWS runs in its own process,
   so this process's CPU is the broker's and its client's), on a freshly built broker,
   then a second request on the same broker (the same grants: all unchanged).
   ``--reference REV`` runs the same measure in a subprocess on the code of git revision
   ``REV`` (exported to a temporary directory; e.g. the commit before ``ClientPool``) and
   prints both, with the ratio.

    python bench/clients.py [--accounts 100] [--services 100] [--reference REV] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("s3", "lambda", "kms")
#: One cheap read per service, answered by the stub.
READS = {
    "s3": ("get_bucket_policy", {"Bucket": "dh-bench"}),
    "lambda": ("get_policy", {"FunctionName": "bench"}),
    "kms": ("list_grants", {"KeyId": "alias/bench"}),
}
STUB_BODY = {"s3": b"{}", "lambda": b'{"Policy": "{}"}', "kms": b'{"Grants": []}'}


def _collections() -> int:
    return sum(s["collections"] for s in gc.get_stats())


def _stub(service: str) -> Any:
    """Answers every call of ``service`` in-process: the client does all its work but the network."""
    from botocore.awsrequest import AWSResponse

    body = STUB_BODY[service]
    headers = {"Content-Type": "application/xml" if service == "s3" else "application/json"}

    class Raw:
        def stream(self, **_: Any) -> Any:
            yield body

    def answer(request: Any, **_: Any) -> Any:
        response = AWSResponse(request.url, 200, headers, Raw())  # type: ignore[no-untyped-call]
        response._content = body
        return response

    return answer


def client_path(accounts: int, share: bool) -> dict[str, Any]:
    """N accounts x 2 requests through a ClientPool; one call per client."""
    import boto3

    from deploy_helper.execution.broker import TARGET_CLIENT_CONFIG
    from deploy_helper.execution.clients import ClientPool

    session = boto3.Session(region_name="us-east-1")
    for service in SERVICES:
        session.events.register(f"before-send.{service}", _stub(service))
    # The service models are loaded once per session either way: not part of the path.
    for service in SERVICES:
        session.client(service, aws_access_key_id="x", aws_secret_access_key="x")  # noqa: S106
    pool = ClientPool(session, TARGET_CLIENT_CONFIG, share=share)
    gc.collect()
    before_gc, cpu0, wall0 = _collections(), time.process_time(), time.perf_counter()
    for request in range(2):
        for n in range(accounts):
            account = f"{500000000000 + n}"
            role = f"arn:aws:iam::{account}:role/deploy-helper-broker"
            credentials = {"AccessKeyId": f"AKIA{request}{n:08d}", "SecretAccessKey": "s", "SessionToken": "t"}
            for service in SERVICES:
                client = pool.client(role, account, service, "us-east-1", credentials)
                operation, params = READS[service]
                getattr(client, operation)(**params)
    return {
        "cpu_s": round(time.process_time() - cpu0, 3),
        "wall_s": round(time.perf_counter() - wall0, 3),
        "gc_collections": _collections() - before_gc,
        "clients_built": pool.built,
    }


def broker_cpu(services: int) -> dict[str, Any]:
    """CPU of one fresh broker's 500-grant request, then of a second request on it."""
    sys.path.insert(0, str(ROOT / "bench"))
    from deploy_helper.execution.broker import Broker
    from deploy_helper.local import scenario as seed
    from deploy_helper.local.server import LocalAws

    out: dict[str, Any] = {}
    with LocalAws() as local, tempfile.TemporaryDirectory() as tmp:
        sc = seed.build_scaled(local, Path(tmp), services, compaction=["merge-principals", "widen-source-arn"])
        if hasattr(sc, "scaled_grants"):
            grants = sc.scaled_grants(5 * services)
        else:  # an older tree (the reference run): the same 5 grants per service
            grants = []
            for s in sc.services:
                grants += [sc.authorizer_grant(s), sc.bucket_grant(s), sc.key_grant(s)]
                grants += [sc.service_bucket_grant(s, role) for role in seed.TOOLING_ROLES]
        broker = Broker.from_config(sc.config, session=sc.local.base_session())
        client = sc.client(broker)
        for name in ("first", "second"):
            gc0, cpu0, wall0 = _collections(), time.process_time(), time.perf_counter()
            response = client.request(grants, request_id=f"bench-clients-{name}")
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            decisions: dict[str, int] = {}
            for r in response.results:
                decisions[r.decision] = decisions.get(r.decision, 0) + 1
            out[name] = {
                "grants": len(grants),
                "cpu_s": round(cpu, 3),
                "cpu_ms_per_grant": round(cpu / len(grants) * 1000, 3),
                "wall_s": round(wall, 3),
                "gc_collections": _collections() - gc0,
                "decisions": decisions,
            }
    return out


def reference(rev: str, services: int) -> dict[str, Any]:
    """``broker_cpu`` on the code of git revision ``rev`` (exported to a temporary directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": tmp}
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "clients.py"), "--broker-only", "--services", str(services)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
        )
        if done.returncode:
            raise SystemExit(f"the reference run failed:\n{done.stderr}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=100, help="accounts in the client-path measure")
    parser.add_argument("--services", type=int, default=100, help="service accounts of the 500-grant request")
    parser.add_argument("--reference", help="git revision whose broker is measured beside this one")
    parser.add_argument("--broker-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.broker_only:  # the reference's subprocess: its own code, this measure
        print(json.dumps(broker_cpu(args.services)))
        return

    out: dict[str, Any] = {
        "client_path": {
            "accounts": args.accounts,
            "plain": client_path(args.accounts, share=False),
            "shared": client_path(args.accounts, share=True),
        },
        "broker": broker_cpu(args.services),
    }
    if args.reference:
        out["reference"] = {"rev": args.reference, "broker": reference(args.reference, args.services)}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    path = out["client_path"]
    print(f"target-client path: {args.accounts} accounts x {len(SERVICES)} services x 2 requests, one call each")
    print(f"{'':34}{'CPU s':>8}{'wall s':>8}{'GCs':>6}{'built':>7}")
    for name, label in (("plain", "plain (a client per request)"), ("shared", "shared (ClientPool)")):
        row = path[name]
        print(f"{label:34}{row['cpu_s']:>8.3f}{row['wall_s']:>8.3f}{row['gc_collections']:>6}{row['clients_built']:>7}")
    print(f"shared / plain CPU: {path['shared']['cpu_s'] / path['plain']['cpu_s']:.2f}")
    print()
    rows = [("this code", out["broker"])]
    if args.reference:
        rows.insert(0, (f"reference {args.reference}", out["reference"]["broker"]))
    grants = out["broker"]["first"]["grants"]
    print(f"broker's own CPU, {grants} grants over {args.services} accounts (no added latency)")
    print(f"{'':30}{'request':>8}{'CPU s':>8}{'ms/grant':>9}{'wall s':>8}{'GCs':>6}")
    for label, figures in rows:
        for name in ("first", "second"):
            row = figures[name]
            print(
                f"{label:30}{name:>8}{row['cpu_s']:>8.3f}{row['cpu_ms_per_grant']:>9.3f}"
                f"{row['wall_s']:>8.3f}{row['gc_collections']:>6}"
            )
    if args.reference:
        ref, now = out["reference"]["broker"], out["broker"]
        for name in ("first", "second"):
            print(f"{name} request: CPU this / reference = {now[name]['cpu_s'] / ref[name]['cpu_s']:.2f}")
    print(f"decisions (this code, first request): {out['broker']['first']['decisions']}")


if __name__ == "__main__":
    main()
