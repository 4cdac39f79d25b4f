"""``deploy-helper drift`` and ``deploy-helper reconcile``: is what the ledger says still true in AWS?

Both run with the broker's own configuration (the DEPLOY_HELPER_* variables
that ``local env`` prints, or the function's) and credentials that may assume the
broker role in the target accounts; ``drift --last`` only reads the newest report
of the scheduled drift check.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from deploy_helper.cli.output import echo, emit_json, failure, json_option, short, table, text
from deploy_helper.grants import REGISTRY

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.audit.drift import DriftReport
    from deploy_helper.execution.broker import Broker

STATUS_STYLE = {
    "in-force": "green",
    "missing": "red",
    "altered": "red",
    "unknown-managed": "yellow",
    "foreign": "cyan",
    "reconciled": "green",
    "would-reconcile": "yellow",
    "denied": "red",
    "failed": "red",
}


def _filters(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--account", help="Only this target account (12 digits)."),
            click.option("--kind", type=click.Choice(sorted(REGISTRY)), help="Only grants of this kind."),
            click.option("--resource", help="Only resources whose ARN contains this text."),
        ]
    ):
        func = option(func)
    return func


def _table(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--table",
        "ledger_table",
        envvar="DEPLOY_HELPER_LEDGER_TABLE",
        required=True,
        help="Ledger table (env DEPLOY_HELPER_LEDGER_TABLE); the rest of the broker's configuration "
        "comes from its DEPLOY_HELPER_* variables, as `deploy-helper local env` prints them.",
    )(func)


def broker_for(table: str) -> Broker:
    """The broker's pieces (sessions, references, locks, rules, ledger) as its variables configure them.

    Drift and reconcile sign nothing and accept no request: a missing audience or nonce
    table (which only requests need) is no error here.
    """
    import dataclasses
    import os

    from deploy_helper.cli.errors import aws_session, region_from_env
    from deploy_helper.config import BrokerConfig
    from deploy_helper.execution.broker import Broker

    env = dict(os.environ)
    env.setdefault("DEPLOY_HELPER_AUDIENCE", "deploy-helper:audit")
    env.setdefault("DEPLOY_HELPER_NONCE_TABLE", "unused-by-drift")
    config = BrokerConfig.from_env(env)
    config = dataclasses.replace(config, ledger_table=table, region=region_from_env() or config.region)
    return Broker.from_config(config, session=aws_session())


def print_report(report: DriftReport) -> None:
    rows = [
        [
            text(f.status, STATUS_STYLE.get(f.status, "")),
            f.account,
            f.kind,
            short(f.resource),
            f.grant_id,
            short(f.principal),
            f.expires_at or "",
            f.detail,
        ]
        for f in report.findings
    ]
    table(
        f"drift at {report.time}: {report.reads} resources read",
        ("status", "account", "kind", "resource", "grant id", "principal", "expires", "detail"),
        rows,
        page=True,
    )
    for error in report.errors:
        echo(f"unknown: account {error.account} {error.resource or ''}: {error.message}")
    counts = ", ".join(f"{n} {name}" for name, n in report.counts().items())
    echo(f"{'in force' if report.clean else 'DRIFT'}: {counts}; {len(report.errors)} unreadable")


EPILOG = """
\b
Classes: in-force; missing (removed outside the broker); altered (managed
statement with other content); unknown-managed (the broker's prefix, but no
active grant explains it); foreign (not the broker's, grants to the same
principal: informational only).

\b
Exit status: 0 when every active grant is in force (foreign statements are
reported, not counted); 1 when anything is missing, altered, unknown-managed or
could not be read.

\b
Examples:
  deploy-helper drift                          # every account, a table; progress on stderr
  deploy-helper drift --account 222222222222 --kind lambda-invoke --json
  deploy-helper drift --last                   # the newest scheduled check's report
"""


@click.command("drift", epilog=EPILOG)
@_table
@_filters
@click.option("--last", is_flag=True, help="Show the newest report of the scheduled drift check instead.")
@click.option(
    "--bucket",
    envvar="DEPLOY_HELPER_DRIFT_BUCKET",
    help="Where the scheduled check keeps its reports (env DEPLOY_HELPER_DRIFT_BUCKET; default the checkpoint bucket).",
)
@json_option
def drift(
    ledger_table: str,
    account: str | None,
    kind: str | None,
    resource: str | None,
    last: bool,
    bucket: str | None,
    as_json: bool,
) -> None:
    """Read every resource the ledger has grants on (once each) and classify what is there (read-only)."""
    from deploy_helper.audit.drift import DriftChecker, Filters

    if last:
        report = _last(bucket)
        wanted = Filters(account, kind, resource)
        report.findings = [f for f in report.findings if wanted.admit((f.account, f.kind, f.resource, None))]
    else:
        broker = broker_for(ledger_table)

        def progress(acct: str, done: int, total: int, drifted: int) -> None:
            note = f", {drifted} drifted or unreadable" if drifted else ""
            echo(f"[{done}/{total}] account {acct} checked{note}", err=True)

        checker = DriftChecker(broker.sessions, broker.references, clock=broker.clock)
        report = checker.check(broker.ledger, Filters(account, kind, resource), progress=progress)
    if as_json:
        emit_json(report.as_dict())
    else:
        print_report(report)
    sys.exit(0 if report.clean else 1)


def _last(bucket: str | None) -> DriftReport:
    import os

    from deploy_helper.audit.scheduled import DriftReports
    from deploy_helper.cli.errors import aws_session

    bucket = bucket or os.environ.get("DEPLOY_HELPER_CHECKPOINT_BUCKET")
    if not bucket:
        raise click.UsageError("give --bucket (or DEPLOY_HELPER_DRIFT_BUCKET) to read the newest drift report")
    report = DriftReports(aws_session().client("s3"), bucket).latest()
    if report is None:
        raise failure(f"no drift report in s3://{bucket} yet: the scheduled drift check has not run")
    return report


@click.command(
    "reconcile",
    epilog="""
\b
Exit status: 0 when every drift was repaired (or would be, with --plan); 1 when a
grant was not restored (denied by the current rules, too large, or failed).

\b
Examples:
  deploy-helper reconcile --plan               # what would be repaired; nothing changes
  deploy-helper reconcile --apply --resource dh-artifacts-111111111111
""",
)
@_table
@_filters
@click.option("--plan", "mode", flag_value="plan", help="Only say what would be repaired (nothing changes).")
@click.option("--apply", "mode", flag_value="apply", help="Repair: restore missing/altered, remove unknown-managed.")
@json_option
def reconcile(
    ledger_table: str, account: str | None, kind: str | None, resource: str | None, mode: str | None, as_json: bool
) -> None:
    """Make AWS match the ledger again, under the broker's locks, rules and size limits.

    Missing and altered grants are applied again if the current rules still allow
    them (otherwise reported, not restored); statements and grants that carry the
    broker's prefix but that no active grant explains are removed; foreign
    statements are never touched. Every change is a ledger entry with decision
    `reconciled` that names the drift it repaired.
    """
    from deploy_helper.audit.drift import Filters
    from deploy_helper.audit.repair import Repairer

    if mode is None:
        raise click.UsageError("give --plan or --apply")
    from deploy_helper.audit.drift import DriftChecker

    broker = broker_for(ledger_table)
    filters = Filters(account, kind, resource)
    # A read-only check first; only the resources it finds drifted are leased and repaired.
    checker = DriftChecker(broker.sessions, broker.references, clock=broker.clock)
    found = checker.check(broker.ledger, filters)
    assert checker.view is not None
    drifted = {(f.account, f.kind, f.resource) for f in found.drifted}
    results = Repairer(broker).reconcile(checker.view, filters, apply=mode == "apply", only=drifted)
    if as_json:
        emit_json([r.as_dict() for r in results])
    else:
        table(
            f"reconcile ({'plan only' if mode == 'plan' else 'applied'}): {len(results)} repairs",
            ("decision", "drift", "account", "kind", "resource", "grant id", "reason", "entry"),
            [
                [
                    text(r.decision, STATUS_STYLE.get(r.decision, "")),
                    r.drift,
                    r.account,
                    r.kind,
                    short(r.resource),
                    r.grant_id,
                    r.reason,
                    r.ledger_entry,
                ]
                for r in results
            ],
        )
    for error in found.errors:
        echo(f"not checked: account {error.account} {error.resource or ''}: {error.message}", err=True)
    ok = all(r.decision in ("reconciled", "would-reconcile") for r in results) and not found.errors
    sys.exit(0 if ok else 1)
