"""Structured logs and metrics of the function: one JSON line per log record, EMF metrics.

The template sets the function's ``LoggingConfig`` to ``LogFormat: JSON``: Lambda's
runtime writes every log record as one JSON object with its level, message, logger
and ``requestId``, plus every extra attribute of the record. ``InvocationFilter``
``InvocationFilter`` adds the invocation's request id, AWS request id and caller to every log
record (one invocation at a time runs in an execution environment, so a module-level
value is shared correctly with the broker's worker threads), each worker thread's
records also carry the target account and resource it works on, and the
handler logs one line per grant with its target account, grant id, kind and decision.

Metrics use CloudWatch's embedded metric format (EMF): one JSON line on stdout per
(caller, kind) with the counts of ``Applied``, ``Denied`` and ``Failed`` grants, in
the namespace ``DEPLOY_HELPER_METRICS_NAMESPACE``, when running in Lambda; each is published with the
dimensions (Caller, Kind) and without dimensions, which the template's alarms watch.
A refused request counts as ``Denied`` with caller ``unauthenticated`` and kind
``request``: nothing a request claims becomes a dimension before it is authenticated.
A custom-resource event answered FAILED counts as ``Failed`` for ``custom-resource``
(its grant and reason are in the ledger and the stack's events).

Standard library only. Powertools for AWS Lambda would do the same; its import
(``Logger`` and ``Metrics``, v3.37) measured 25 ms warm, and it adds a dependency for
what Lambda's JSON log format and the EMF shape already give.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from typing import Any, TextIO

DECISION_METRICS = {"applied": "Applied", "denied": "Denied", "failed": "Failed"}
UNAUTHENTICATED = "unauthenticated"

_invocation: dict[str, str] = {}
#: Per worker thread: the target account (and resource) the thread works on.
_thread = threading.local()


class InvocationFilter(logging.Filter):
    """Adds the invocation's values, and the worker thread's, to each record a handler writes.

    A handler's filter rather than a record factory: it runs after ``extra`` is applied, so
    a value a log call gives explicitly (a grant's own ``account``) is kept, never refused.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in {**_invocation, **getattr(_thread, "values", {})}.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


_FILTER = InvocationFilter()


def install() -> None:
    """Put the filter on every handler of the root logger (Lambda's runtime installs one)."""
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def begin(aws_request_id: str | None) -> None:
    """A new invocation: forget the previous one's values (and filter handlers added since)."""
    install()
    _invocation.clear()
    _thread.values = {}
    if aws_request_id:
        _invocation["aws_request_id"] = aws_request_id


def bind(**values: str | None) -> None:
    """Add values (``request_id``, ``caller``) to every following record of this invocation."""
    _invocation.update({k: v for k, v in values.items() if v})


def bind_thread(**values: str | None) -> None:
    """Values (``account``, ``resource``) for the records of this worker thread, replacing its previous ones."""
    _thread.values = {k: v for k, v in values.items() if v}


def record_grants(logger: logging.Logger, answer: dict[str, Any]) -> None:
    """One log line per grant result of a broker answer, with its account and grant id."""
    bind(request_id=answer.get("request_id"), caller=answer.get("caller"))
    for result in answer.get("results") or []:
        logger.info(
            "grant %s",
            result.get("decision"),
            extra={
                "account": result.get("account"),
                "grant_id": result.get("grant_id"),
                "kind": result.get("kind"),
                "decision": result.get("decision"),
                "rule_id": result.get("rule_id"),
            },
        )


def metric_counts(answer: dict[str, Any]) -> dict[tuple[str, str], Counter[str]]:
    """``{(caller, kind): Counter(Applied=…, Denied=…, Failed=…)}`` of a broker answer."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    results = answer.get("results")
    if "status" in answer and "sent" in answer:  # a custom-resource summary: the stack's deploy failed
        if answer.get("status") == "FAILED":
            counts[("custom-resource", "custom-resource")] = Counter(Failed=1)
        return counts
    if not answer.get("ok", True) and not results:
        code = (answer.get("error") or {}).get("code")
        counts[(UNAUTHENTICATED, "request")] = Counter(Failed=1) if code == "misconfigured" else Counter(Denied=1)
        return counts
    caller = str(answer.get("caller") or UNAUTHENTICATED)
    for result in results or []:
        metric = DECISION_METRICS.get(str(result.get("decision")))
        if metric:
            counts.setdefault((caller, str(result.get("kind"))), Counter())[metric] += 1
    return counts


def emit_metrics(answer: dict[str, Any], stream: TextIO | None = None) -> int:
    """Write the EMF lines of a broker answer; returns how many were written."""
    namespace = os.environ.get("DEPLOY_HELPER_METRICS_NAMESPACE")
    if not namespace or not os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        return 0  # only in Lambda: the CLI's in-process broker must not write metrics to stdout
    out = stream or sys.stdout
    written = 0
    for (caller, kind), counter in metric_counts(answer).items():
        line = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": namespace,
                        "Dimensions": [["Caller", "Kind"], []],
                        "Metrics": [{"Name": name, "Unit": "Count"} for name in DECISION_METRICS.values()],
                    }
                ],
            },
            "Caller": caller,
            "Kind": kind,
            **{name: counter.get(name, 0) for name in DECISION_METRICS.values()},
        }
        out.write(json.dumps(line, separators=(",", ":")) + "\n")
        written += 1
    out.flush()
    return written
