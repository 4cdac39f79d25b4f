"""The scheduled drift check and sweep in template.yaml are the events the handler knows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deploy_helper.audit import scheduled
from deploy_helper.trust.stack_template import load_template

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


def resources() -> dict[str, Any]:
    return dict(load_template(TEMPLATE.read_text())["Resources"])


def test_schedules_send_exactly_the_events_the_handler_dispatches() -> None:
    events = resources()["BrokerFunction"]["Properties"]["Events"]
    assert json.loads(events["DriftCheck"]["Properties"]["Input"]) == scheduled.DRIFT_CHECK_EVENT
    assert json.loads(events["ExpirySweep"]["Properties"]["Input"]) == scheduled.SWEEP_EVENT
    assert scheduled.is_drift_check(scheduled.DRIFT_CHECK_EVENT) and scheduled.is_sweep(scheduled.SWEEP_EVENT)


def test_one_alarm_per_drift_class_on_the_metrics_the_check_publishes() -> None:
    alarms = {
        r["Properties"]["MetricName"]
        for r in resources().values()
        if isinstance(r, dict)
        and r.get("Type") == "AWS::CloudWatch::Alarm"
        and r["Properties"].get("Namespace") == scheduled.METRIC_NAMESPACE
    }
    names = scheduled.METRIC_NAMES
    assert alarms == {names["missing"], names["altered"], names["unknown-managed"], names["errors"]}


def test_the_drift_policy_writes_reports_and_its_own_metrics_only() -> None:
    policy = resources()["DriftCheckPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    by_sid = {s["Sid"]: s for s in policy}
    assert by_sid["KeepDriftReports"]["Action"] == ["s3:PutObject", "s3:GetObject"]
    assert scheduled.REPORT_PREFIX in json.dumps(by_sid["KeepDriftReports"]["Resource"])
    condition = by_sid["PublishDriftMetricsOnly"]["Condition"]["StringEquals"]
    assert condition == {"cloudwatch:namespace": scheduled.METRIC_NAMESPACE}
