"""Output helpers shared by the commands: tables for people, JSON for machines."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Sequence

    from deploy_helper.models import BrokerResponse

DECISION_STYLE = {
    "applied": "green",
    "revoked": "green",
    "unchanged": "cyan",
    "absent": "cyan",
    "kept": "cyan",
    "would-apply": "yellow",
    "would-revoke": "yellow",
    "denied": "red",
    "failed": "red",
}

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def short(value: str | None) -> str:
    """A readable form of an ARN for tables (the full ARN is in --json and the ledger)."""
    if not value:
        return ""
    parts = value.split(":", 5)
    if len(parts) < 6:
        return value
    service, account, resource = parts[2], parts[4], parts[5]
    if service == "s3":
        return f"s3://{resource}"
    if service == "kms":
        return f"kms {account} {resource[:12]}…"
    if service == "lambda":
        return f"λ {account} {resource.removeprefix('function:')}"
    if service == "iam":
        return f"{account}:{resource}"
    return value


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, page: bool = False) -> None:
    """Print a table; long tables go through a pager when stdout is a terminal."""
    from rich.table import Table

    t = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*[str(c) if c is not None else "" for c in row])
    out = console()
    if page and sys.stdout.isatty() and len(rows) > out.height - 5:
        with out.pager(styles=True):
            out.print(t)
    else:
        out.print(t)


def print_response(response: BrokerResponse, *, show_diff: bool = False) -> None:
    """The per-grant result of a request, as a table (and diffs for a plan)."""
    out = console()
    if response.error is not None:
        out.print(f"[red]refused[/red] ({response.error.code}): {response.error.message}")
        return
    from rich.table import Table

    mode = f"{response.action}{' (plan only)' if response.dry_run else ''}"
    t = Table(title=f"request {response.request_id} — {mode}", header_style="bold")
    for column in ("#", "kind", "decision", "account", "target", "principal", "rule", "reason"):
        t.add_column(column, overflow="fold")
    for r in response.results:
        style = DECISION_STYLE.get(r.decision, "")
        t.add_row(
            str(r.index),
            r.kind,
            f"[{style}]{r.decision}[/{style}]" if style else r.decision,
            r.account,
            short(r.target),
            short(r.principal),
            r.rule_id or "",
            r.reason,
        )
    out.print(t)
    if show_diff:
        shown: set[str] = set()
        for r in response.results:
            if r.diff and r.target not in shown:
                shown.add(r.target)
                out.print(f"[bold]{r.target}[/bold]")
                out.print(r.diff, markup=False)
