"""The closed list of command groups; each module owns one."""

from __future__ import annotations

import importlib

import click

# module path, attribute: one line per command (group)
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("deploy_helper.cli.demo", "demo"),
    ("deploy_helper.cli.request", "request_command"),
    ("deploy_helper.cli.ledger", "ledger"),
    ("deploy_helper.cli.keys", "keys"),
    ("deploy_helper.cli.policies", "policies"),
    ("deploy_helper.cli.bootstrap", "bootstrap"),
    ("deploy_helper.cli.local", "local"),
    ("deploy_helper.cli.drift", "drift"),
    ("deploy_helper.cli.drift", "reconcile"),
    ("deploy_helper.cli.report", "report"),
    ("deploy_helper.cli.kinds", "kinds"),
)


def all_commands() -> list[click.Command]:
    return [getattr(importlib.import_module(mod), attr) for mod, attr in _COMMANDS]
