"""Reading the ledger for people: filters, and the grants in force now."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from deploy_helper.ledger.store import StoredEntry

DECISIONS = (
    "applied",
    "unchanged",
    "revoked",
    "absent",
    "kept",
    "denied",
    "failed",
    "would-apply",
    "would-revoke",
    "would-fail",
)


@dataclass(frozen=True)
class Filter:
    """Which entries to show; every given field must match."""

    account: str | None = None
    resource: str | None = None
    caller: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    decision: str | None = None

    def matches(self, entry: dict[str, Any]) -> bool:
        grant = entry.get("grant") or {}
        if self.account and self.account not in (grant.get("account"), _principal_account(grant)):
            return False
        if self.resource and self.resource not in (grant.get("target") or ""):
            return False
        if self.caller and entry.get("caller") != self.caller:
            return False
        if self.decision and entry.get("decision") != self.decision:
            return False
        when = parse_time(str(entry.get("time", "")))
        if self.since and (when is None or when < self.since):
            return False
        return not (self.until and (when is None or when > self.until))


def _principal_account(grant: dict[str, Any]) -> str | None:
    principal = str(grant.get("principal") or "")
    parts = principal.split(":")
    if principal.isdigit():
        return principal
    return parts[4] if len(parts) > 4 else None


def parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def select(stored: Iterable[StoredEntry], where: Filter) -> Iterator[dict[str, Any]]:
    for item in stored:
        entry = json.loads(item.body)
        if where.matches(entry):
            yield entry


def active_grants(stored: Iterable[StoredEntry]) -> list[dict[str, Any]]:
    """The grants in force now, derived from the entries.

    A grant is in force when its latest settled entry says it is
    (``applied``/``unchanged`` after an apply); ``revoked``/``absent`` take it
    out. Dry runs, denials, failures and intents do not change what is in force.
    """
    state: dict[tuple[str, str], dict[str, Any]] = {}
    for item in stored:
        entry = json.loads(item.body)
        grant = entry.get("grant")
        if not grant or entry.get("type") == "intent":
            continue
        key = (str(grant.get("grant_id")), str(grant.get("target")))
        decision = entry.get("decision")
        action = str(entry.get("action") or "")
        if "dry run" in action:
            continue
        if decision in ("applied", "unchanged") and action.startswith("apply"):
            first = state.get(key, {}).get("since", entry.get("time"))
            state[key] = {
                "grant_id": grant.get("grant_id"),
                "kind": grant.get("kind"),
                "account": grant.get("account"),
                "target": grant.get("target"),
                "principal": grant.get("principal"),
                "since": first if key in state else entry.get("time"),
                "last_confirmed": entry.get("time"),
                "caller": entry.get("caller"),
                "rule_id": entry.get("rule_id"),
                "entry": entry.get("seq"),
            }
        elif decision in ("revoked", "absent"):
            state.pop(key, None)
    return sorted(state.values(), key=lambda g: (str(g["account"]), str(g["target"]), str(g["principal"])))
