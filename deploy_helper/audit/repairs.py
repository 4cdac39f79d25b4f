"""What a repair is, and what the ledger records of it (``deploy_helper.audit.repair``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from deploy_helper.ledger import entries

if TYPE_CHECKING:
    from deploy_helper.grants import GrantSpec

RECONCILER = "deploy-helper:reconcile"
SWEEPER = "deploy-helper:sweeper"


@dataclass
class RepairResult:
    """What was done (or would be done) about one finding."""

    account: str
    kind: str
    resource: str
    grant_id: str | None
    drift: str
    #: ``reconciled`` / ``expired`` (done), ``would-reconcile`` / ``would-expire`` (plan),
    #: ``denied`` (no longer allowed: reported, not restored), ``failed``, ``settled`` (no longer drifted).
    decision: str
    reason: str = ""
    ledger_entry: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RepairItem:
    """One repair on a resource."""

    op: Literal["restore", "remove", "expire"]
    drift: str
    grant_id: str
    spec: GrantSpec | None = None
    active: dict[str, Any] | None = None
    principal: str | None = None
    rule_id: str | None = None
    #: The rule's allowance (compaction, source scope) for a restore, from ``RuleSet.authorize``.
    allowed: Any = None
    #: Shared managed items this grant stands for that grant more than their grants (``GrantKind.excess``):
    #: removed before the grant is applied again.
    purge: tuple[str, ...] = ()


def repair_entry(
    now: float,
    request: dict[str, Any],
    entry_type: str,
    kind_name: str,
    account: str,
    resource: str,
    item: RepairItem,
    decision: str,
    before: str,
    after: str,
    *,
    reason: str | None = None,
) -> dict[str, Any]:
    """The ledger entry of one repair (an unknown-managed item has no spec: its grant names the item)."""
    text = reason or (why(item) if entry_type == "outcome" else f"about to {request['action']}: {why(item)}")
    if item.spec is not None:
        return entries.grant_entry(
            now,
            entry_type,
            request,
            item.spec,
            decision=decision,
            reason=text,
            rule_id=item.rule_id or (item.active or {}).get("rule_id"),
            before=before,
            after=after,
            owners=owners_after(item, decision),
        )
    return {
        "type": entry_type,
        "time": entries.now_iso(now),
        **request,
        "grant": {
            "kind": kind_name,
            "grant_id": item.grant_id,
            "account": account,
            "target": resource,
            "principal": item.principal,
            "spec": None,
        },
        "decision": decision,
        "reason": text,
        "rule_id": None,
        "policy_before": before,
        "policy_after": after,
        "intent": None,
        "compaction": None,
    }


def owners_after(item: RepairItem, decision: str) -> list[str] | None:
    """Reconcile leaves owners as they are; an expiry clears them (unless it failed)."""
    owners = (item.active or {}).get("owners")
    if item.op == "expire" and decision != "failed":
        return []
    return list(owners) if isinstance(owners, list) else None


def request_fields(mode: str, run_id: str) -> dict[str, Any]:
    return {
        "request_id": run_id,
        "caller": RECONCILER if mode == "reconcile" else SWEEPER,
        "key_id": None,
        "authenticated": "internal",
        "request_digest": None,
        "context": {},
        "action": mode,
    }


def why(item: RepairItem) -> str:
    if item.purge:
        return (
            f"restored an altered grant: {', '.join(item.purge)} granted more than its grants, so it was "
            "removed and the grant applied again"
        )
    return {
        "missing": "restored a missing grant (removed outside the broker)",
        "altered": "restored an altered grant (its managed statement/grant had other content)",
        "unknown-managed": f"removed unknown-managed {item.grant_id} (it carried the broker's prefix; "
        "no grant explains it)",
        "expired": f"revoked: expired at {(item.active or {}).get('expires_at')}",
    }.get(item.drift, item.drift)
