"""The README documents what the code reads: custom-resource properties and the function's variables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy_helper.entry.custom_resource.events import _pascal
from deploy_helper.grants import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _row(kind: str) -> tuple[set[str], set[str]]:
    section = README.split("### Custom-resource properties", 1)[1].split("\n### ", 1)[0]
    line = next(line for line in section.splitlines() if line.startswith(f"| `{kind}` |"))
    _, required, optional = (cell.strip() for cell in line.strip("|").split("|"))
    names = re.compile(r"`([A-Z][A-Za-z]+)`")
    return set(names.findall(required)), set(names.findall(optional))


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_every_custom_resource_property_is_documented(kind: str) -> None:
    fields = {name: f for name, f in REGISTRY[kind].spec.model_fields.items() if name != "kind"}
    required, optional = _row(kind)
    assert {_pascal(n) for n, f in fields.items() if f.is_required()} == required
    assert {_pascal(n) for n, f in fields.items() if not f.is_required()} == optional


def test_every_variable_the_function_reads_is_documented() -> None:
    read = set()
    for module in ("deploy_helper/config.py", "deploy_helper/handler.py"):
        read |= set(re.findall(r"DEPLOY_HELPER_[A-Z_]+", (ROOT / module).read_text()))
    section = README.split("### The function's environment", 1)[1].split("\n### ", 1)[0]
    assert read
    assert read <= set(re.findall(r"DEPLOY_HELPER_[A-Z_]+", section))
    assert "LAMBDA_TASK_ROOT" in section  # where policies/ is loaded from
