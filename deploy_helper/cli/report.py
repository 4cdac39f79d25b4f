"""``deploy-helper report --html FILE``: the auditor's picture of who can reach what."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from deploy_helper.cli.output import echo

if TYPE_CHECKING:
    from deploy_helper.audit.drift import DriftReport


@click.command(
    "report",
    epilog="""
\b
--drift live compares AWS with the ledger now (the broker's configuration and a
role that may assume the broker role are needed, as for `drift`); --drift last
uses the newest report of the scheduled drift check; --drift none leaves drift out.

\b
Examples:
  deploy-helper report --html grants.html
  deploy-helper report --html grants.html --drift live
""",
)
@click.option(
    "--html",
    "html_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write (one self-contained page).",
)
@click.option("--table", envvar="DEPLOY_HELPER_LEDGER_TABLE", required=True, help="Ledger table.")
@click.option("--bucket", envvar="DEPLOY_HELPER_CHECKPOINT_BUCKET", help="Checkpoint bucket.")
@click.option("--checkpoint-key", envvar="DEPLOY_HELPER_CHECKPOINT_KEY", help="kms:<key> or file:<pem>.")
@click.option("--drift", "drift_mode", type=click.Choice(["live", "last", "none"]), default="last", show_default=True)
@click.option("--drift-bucket", envvar="DEPLOY_HELPER_DRIFT_BUCKET", help="Where the scheduled drift reports are.")
def report(
    html_file: Path,
    table: str,
    bucket: str | None,
    checkpoint_key: str | None,
    drift_mode: str,
    drift_bucket: str | None,
) -> None:
    """Write the cross-account graph of active grants, a table per account, and the ledger's status."""
    from deploy_helper.audit.drift import LedgerView
    from deploy_helper.audit.report import ReportData, render
    from deploy_helper.cli.errors import aws_session
    from deploy_helper.ledger.entries import now_iso
    from deploy_helper.ledger.setup import open_ledger
    from deploy_helper.ledger.verify import verify_ledger

    session = aws_session()
    handle = open_ledger(session, table=table, bucket=bucket, checkpoint_key=checkpoint_key)
    stored = list(handle.ledger.entries())
    objects = handle.checkpoints.versions() if handle.checkpoints else None
    keys = [handle.public_key] if handle.public_key else []
    verified = verify_ledger(handle.ledger, keys=keys, objects=objects).as_dict()
    view = LedgerView.of(stored)
    notes: list[str] = []
    drift = _drift(drift_mode, drift_bucket or bucket, view, notes, table)
    newest: dict[str, Any] | None = verified.get("latest_checkpoint")
    now = time.time()
    page = render(
        ReportData(
            time=now_iso(now),
            active=view.active,
            drift=drift,
            verify=verified,
            checkpoint=newest,
            now=now,
            notes=notes,
        )
    )
    html_file.write_text(page, encoding="utf-8")
    echo(f"wrote {html_file}: {len(view.active)} active grants, ledger {'whole' if verified['whole'] else 'NOT whole'}")


def _drift(mode: str, bucket: str | None, view: Any, notes: list[str], table: str) -> DriftReport | None:
    if mode == "none":
        return None
    if mode == "last":
        from deploy_helper.audit.scheduled import DriftReports
        from deploy_helper.cli.errors import aws_session

        if not bucket:
            notes.append("No drift bucket configured: drift is not shown.")
            return None
        try:
            last = DriftReports(aws_session().client("s3"), bucket).latest()
        except Exception as exc:  # the page is still useful without drift
            notes.append(f"The newest drift report could not be read: {exc}")
            return None
        if last is None:
            notes.append("The scheduled drift check has not run yet: drift is not shown.")
        return last
    from deploy_helper.audit.drift import DriftChecker
    from deploy_helper.cli.drift import broker_for

    broker = broker_for(table)
    return DriftChecker(broker.sessions, broker.references, clock=broker.clock).run(view)
