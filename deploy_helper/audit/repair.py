"""Repairs the broker makes on its own: ``reconcile`` and the expiry sweeper.

Both go through the broker's own execution pieces — its sessions (the broker role),
its per-resource lease (``Broker.locks``), its rules, the kinds' size-checked plans,
its reference/owner table and its ledger (intent before the change, outcome after,
fail closed) — and differ from a request only in who acts (``deploy-helper:reconcile``,
``deploy-helper:sweeper``, recorded as the entries' caller with ``authenticated:
internal``) and in the decision they record:

- ``reconcile``: under the resource's lease the resource is read again and
  classified again (``deploy_helper.audit.drift.classify``), so only drift that is
  still there is repaired: a ``missing`` or ``altered`` grant is applied again —
  if the current rules still allow it for the caller that asked for it (otherwise
  it is reported, and a ``denied`` entry names the rule check), and if it fits the
  policy's size limit — and an ``unknown-managed`` statement or grant is removed.
  Foreign statements are never touched. Each change is an entry with decision
  ``reconciled`` whose reason names the drift repaired. Owners are not changed.
- ``sweep``: every active grant whose expiry (``expires_at``/``ttl``, as the ledger
  recorded it) has passed is revoked, whoever owns it; its owners are cleared and
  the entry's decision is ``expired``. The sweeper only ever removes grants the
  ledger says have expired, so triggering it early is harmless.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.audit.drift import DRIFTED, Filters, LedgerView, classify
from deploy_helper.audit.repairs import RepairItem, RepairResult, repair_entry, request_fields, why
from deploy_helper.exceptions import BrokerError, DeniedError, LedgerError
from deploy_helper.execution import fencing
from deploy_helper.execution.policydoc import digest
from deploy_helper.grants import REGISTRY, GrantSpec, ResourcePlan
from deploy_helper.ledger.query import parse_time

if TYPE_CHECKING:
    from deploy_helper.audit.drift import ResourceKey
    from deploy_helper.execution.broker import Broker

logger = logging.getLogger(__name__)


class Repairer:
    """Runs repairs through the broker's locks, rules, plans, references and ledger."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.view: LedgerView | None = None

    # -- entry points ------------------------------------------------------------------
    def reconcile(
        self,
        view: LedgerView,
        filters: Filters | None = None,
        *,
        apply: bool,
        only: set[tuple[str, str, str]] | None = None,
    ) -> list[RepairResult]:
        """Repair the drift of every resource admitted by ``filters`` (``apply=False``: only say what).

        ``only`` (``(account, kind, resource)`` of the resources a drift check found drifted)
        limits the repair, and so the leases it takes, to those; each is checked again under
        its lease before anything is changed.
        """
        self.view = view
        work = view.work(filters or Filters())
        if only is not None:
            work = {a: {k: g for k, g in r.items() if k[:3] in only} for a, r in work.items()}
            work = {a: r for a, r in work.items() if r}
        return self._run(work, "reconcile", apply=apply)

    def sweep(self, view: LedgerView, *, apply: bool = True) -> list[RepairResult]:
        """Revoke every active grant whose expiry has passed at the broker's clock."""
        from deploy_helper.audit.drift import parse_spec
        from deploy_helper.grants import kind_of

        now = self.broker.clock()
        work: dict[str, dict[ResourceKey, list[tuple[GrantSpec, dict[str, Any]]]]] = defaultdict(dict)
        for active in view.active:
            when = parse_time(str(active.get("expires_at") or ""))
            if when is None or when.timestamp() > now:
                continue
            spec = parse_spec(active.get("spec"))
            kind = kind_of(spec)
            key = (kind.target_account(spec), kind.kind, kind.resource(spec), kind.region(spec))
            work[key[0]].setdefault(key, []).append((spec, active))
        self.view = view
        return self._run(work, "expire", apply=apply)

    # -- execution ---------------------------------------------------------------------
    def _run(
        self,
        work: dict[str, dict[ResourceKey, list[tuple[GrantSpec, dict[str, Any]]]]],
        mode: Literal["reconcile", "expire"],
        *,
        apply: bool,
    ) -> list[RepairResult]:
        results: list[RepairResult] = []
        run_id = f"{mode}-{int(self.broker.clock())}"
        for account in sorted(work):
            try:
                clients = self.broker.sessions.for_account(account, run_id)
            except BrokerError as exc:
                for key, grants in work[account].items():
                    results.extend(
                        RepairResult(
                            account, key[1], key[2], REGISTRY[key[1]].grant_id(s), "unknown", "failed", exc.message
                        )
                        for s, _ in grants
                    )
                continue
            for key in sorted(work[account]):
                try:
                    results.extend(self._resource(clients, key, mode, run_id, apply=apply))
                except LedgerError:
                    raise
                except (BrokerError, ClientError, BotoCoreError) as exc:
                    message = exc.message if isinstance(exc, BrokerError) else f"AWS call failed: {exc}"
                    results.append(RepairResult(account, key[1], key[2], None, "unknown", "failed", message))
        return results

    def _resource(
        self,
        clients: Any,
        key: ResourceKey,
        mode: Literal["reconcile", "expire"],
        run_id: str,
        *,
        apply: bool,
    ) -> list[RepairResult]:
        from deploy_helper.execution.references import ResourceRecord

        account, kind_name, resource, region = key
        kind = REGISTRY[kind_name]
        client = clients.client(kind.service, region)
        broker = self.broker
        hold = broker.locks.hold(resource) if apply else nullcontext()
        with hold as lease:
            if lease is not None:
                fencing.guard(client)  # every write attempt first proves the lease is still held
            # Under the lease: every change the broker made to this resource is in the ledger
            # now (intents go in before AWS is changed), so read the entries appended since.
            grants = self._fresh(key)
            state = kind.read(client, resource)
            record = broker.references.read_record(resource) if broker.references else ResourceRecord()
            refs = record.references if kind.uses_references and broker.references else None
            items = self._items(kind, account, resource, state, grants, refs, mode)
            if not items:
                return []
            request = request_fields(mode, run_id)
            results: list[RepairResult] = []
            restorable: list[RepairItem] = []
            refused: list[tuple[RepairItem, DeniedError]] = []
            for item in items:
                if item.op != "restore":
                    continue
                assert item.spec is not None and item.active is not None
                try:
                    allowed = broker.rules.authorize(str(item.active.get("caller")), item.spec, now=broker.clock())
                except DeniedError as exc:
                    refused.append((item, exc))
                    continue
                item.rule_id = allowed.rule_id
                item.allowed = allowed
                restorable.append(item)
            removals = [i for i in items if i.op == "remove"]
            expiring = [i for i in items if i.op == "expire"]
            # 1. unknown-managed statements go first; 2. restores are planned on what is left.
            purge = sorted({gid for i in restorable for gid in i.purge} - {i.grant_id for i in removals})
            doomed = [i.grant_id for i in removals] + purge
            removal = kind.plan_removal(state, resource, doomed) if doomed else None
            base = state if removal is None else _after_state(kind, state, removal)
            restore_plan = self._plan(kind, base, resource, restorable, "apply", refs, broker)
            expire_plan = self._plan(kind, state, resource, expiring, "revoke", refs, broker)
            too_large = {
                id(p.spec): p.reason for p in (restore_plan.items if restore_plan else []) if p.outcome == "failed"
            }
            decision = "reconciled" if mode == "reconcile" else "expired"
            changes = [i for i in items if i.op != "restore" or (i in restorable and id(i.spec) not in too_large)]
            for item, refusal in refused:
                results.append(self._denied(request, account, resource, item, refusal, apply))
            for item in restorable:
                if id(item.spec) in too_large:
                    results.append(
                        self._record(
                            request, account, resource, kind_name, item, "failed", too_large[id(item.spec)], apply
                        )
                    )
            if not changes:
                return results
            if not apply:
                for item in changes:
                    results.append(
                        RepairResult(
                            account, kind_name, resource, item.grant_id, item.drift, f"would-{mode}", why(item)
                        )
                    )
                return results
            before = digest(_doc(kind, state))
            plans = [p for p in (removal, restore_plan, expire_plan) if p is not None and p.writes]
            after = digest(plans[-1].after) if plans else before
            intents = [
                repair_entry(
                    self.broker.clock(), request, "intent", kind_name, account, resource, i, decision, before, after
                )
                for i in changes
            ]
            intent_ids = broker.ledger.append_many(intents)
            error: str | None = None
            try:
                with fencing.fenced(lease) if lease is not None else nullcontext():
                    self._write(kind, client, resource, record, refs, removal, restore_plan, expire_plan, expiring)
            except (ClientError, BotoCoreError) as exc:
                error = f"AWS refused the change: {exc}"
            except BrokerError as exc:
                error = exc.message
            outcomes = [
                {
                    **repair_entry(
                        self.broker.clock(),
                        request,
                        "outcome",
                        kind_name,
                        account,
                        resource,
                        i,
                        "failed" if error else decision,
                        before,
                        before if error else after,
                        reason=error,
                    ),
                    "intent": intent_id,
                }
                for i, intent_id in zip(changes, intent_ids, strict=True)
            ]
            try:
                ids = broker.ledger.append_many(outcomes)
            except LedgerError:
                logger.exception("could not record repair outcomes for %s", resource)
                ids = intent_ids
            for item, entry_id in zip(changes, ids, strict=True):
                results.append(
                    RepairResult(
                        account,
                        kind_name,
                        resource,
                        item.grant_id,
                        item.drift,
                        "failed" if error else decision,
                        error or why(item),
                        entry_id,
                    )
                )
            return results

    def _items(
        self,
        kind: Any,
        account: str,
        resource: str,
        state: Any,
        grants: list[tuple[GrantSpec, dict[str, Any]]],
        refs: dict[str, list[str]] | None,
        mode: str,
    ) -> list[RepairItem]:
        if mode == "expire":
            now = self.broker.clock()
            items = []
            for spec, active in grants:
                when = parse_time(str(active.get("expires_at") or ""))
                if when is not None and when.timestamp() <= now:
                    items.append(
                        RepairItem("expire", "expired", kind.grant_id(spec), spec, active, kind.principal(spec))
                    )
            return items
        specs = {kind.grant_id(s): (s, a) for s, a in grants}
        excess = kind.excess(state, [s for s, _ in grants], refs)
        out: list[RepairItem] = []
        for finding in classify(kind, account, resource, state, grants, refs):
            if finding.status not in DRIFTED or finding.grant_id is None:
                continue
            if finding.status == "unknown-managed":
                out.append(RepairItem("remove", finding.status, finding.grant_id, principal=finding.principal))
                continue
            spec, active = specs[finding.grant_id]
            expiry = parse_time(str(active.get("expires_at") or ""))
            if expiry is not None and expiry.timestamp() <= self.broker.clock():
                continue  # expired: the sweeper revokes it, reconcile does not bring it back
            purge = tuple(sorted(kind.accounts_for(state, spec, refs) & excess.keys()))
            out.append(
                RepairItem("restore", finding.status, finding.grant_id, spec, active, finding.principal, purge=purge)
            )
        return out

    def _fresh(self, key: ResourceKey) -> list[tuple[GrantSpec, dict[str, Any]]]:
        """The active grants on ``key`` by the ledger as it is now."""
        from deploy_helper.audit.scheduled import stored_entries

        assert self.view is not None
        self.view = self.view.extended(stored_entries(self.broker.ledger, self.view.last_seq + 1))
        return self.view.work(Filters(account=key[0], kind=key[1])).get(key[0], {}).get(key, [])

    @staticmethod
    def _plan(
        kind: Any, state: Any, resource: str, items: list[RepairItem], op: str, refs: Any, broker: Broker
    ) -> ResourcePlan | None:
        if not items:
            return None
        from deploy_helper.grants import Allowed

        asked = [(i.spec, op) for i in items]
        allowed = [i.allowed or Allowed(i.rule_id or "") for i in items]
        if kind.uses_references:
            refs_arg = refs if broker.references is not None else None
            return kind.plan(state, resource, asked, allowed, references=refs_arg)
        return kind.plan(state, resource, asked, allowed)

    def _write(
        self,
        kind: Any,
        client: Any,
        resource: str,
        record: Any,
        refs: Any,
        removal: ResourcePlan | None,
        restore: ResourcePlan | None,
        expire: ResourcePlan | None,
        expiring: list[RepairItem],
    ) -> None:
        """Removals, then restores (references first, as on apply), then expiries (owners last, as on revoke).

        As in the broker (``Broker._write``): before anything is removed the reference item's
        version is claimed, so a change to the references or owners since they were read stops
        the repair; each table write first proves the lease outlasts it (``fencing.check``).
        """
        from deploy_helper.execution.broker import TABLE_WRITE_SECONDS

        store = self.broker.references
        version = record.version
        removing = (removal is not None and removal.writes) or (expire is not None and expire.writes)
        if store is not None and removing:
            fencing.check(TABLE_WRITE_SECONDS)
            store.write(resource, None, version)
            version += 1
        if removal is not None and removal.writes:
            kind.write(client, removal)
        if restore is not None and restore.writes:
            if store is not None and restore.references is not None:
                fencing.check(TABLE_WRITE_SECONDS)
                store.write(resource, restore.references, version)
                version += 1
            kind.write(client, restore)
        if expire is not None:
            if expire.writes:
                kind.write(client, expire)
            if store is not None:
                owners = {g: o for g, o in record.owners.items() if g not in {i.grant_id for i in expiring}}
                changed_owners = owners if owners != record.owners else None
                if expire.references is not None or changed_owners is not None:
                    fencing.check(TABLE_WRITE_SECONDS)
                    store.write(resource, expire.references, version, owners=changed_owners)

    def _denied(
        self, request: dict[str, Any], account: str, resource: str, item: RepairItem, exc: DeniedError, apply: bool
    ) -> RepairResult:
        reason = f"{item.drift} grant not restored: the current rules no longer allow it: {exc.message}"
        item.rule_id = exc.rule_id
        return self._record(
            request, account, resource, item.spec.kind if item.spec else "", item, "denied", reason, apply
        )

    def _record(
        self,
        request: dict[str, Any],
        account: str,
        resource: str,
        kind_name: str,
        item: RepairItem,
        decision: str,
        reason: str,
        apply: bool,
    ) -> RepairResult:
        entry_id = None
        if apply:
            entry = repair_entry(
                self.broker.clock(),
                request,
                "decision",
                kind_name,
                account,
                resource,
                item,
                decision,
                "",
                "",
                reason=reason,
            )
            entry["policy_before"] = entry["policy_after"] = None
            entry_id = self.broker.ledger.append_many([entry])[0]
        return RepairResult(account, kind_name, resource, item.grant_id, item.drift, decision, reason, entry_id)


def _doc(kind: Any, state: Any) -> Any:
    """The document whose digest the entries carry (the broker's grants for KMS, as its plans do)."""
    plan = kind.plan_removal(state, "", [])
    return plan.before


def _after_state(kind: Any, state: Any, removal: ResourcePlan) -> Any:
    """The live state once ``removal`` is made, as the kind's ``plan`` reads state."""
    if isinstance(state, list):  # KMS: grants by id
        gone = {gid for op, gid in removal.writes if op == "revoke"}
        return [g for g in state if g.get("GrantId") not in gone]
    return removal.after
