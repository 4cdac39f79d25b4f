"""What each registered grant kind is, for people and tools (``deploy-helper kinds``).

Generated from the registry alone -- the same class attributes the rules, the
bootstrap role and the tests read -- so it cannot drift from the code. The README's
table of kinds is :func:`markdown_table`'s output, and a test keeps them equal.
"""

from __future__ import annotations

import inspect
from typing import Any

from deploy_helper.grants import REGISTRY, GrantKind


def mechanism(kind: GrantKind[Any]) -> str:
    """The first line of the kind's class docstring (what it changes, with which calls)."""
    return (inspect.getdoc(type(kind)) or "").splitlines()[0].replace("``", "`")


def describe(kind: GrantKind[Any]) -> dict[str, Any]:
    """One kind as plain data (the ``--json`` form)."""
    return {
        "kind": kind.kind,
        "service": kind.service,
        "mechanism": mechanism(kind),
        "access_levels": {level: list(actions) for level, actions in kind.access_levels.items()},
        "operations": list(kind.operation_names),
        "principals": sorted(kind.principal_forms),
        "permissions": list(kind.permissions),
        "size_limit": kind.size_limit,
        "statement_limit": getattr(kind, "statement_limit", None),
        "compactions": list(kind.compactions),
        "example": kind.example,
    }


def describe_all() -> list[dict[str, Any]]:
    """Every registered kind, in registration order."""
    return [describe(kind) for kind in REGISTRY.values()]


def _levels(entry: dict[str, Any]) -> str:
    if entry["access_levels"]:
        return ", ".join(f"`{level}`" for level in entry["access_levels"])
    if entry["operations"]:
        return "operations: " + ", ".join(f"`{op}`" for op in entry["operations"])
    return "—"


def _limit(entry: dict[str, Any]) -> str:
    parts = []
    if entry["size_limit"]:
        parts.append(f"{entry['size_limit']:,} bytes")
    if entry["statement_limit"]:
        parts.append(f"{entry['statement_limit']} statements")
    return ", ".join(parts) or "—"


def markdown_table() -> str:
    """The README's table of kinds."""
    lines = [
        "| kind | AWS mechanism | access levels | size limit | broker role permissions |",
        "| --- | --- | --- | --- | --- |",
    ]
    for entry in describe_all():
        permissions = ", ".join(f"`{p}`" for p in entry["permissions"])
        lines.append(
            f"| `{entry['kind']}` | {entry['mechanism']} | {_levels(entry)} | {_limit(entry)} | {permissions} |"
        )
    return "\n".join(lines)
