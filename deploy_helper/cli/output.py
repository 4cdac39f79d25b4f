"""Output helpers shared by the commands: tables for people, JSON for machines.

Whatever a command prints that it did not write itself — ledger entries, a
request's fields, the broker's answers, AWS's messages, the contents of a file —
may come from someone the auditor does not trust, so it is printed as literal
text and only through these helpers:

- ``literal(value)``: the text with every control or format character shown as an
  escape (``\x1b``, ``\r``, ``\u202e``), so an ANSI escape sequence, a carriage
  return that overwrites a line or a bidirectional override never reaches the
  terminal;
- ``text(value, style)``: that text as a rich ``Text``, which rich never reads as
  markup (``[/]``, ``[link=…]``), for tables and styled lines;
- ``echo(value)``: a plain line of it; ``failure(message)``: a ``ClickException`` of it.

The consoles from ``console()`` parse no markup, emoji codes or highlighting at all:
styles are given as ``Text`` styles, never embedded in a string. JSON output
(``emit_json``) escapes control characters as ``\u001b`` and keeps every value exact.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.text import Text

    from deploy_helper.models import BrokerResponse

_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}

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
    "would-fail": "red",
}

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of tables.")


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def literal(value: object) -> str:
    """``value`` as text safe to print: control, format and separator characters escaped visibly.

    Escaped are the characters ``str.isprintable`` rejects (C0/C1 controls and DEL,
    Unicode format characters such as bidirectional overrides and zero-width
    characters, line/paragraph separators, unassigned code points) and spaces other
    than the ASCII space, each as a Python-style escape (``\x1b``, ``\n``, ``\u202e``).
    None prints as "".
    """
    if value is None:
        return ""
    string = value if isinstance(value, str) else str(value)
    if string.isprintable():
        return string
    return "".join(c if c.isprintable() else _escape(c) for c in string)


def literal_lines(value: str) -> str:
    """Several lines of untrusted text: each line as ``literal``, the line breaks kept."""
    return "\n".join(literal(line) for line in value.split("\n"))


def text(value: object, style: str = "") -> Text:
    """``value`` as a rich ``Text``: literal (never markup), control characters escaped."""
    from rich.text import Text

    return Text(literal(value), style=style)


def echo(value: object, *, err: bool = False) -> None:
    """Print one line of untrusted text, literally."""
    click.echo(literal(value), err=err)


def failure(message: object) -> click.ClickException:
    """A ``ClickException`` whose message (which may quote a request or the broker) prints literally."""
    return click.ClickException(literal(message))


def console(stderr: bool = False) -> Any:
    """A rich console that reads no markup, emoji codes or highlighting from strings."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, soft_wrap=False, width=width)


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
    if service in ("ecr", "sqs", "sns", "secretsmanager", "events"):
        return f"{service} {account} {resource}"
    return value


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, page: bool = False) -> None:
    """Print a table; long tables go through a pager when stdout is a terminal."""
    from rich.table import Table

    t = Table(title=text(title) if title is not None else None, show_lines=False, header_style="bold")
    for column in columns:
        t.add_column(text(column), overflow="fold")
    for row in rows:
        t.add_row(*[c if _is_text(c) else text(c) for c in row])
    out = console()
    if page and sys.stdout.isatty() and len(rows) > out.height - 5:
        with out.pager(styles=True):
            out.print(t)
    else:
        out.print(t)


def _is_text(value: object) -> bool:
    from rich.text import Text

    return isinstance(value, Text)


def decision(value: str) -> Text:
    """A decision word in its colour (the word itself printed literally)."""
    return text(value, DECISION_STYLE.get(value, ""))


def print_response(response: BrokerResponse, *, show_diff: bool = False) -> None:
    """The per-grant result of a request, as a table (and diffs for a plan)."""
    from rich.table import Table
    from rich.text import Text

    out = console()
    if response.error is not None:
        out.print(
            Text.assemble(("refused", "red"), " (", text(response.error.code), "): ", text(response.error.message))
        )
        return
    mode = f"{response.action}{' (plan only)' if response.dry_run else ''}"
    t = Table(title=text(f"request {response.request_id} — {mode}"), header_style="bold")
    for column in ("#", "kind", "decision", "account", "target", "principal", "rule", "reason"):
        t.add_column(column, overflow="fold")
    for r in response.results:
        t.add_row(
            text(r.index),
            text(r.kind),
            decision(r.decision),
            text(r.account),
            text(short(r.target)),
            text(short(r.principal)),
            text(r.rule_id),
            text(r.reason),
        )
    out.print(t)
    if show_diff:
        shown: set[str] = set()
        for r in response.results:
            if r.diff and r.target not in shown:
                shown.add(r.target)
                out.print(text(r.target, "bold"))
                out.print(Text(literal_lines(r.diff)))
