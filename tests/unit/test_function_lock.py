"""function/requirements.txt: pyproject's dependencies that the function needs, pinned."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.requirements import Requirement

if TYPE_CHECKING:
    from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("function_build", ROOT / "function" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_runtime_dependency_is_pinned_within_pyproject_s_range() -> None:
    build = _build()
    pins = build.read_lock()
    wanted = [Requirement(r) for r in build.function_requirements()]
    assert {build.canonical(r.name) for r in wanted} == {"pydantic", "pyyaml", "cryptography", "rfc8785"}
    for requirement in wanted:
        assert requirement.specifier.contains(pins[build.canonical(requirement.name)]), requirement
    assert all(re.fullmatch(r"\d+(\.\d+)*", version) for version in pins.values())
    assert not {"boto3", "botocore", "click", "rich", "moto"} & set(pins)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_cli_imports_the_cli_only_dependencies() -> None:
    """click and rich stay out of the function: no shipped module imports them, even lazily."""
    build = _build()
    shipped = [
        p
        for p in (ROOT / "deploy_helper").rglob("*.py")
        if p.relative_to(ROOT / "deploy_helper").parts[0] not in build.EXCLUDED
    ]
    assert shipped
    offenders = {str(p.relative_to(ROOT)): _imports(p) & build.CLI_ONLY for p in shipped}
    assert {k: v for k, v in offenders.items() if v} == {}
