"""What the broker does on its schedules: the drift check and the expiry sweep.

``template.yaml`` sends two constant events from EventBridge schedules:
``{"deploy_helper": "drift-check"}`` and ``{"deploy_helper": "sweep-expired"}``.

Who can send them: Lambda Invoke carries no caller identity, so any principal the
function's resource policy lets invoke it can send the same bytes as the schedule.
Neither event takes a parameter, and both are safe to trigger at any time:

- the drift check only reads (the broker role's read actions), writes the newest
  report (``DriftReports``) and publishes one metric per drift class — an early
  trigger costs one read per resource, nothing more;
- the sweep only ever *removes* grants that the ledger itself says have expired
  at the broker's own clock, and records each as ``expired``; it cannot add,
  restore or extend anything, so an early trigger does what the next scheduled
  run would do anyway.

Nothing that changes what is in force for the better of a caller (``reconcile``)
is reachable by an event: reconcile runs only from the CLI with the broker's
configuration and credentials.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.audit.drift import DRIFT_CLASSES, DriftChecker, DriftReport, LedgerView
from deploy_helper.exceptions import BrokerError, LedgerError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from deploy_helper.execution.broker import Broker
    from deploy_helper.ledger.store import StoredEntry

logger = logging.getLogger(__name__)

DRIFT_CHECK_EVENT = {"deploy_helper": "drift-check"}
SWEEP_EVENT = {"deploy_helper": "sweep-expired"}
METRIC_NAMESPACE = "DeployHelper/Drift"
#: The metric of each drift class (and of resources that could not be read).
METRIC_NAMES = {
    "in-force": "InForce",
    "missing": "Missing",
    "altered": "Altered",
    "unknown-managed": "UnknownManaged",
    "foreign": "Foreign",
    "errors": "ReadErrors",
}
REPORT_PREFIX = "drift-reports/"
LATEST = f"{REPORT_PREFIX}latest.json"


def is_drift_check(event: Any) -> bool:
    return isinstance(event, dict) and event == DRIFT_CHECK_EVENT


def is_sweep(event: Any) -> bool:
    return isinstance(event, dict) and event == SWEEP_EVENT


def stored_entries(ledger: Any, start: int = 1) -> Iterable[StoredEntry]:
    """The entries of the broker's ledger from ``start`` on (DynamoDB, or the in-memory one of unit tests)."""
    if callable(getattr(ledger, "entries", None)):
        return list(ledger.entries(start))
    import rfc8785

    from deploy_helper.ledger.store import StoredEntry, entry_hash

    out = []
    for entry in getattr(ledger, "entries", [])[start - 1 :]:
        body = rfc8785.dumps(entry)
        out.append(StoredEntry(int(entry.get("seq", 0)), body, entry_hash(body)))
    return out


class DriftReports:
    """The newest drift report (and every earlier one, by time) in an S3 bucket."""

    def __init__(self, s3: Any, bucket: str) -> None:
        self._s3 = s3
        self.bucket = bucket

    def save(self, report: DriftReport) -> str:
        body = json.dumps(report.as_dict(), indent=1, default=str).encode()
        stamp = report.time.replace(":", "").replace("-", "")
        key = f"{REPORT_PREFIX}{stamp}.json"
        for name in (key, LATEST):
            self._s3.put_object(Bucket=self.bucket, Key=name, Body=body, ContentType="application/json")
        return key

    def latest(self) -> DriftReport | None:
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=LATEST)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return DriftReport.from_dict(json.loads(body))


def publish_metrics(cloudwatch: Any, report: DriftReport, environment: str) -> None:
    counts = report.counts()
    data = [
        {
            "MetricName": METRIC_NAMES[name],
            "Dimensions": [{"Name": "Environment", "Value": environment}],
            "Value": float(counts[name]),
            "Unit": "Count",
        }
        for name in DRIFT_CLASSES
    ]
    data.append(
        {
            "MetricName": METRIC_NAMES["errors"],
            "Dimensions": [{"Name": "Environment", "Value": environment}],
            "Value": float(len(report.errors)),
            "Unit": "Count",
        }
    )
    cloudwatch.put_metric_data(Namespace=METRIC_NAMESPACE, MetricData=data)


def drift_check(broker: Broker, *, session: Any = None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The scheduled drift check: classify, keep the report, publish the metrics."""
    import os

    import boto3

    env = dict(os.environ) if environ is None else environ
    session = session or boto3.Session()
    try:
        report = DriftChecker(broker.sessions, broker.references, clock=broker.clock).check(broker.ledger)
    except LedgerError as exc:
        return {"ok": False, "error": {"code": exc.code, "message": exc.message}}
    answer: dict[str, Any] = {
        "ok": True,
        "clean": report.clean,
        "counts": report.counts(),
        "errors": len(report.errors),
    }
    bucket = env.get("DEPLOY_HELPER_DRIFT_BUCKET") or broker.config.checkpoint_bucket
    try:
        if bucket:
            answer["report"] = DriftReports(session.client("s3", region_name=broker.config.region), bucket).save(report)
        publish_metrics(
            session.client("cloudwatch", region_name=broker.config.region),
            report,
            env.get("DEPLOY_HELPER_ENVIRONMENT", "default"),
        )
    except (ClientError, BotoCoreError) as exc:
        logger.exception("could not store the drift report or its metrics")
        answer.update(ok=False, error={"code": "drift-report", "message": f"could not store the report: {exc}"})
    return answer


def sweep_expired(broker: Broker) -> dict[str, Any]:
    """The scheduled sweep: revoke every grant whose expiry has passed (ledger decision ``expired``)."""
    from deploy_helper.audit.repair import Repairer

    try:
        results = Repairer(broker).sweep(LedgerView.of(stored_entries(broker.ledger)))
    except BrokerError as exc:
        return {"ok": False, "error": {"code": exc.code, "message": exc.message}}
    return {
        "ok": all(r.decision == "expired" for r in results),
        "expired": sum(1 for r in results if r.decision == "expired"),
        "results": [r.as_dict() for r in results],
    }
