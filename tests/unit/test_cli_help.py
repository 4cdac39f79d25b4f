"""Every command and subcommand teaches by example in its --help (the click tree is walked)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
import pytest
from click.testing import CliRunner

from deploy_helper.cli import main

if TYPE_CHECKING:
    from collections.abc import Iterator


def every_command(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from every_command(sub, (*path, name))


@pytest.mark.parametrize("path", list(every_command(main)), ids=lambda p: " ".join(p) or "deploy-helper")
def test_help_has_an_example_of_the_command_itself(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "Examples:" in result.output
    invocation = " ".join(("deploy-helper", *path))
    examples = result.output.split("Examples:", 1)[1]
    assert any(line.strip().startswith(invocation) or f" {invocation}" in line for line in examples.splitlines())
