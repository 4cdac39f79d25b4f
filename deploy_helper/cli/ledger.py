"""``deploy-helper ledger``: the grant ledger, for auditors."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from deploy_helper.cli.ledger_proof import (
    bundle,
    check_proof,
    ledger_location,
    optional_ledger_options,
    prove,
    pull,
    run_verify,
)
from deploy_helper.cli.output import echo, emit_json, json_option, literal, short, table

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.ledger.setup import LedgerHandle


def _time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time (e.g. 2026-11-21 or 2026-11-21T10:00:00Z)"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


ledger_options = ledger_location(required=True)


def filter_options(func: Callable[..., Any]) -> Callable[..., Any]:
    from deploy_helper.ledger.query import DECISIONS

    for option in reversed(
        [
            click.option("--account", help="Target or principal account id."),
            click.option("--resource", help="Target ARN, or a part of it (a bucket name, a function name)."),
            click.option("--caller", help="Registered caller name."),
            click.option("--since", help="Entries at or after this time (ISO 8601)."),
            click.option("--until", help="Entries at or before this time (ISO 8601)."),
            click.option("--decision", type=click.Choice(DECISIONS)),
        ]
    ):
        func = option(func)
    return func


def _filter(**kwargs: Any) -> Any:
    from deploy_helper.ledger.query import Filter

    return Filter(
        account=kwargs.get("account"),
        resource=kwargs.get("resource"),
        caller=kwargs.get("caller"),
        since=_time(kwargs.get("since")),
        until=_time(kwargs.get("until")),
        decision=kwargs.get("decision"),
    )


@click.group("ledger")
def ledger() -> None:
    """The grant ledger: who asked for what, what changed, what was refused — and proof it is whole.

    The ledger's location comes from the same variables as the broker's
    (DEPLOY_HELPER_LEDGER_TABLE, DEPLOY_HELPER_CHECKPOINT_BUCKET,
    DEPLOY_HELPER_CHECKPOINT_KEY) or from the options of each command.
    """


def _row(e: dict[str, Any], *, full: bool = False) -> list[Any]:
    """A table row (ARNs shortened for reading) or, with ``full``, an export row (ARNs whole)."""
    g = e.get("grant") or {}
    shown = (lambda value: value or "") if full else short
    return [
        e.get("seq"),
        e.get("time"),
        e.get("type"),
        e.get("decision"),
        e.get("caller"),
        g.get("kind"),
        g.get("account"),
        shown(g.get("target")),
        shown(g.get("principal")),
        e.get("rule_id"),
        e.get("reason"),
    ]


COLUMNS = ("id", "time", "type", "decision", "caller", "kind", "account", "target", "principal", "rule", "reason")


@ledger.command("list")
@ledger_options
@filter_options
@json_option
def list_entries(handle: LedgerHandle, as_json: bool, **filters: Any) -> None:
    """Entries matching the filters, oldest first."""
    from deploy_helper.ledger.query import select

    found = list(select(handle.ledger.entries(), _filter(**filters)))
    if as_json:
        emit_json(found)
    else:
        table(f"{len(found)} ledger entries", COLUMNS, [_row(e) for e in found], page=True)


@ledger.command("show")
@click.argument("entry_id", type=int)
@ledger_options
def show(handle: LedgerHandle, entry_id: int) -> None:
    """One entry, whole, with its stored hash."""
    stored = handle.ledger.get(entry_id)
    if stored is None:
        raise click.ClickException(f"there is no entry {entry_id} (the ledger holds {handle.ledger.head()[0]})")
    emit_json({"hash": stored.hash, "entry": stored.entry})


@ledger.command("export")
@ledger_options
@filter_options
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default: stdout)."
)
def export(handle: LedgerHandle, fmt: str, output: Path | None, **filters: Any) -> None:
    """Entries as JSON Lines (exact stored fields) or CSV (one row per entry).

    In CSV, control characters in a value are written as escapes (\\x1b, \\n): the
    rows stay safe to view; JSON Lines keeps every value exact.
    """
    from deploy_helper.ledger.query import select

    found = select(handle.ledger.entries(), _filter(**filters))
    first = next(found, None)  # reading fails here, before anything is written
    out = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    count = 0
    try:
        writer = csv.writer(out) if fmt == "csv" else None
        if writer:
            writer.writerow(
                [
                    *COLUMNS,
                    "request_id",
                    "key_id",
                    "pipeline",
                    "commit",
                    "stack_id",
                    "policy_before",
                    "policy_after",
                    "intent",
                    "prev",
                ]
            )
        for e in itertools.chain([first] if first is not None else [], found):
            count += 1
            if writer is None:
                out.write(json.dumps(e, sort_keys=True) + "\n")
            else:
                ctx = e.get("context") or {}
                writer.writerow(
                    literal(cell)
                    for cell in [
                        *_row(e, full=True),
                        e.get("request_id"),
                        e.get("key_id"),
                        ctx.get("pipeline"),
                        ctx.get("commit"),
                        ctx.get("stack_id"),
                        e.get("policy_before"),
                        e.get("policy_after"),
                        e.get("intent"),
                        e.get("prev"),
                    ]
                )
    finally:
        if output:
            out.close()
    if output:
        click.echo(f"wrote {count} entries to {output}", err=True)


@ledger.command(
    "verify",
    epilog="""
\b
Exit status: 0 when the ledger is whole; 1 when an entry or checkpoint is
broken (the first broken place is named) or an intent has no outcome.
""",
)
@optional_ledger_options
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your own copy of the checkpoint public key (PEM).",
)
@click.option(
    "--legacy-public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The key of legacy JSON checkpoints, if not the checkpointer's (PEM; env DEPLOY_HELPER_LEGACY_CHECKPOINT_KEY "
    "as kms:<key> or file:<pem>). It never verifies a signed-note checkpoint.",
)
@click.option(
    "--checkpoints-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also verify against legacy JSON checkpoints you kept.",
)
@click.option(
    "--since",
    type=click.Path(exists=True, path_type=Path),
    help="Checkpoints you kept (a signed-note file, or a directory of them, e.g. from `ledger pull`): "
    "prove the stored ones are the same and the newest is consistent with each.",
)
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Verify an audit bundle (ledger bundle --out) offline, with no AWS access.",
)
@click.option(
    "--max-age",
    type=click.IntRange(min=0),
    help="Seconds the newest checkpoint may be old (default: twice its heartbeat plus 5 minutes).",
)
@json_option
def verify(handle: LedgerHandle | None, as_json: bool, **options: Any) -> None:
    """Prove that no entry was removed, altered or reordered, and no checkpoint is missing or replaced."""
    run_verify(handle, as_json=as_json, **options)


@ledger.command("active")
@ledger_options
@filter_options
@json_option
def active(handle: LedgerHandle, as_json: bool, **filters: Any) -> None:
    """The grants in force now, derived from the entries."""
    from deploy_helper.ledger.query import active_grants

    where = _filter(**filters)
    grants = [
        g
        for g in active_grants(handle.ledger.entries())
        if where.matches({"grant": g, "caller": g["caller"], "time": g["last_confirmed"]})
    ]
    if as_json:
        emit_json(grants)
    else:
        table(
            f"{len(grants)} grants in force",
            ("kind", "account", "target", "principal", "since", "expires", "caller", "rule", "entry"),
            [
                [
                    g["kind"],
                    g["account"],
                    g["target"],
                    g["principal"],
                    g["since"],
                    g.get("expires_at") or "",
                    g["caller"],
                    g["rule_id"],
                    g["entry"],
                ]
                for g in grants
            ],
            page=True,
        )


@ledger.command("checkpoint")
@ledger_options
@json_option
def checkpoint(handle: LedgerHandle, as_json: bool) -> None:
    """Write the next checkpoint now, as the checkpointer does (needs the checkpoint key's Sign permission)."""
    if handle.checkpointer is None:
        raise click.UsageError(
            "give --bucket (or DEPLOY_HELPER_CHECKPOINT_BUCKET) and a --checkpoint-key that can sign "
            "(kms:<key> or file:<private PEM>)"
        )
    written = handle.checkpointer.write()
    statement = written.note
    if as_json:
        emit_json({"checkpoint": statement.number, "size": statement.size, "note": written.raw.decode()})
    else:
        echo(f"checkpoint {statement.number}: {statement.size} entries")


for _command in (prove, check_proof, bundle, pull):
    ledger.add_command(_command)
