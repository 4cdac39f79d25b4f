"""``deploy-helper report --html FILE``: the auditor's picture."""

from __future__ import annotations

import click


@click.command("report")
def report() -> None:
    """(being built)"""
