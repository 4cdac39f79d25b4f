"""What a ledger entry says.

One entry per decision and per change. ``type`` is one of:

- ``refusal`` — a request refused as a whole (malformed, unauthenticated,
  replayed); ``decision`` is ``denied``;
- ``decision`` — a grant settled without a change: ``denied`` by the rules,
  ``unchanged``/``absent`` (already as asked), ``failed`` before any change
  (target role not assumable, policy too large), or a dry-run plan;
- ``intent`` — written *before* a change is sent to AWS;
- ``outcome`` — written after it: ``applied``/``revoked``/``failed``,
  with ``intent`` naming the intent entry it closes.

Grant entries made since owners are kept (``deploy_helper.execution.owners``) also say
who acted — ``owner``, the owner the request acts for — and ``owners``, the
grant's owners after the change (before it, for a failed change); entries
written before owners existed simply lack both.

Secrets never appear here: no signature, no credentials, only the SHA-256 of
the signed request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy_helper.grants import GrantSpec
    from deploy_helper.request import RequestPayload
    from deploy_helper.trust.auth import Identity

ENTRY_FIELDS = (
    "type",
    "time",
    "request_id",
    "caller",
    "key_id",
    "authenticated",
    "request_digest",
    "context",
    "action",
    "grant",
    "decision",
    "reason",
    "rule_id",
    "policy_before",
    "policy_after",
    "intent",
    "compaction",
    "owner",
    "owners",
)


def now_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def grant_summary(spec: GrantSpec) -> dict[str, Any]:
    """The grant as the ledger records it: kind, identity, target, principal and the full spec."""
    from deploy_helper.grants import kind_of

    kind = kind_of(spec)
    return {
        "kind": spec.kind,
        "grant_id": kind.grant_id(spec),
        "account": kind.target_account(spec),
        "target": kind.resource(spec),
        "principal": kind.principal(spec),
        "spec": spec.model_dump(mode="json", exclude_none=True),
    }


def request_fields(auth: Identity, payload: RequestPayload, owner: str | None = None) -> dict[str, Any]:
    """The fields every grant entry of a request shares; ``owner`` is the owner it acts for."""
    return {
        "request_id": payload.request_id,
        "caller": auth.caller,
        "key_id": auth.key_id,
        "authenticated": auth.method,
        "request_digest": auth.signed_digest,
        "context": payload.context.model_dump(mode="json", exclude_none=True),
        "action": f"{payload.action}{' (dry run)' if payload.dry_run else ''}",
        **({"owner": owner} if owner is not None else {}),
    }


def refusal(ts: float, *, code: str, reason: str, claimed: dict[str, Any]) -> dict[str, Any]:
    """A request refused before it was authenticated or validated.

    ``claimed`` holds what the request said about itself (caller, key id,
    request id) when that much could be read; it is recorded as unverified.
    """
    return {
        "type": "refusal",
        "time": now_iso(ts),
        "request_id": claimed.get("request_id"),
        "caller": claimed.get("caller"),
        "key_id": claimed.get("key_id"),
        "authenticated": bool(claimed.get("authenticated", False)),
        "request_digest": claimed.get("request_digest"),
        "context": {},
        "action": claimed.get("action"),
        "grant": None,
        "decision": "denied",
        "reason": f"{code}: {reason}",
        "rule_id": None,
        "policy_before": None,
        "policy_after": None,
        "intent": None,
        "compaction": None,
    }


def grant_entry(
    ts: float,
    entry_type: str,
    request: dict[str, Any],
    spec: GrantSpec,
    *,
    decision: str,
    reason: str = "",
    rule_id: str | None = None,
    before: str | None = None,
    after: str | None = None,
    intent: str | None = None,
    compaction: str | None = None,
    owners: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "type": entry_type,
        "time": now_iso(ts),
        **request,
        "grant": grant_summary(spec),
        "decision": decision,
        "reason": reason,
        "rule_id": rule_id,
        "policy_before": before,
        "policy_after": after,
        "intent": intent,
        "compaction": compaction,
        **({"owners": sorted(owners)} if owners is not None else {}),
    }
