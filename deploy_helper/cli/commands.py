"""The closed list of command groups; each module owns one."""

from __future__ import annotations

import importlib

import click

# module path, attribute: one line per command (group)
_COMMANDS: tuple[tuple[str, str], ...] = ()


def all_commands() -> list[click.Command]:
    return [getattr(importlib.import_module(mod), attr) for mod, attr in _COMMANDS]
