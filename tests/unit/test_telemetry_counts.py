"""What each kind of answer counts in the EMF metrics (deploy_helper.execution.telemetry.metric_counts)."""

from __future__ import annotations

from collections import Counter

from deploy_helper.execution.telemetry import metric_counts


def test_grant_results_count_per_authenticated_caller_and_kind() -> None:
    answer = {
        "ok": True,
        "caller": "ci-tooling",
        "results": [
            {"kind": "bucket-access", "decision": "applied"},
            {"kind": "bucket-access", "decision": "unchanged"},
            {"kind": "kms-grant", "decision": "failed"},
            {"kind": "kms-grant", "decision": "denied"},
        ],
    }
    assert metric_counts(answer) == {
        ("ci-tooling", "bucket-access"): Counter(Applied=1),
        ("ci-tooling", "kms-grant"): Counter(Failed=1, Denied=1),
    }


def test_a_refusal_counts_without_what_the_request_claims() -> None:
    refused = {"ok": False, "request_id": "r", "error": {"code": "bad-signature", "message": "…"}}
    assert metric_counts(refused) == {("unauthenticated", "request"): Counter(Denied=1)}
    misconfigured = {"ok": False, "error": {"code": "misconfigured", "message": "…"}}
    assert metric_counts(misconfigured) == {("unauthenticated", "request"): Counter(Failed=1)}


def test_custom_resource_answers_count_failed_deploys_only() -> None:
    failed = {"ok": False, "sent": True, "status": "FAILED", "reason": "…"}
    assert metric_counts(failed) == {("custom-resource", "custom-resource"): Counter(Failed=1)}
    assert metric_counts({"ok": True, "sent": True, "status": "SUCCESS"}) == {}
    assert metric_counts({"ok": True, "checkpoint": "c", "size": 3}) == {}  # the heartbeat
