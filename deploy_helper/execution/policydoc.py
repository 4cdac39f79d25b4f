"""Resource-policy documents: reading, sizing, digests and readable diffs.

Foreign statements (those the broker did not write) are carried through as
the exact objects AWS returned: the broker only ever adds or removes
statements whose ``Sid`` carries its own prefix.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any

import rfc8785

from deploy_helper import PRODUCT_PREFIX

POLICY_VERSION = "2012-10-17"


def empty_policy() -> dict[str, Any]:
    return {"Version": POLICY_VERSION, "Statement": []}


def load_policy(text: str | None) -> dict[str, Any]:
    """Parse a policy document as AWS returned it; a single statement becomes a list."""
    if not text:
        return empty_policy()
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("resource policy is not a JSON object")
    statements = doc.get("Statement", [])
    if isinstance(statements, dict):
        statements = [statements]
    doc["Statement"] = list(statements)
    return doc


def statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc.get("Statement", []))


def is_managed_sid(sid: object) -> bool:
    return isinstance(sid, str) and sid.startswith(PRODUCT_PREFIX)


def find_statement(doc: dict[str, Any], sid: str) -> dict[str, Any] | None:
    for statement in statements(doc):
        if statement.get("Sid") == sid:
            return statement
    return None


def compact_size(doc: dict[str, Any]) -> int:
    """Size in bytes as AWS counts it: the JSON text without insignificant whitespace."""
    return len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def digest(doc: Any) -> str:
    """SHA-256 of the RFC 8785 canonical form; ``None`` (no policy) has a digest too."""
    return "sha256:" + hashlib.sha256(rfc8785.dumps(doc)).hexdigest()


def pretty(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=True)


def unified_diff(before: Any, after: Any, label: str) -> str:
    """A readable diff of two documents (empty string when equal)."""
    lines = difflib.unified_diff(
        pretty(before).splitlines(),
        pretty(after).splitlines(),
        fromfile=f"{label} (now)",
        tofile=f"{label} (planned)",
        lineterm="",
    )
    return "\n".join(lines)


def normalize_principal(principal: Any) -> frozenset[str]:
    """Both shapes AWS uses for account principals compare equal (bare id and ``:root`` ARN)."""
    values: list[str] = []
    if isinstance(principal, str):
        values = [principal]
    elif isinstance(principal, dict):
        for key, value in principal.items():
            items = value if isinstance(value, list) else [value]
            values.extend(f"{key}:{v}" if key == "Service" else str(v) for v in items)
    out = set()
    for value in values:
        if value.isdigit() and len(value) == 12:
            value = f"arn:aws:iam::{value}:root"
        out.add(value)
    return frozenset(out)
