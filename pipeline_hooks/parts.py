"""Splitting a large set of grants into parts that each fit one signed request.

One request carries at most ``MAX_GRANTS`` grants (``deploy_helper.models``) and its
signed text at most ``MAX_ENVELOPE_BYTES``; a Lambda function is invoked synchronously
with at most 6 MB. ``plan_parts`` cuts a list of grants into parts within both limits,
deterministically (the same grants and limits give the same parts, so a split request
sent again reaches the broker as the same parts), and keeps together what the broker
can then do once per request:

- a target account's grants stay in one part where they fit (one AssumeRole per
  account and request);
- otherwise a resource's grants stay in one part (one read of the resource per
  request); only a resource with more grants than a part holds is cut.

Parts are filled first-fit in the order the grants come, and each part lists its
grants' indexes in the original list in ascending order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deploy_helper.models import MAX_ENVELOPE_BYTES, MAX_GRANTS

#: Lambda's limit for a synchronous invocation's request payload.
LAMBDA_PAYLOAD_BYTES = 6 * 1024 * 1024
#: Kept free in each part for the envelope around the grants: the signed header, the
#: request id, context and owner, and the signature. The sealed envelope is measured
#: again before it is sent (``fits``).
ENVELOPE_MARGIN_BYTES = 16 * 1024
#: What one part's grants may take, serialized.
PART_BYTES = MAX_ENVELOPE_BYTES - ENVELOPE_MARGIN_BYTES


@dataclass
class _Unit:
    """Grants that go into one part together (an account's, or a resource's, or a cut of one)."""

    indexes: list[int]
    size: int


@dataclass
class _Part:
    indexes: list[int] = field(default_factory=list)
    size: int = 0


def grant_size(grant: dict[str, Any]) -> int:
    """The bytes a grant takes in the signed text (compact JSON, as canonical JSON writes it), plus a comma."""
    return len(json.dumps(grant, separators=(",", ":"), ensure_ascii=False).encode("utf-8")) + 1


def placement(grant: dict[str, Any]) -> tuple[str, str] | None:
    """The grant's (target account, resource) as the broker groups them; None for a grant it would refuse."""
    from pydantic import ValidationError

    from deploy_helper.grants import REGISTRY

    kind = REGISTRY.get(str(grant.get("kind")))
    if kind is None:
        return None
    try:
        spec = kind.spec.model_validate(grant)
    except (ValidationError, ValueError):
        return None
    return kind.target_account(spec), f"{kind.kind} {kind.resource(spec)} {kind.region(spec)}"


def plan_parts(
    grants: list[dict[str, Any]], *, max_grants: int = MAX_GRANTS, max_bytes: int = PART_BYTES
) -> list[list[int]]:
    """The grants' indexes, cut into parts of at most ``max_grants`` grants and ``max_bytes`` bytes.

    A single grant larger than ``max_bytes`` gets a part of its own (the broker refuses it there).
    """
    if max_grants < 1:
        raise ValueError("max_grants must be at least 1")
    sizes = [grant_size(g) for g in grants]
    if len(grants) <= max_grants and sum(sizes) <= max_bytes:
        return [list(range(len(grants)))] if grants else []
    accounts: dict[str, dict[str, list[int]]] = {}
    for index, grant in enumerate(grants):
        where = placement(grant)
        account, resource = where if where is not None else (f"#{index}", "")
        accounts.setdefault(account, {}).setdefault(resource, []).append(index)
    units: list[_Unit] = []
    for resources in accounts.values():
        whole = [i for indexes in resources.values() for i in indexes]
        size = sum(sizes[i] for i in whole)
        if len(whole) <= max_grants and size <= max_bytes:
            units.append(_Unit(sorted(whole), size))
            continue
        for indexes in resources.values():
            units += _cut(indexes, sizes, max_grants, max_bytes)
    parts: list[_Part] = []
    for unit in units:
        for part in parts:
            if len(part.indexes) + len(unit.indexes) <= max_grants and part.size + unit.size <= max_bytes:
                break
        else:
            part = _Part()
            parts.append(part)
        part.indexes += unit.indexes
        part.size += unit.size
    return sorted((sorted(p.indexes) for p in parts), key=lambda indexes: indexes[0])


def _cut(indexes: list[int], sizes: list[int], max_grants: int, max_bytes: int) -> list[_Unit]:
    """One resource's grants in runs that each fit a part."""
    out: list[_Unit] = []
    current = _Unit([], 0)
    for i in indexes:
        if current.indexes and (len(current.indexes) >= max_grants or current.size + sizes[i] > max_bytes):
            out.append(current)
            current = _Unit([], 0)
        current.indexes.append(i)
        current.size += sizes[i]
    if current.indexes:
        out.append(current)
    return out


def fits(envelope: dict[str, str]) -> bool:
    """Whether a sealed envelope is within the broker's limit and Lambda's invoke payload limit."""
    signed = len(envelope["signed"].encode("utf-8"))
    invoke = len(json.dumps(envelope).encode("utf-8"))
    return signed <= MAX_ENVELOPE_BYTES and invoke <= LAMBDA_PAYLOAD_BYTES - ENVELOPE_MARGIN_BYTES


def part_request_id(base: str, number: int, count: int) -> str:
    """The request id of part ``number`` of ``count``: ``<base>.<number>of<count>`` (64 characters at most).

    A base too long for the suffix is shortened and given a digest of itself, so two
    long ids that share a beginning still give different part ids.
    """
    import hashlib

    suffix = f".{number}of{count}"
    if len(base) + len(suffix) <= 64:
        return base + suffix
    tag = hashlib.sha256(base.encode("utf-8")).hexdigest()[:8]
    return f"{base[: 64 - len(suffix) - len(tag) - 1]}-{tag}{suffix}"
