"""One resource of one request: read, plan, record the intent, write, record the outcome.

The broker's own round trips on a resource's way are two DynamoDB transactions:

1. **read** -- one consistent ``BatchGetItem`` of the lease and the references and
   owners of an account's resources, made while the broker assumes its role in that
   account (``prefetch``), so it adds nothing to the time a resource takes; then the
   resource's policy (or grants) from the target account;
2. **plan** -- pure, on what was read;
3. **claim + intent** -- one ``TransactWriteItems``: the lease taken (only if its
   generation is still the one read and it is free or expired), the references and
   owners written on apply (or their version claimed on revoke), and the ledger's
   decision and intent entries. All or nothing: if anyone took the lease or changed
   the references since the read, nothing is written and the resource is read again;
4. **write** -- the change in the target account, every attempt fenced by the lease
   (``deploy_helper.execution.fencing``);
5. **outcome + release** -- one ``TransactWriteItems``: the ledger's outcome entries,
   the lease given back and, on revoke, the references and owners written.

Why the read may come before the lease: every write to the resource happens under a
lease, and taking one moves its generation on. The generation is read *before* the
policy, so a claim conditioned on it succeeds only if no write under any lease can
have happened since the policy was read (a holder that lost its lease writes nothing:
its fence stops it). Read the other way round, a holder could take the lease, write
and give it back between the two reads, and its change would be lost.

A resource with nothing to change takes no lease: its decisions are one ledger append.
When a step cannot be one transaction (more than 100 items, a ledger that is not in
DynamoDB, a condition that failed at the outcome), the same writes are made one after
another, in the order ``deploy_helper.execution.references`` gives.
"""

from __future__ import annotations

import logging
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.exceptions import BrokerError, ClaimConflict, ExecutionError, LedgerError
from deploy_helper.execution import fencing
from deploy_helper.execution.locks import DynamoLease, DynamoLocks, LeaseView, Unfenced
from deploy_helper.execution.owners import Acting, OwnerBook, pipeline_owner
from deploy_helper.execution.policydoc import digest
from deploy_helper.execution.references import DynamoReferences, ResourceRecord, changed_message
from deploy_helper.grants import Allowed, GrantSpec, ResourcePlan, kind_of
from deploy_helper.ledger import entries
from deploy_helper.ledger.group_commit import MAX_ITEMS
from deploy_helper.ledger.store import write_conditional

if TYPE_CHECKING:
    from deploy_helper.execution.answers import AnswerKeeper
    from deploy_helper.execution.broker import Broker
    from deploy_helper.execution.locks import Lease
    from deploy_helper.grants.base import Operation
    from deploy_helper.models import GrantResult
    from deploy_helper.request import RequestPayload

logger = logging.getLogger(__name__)

Items = list[tuple[int, GrantSpec, str]]
#: A resource's record and lease as read from the broker's tables (None: no lease table).
Peeked = tuple[ResourceRecord, "LeaseView | None"]
#: How long a resource whose claims keep failing (others changing it) is tried again, without a lease table.
CLAIM_WAIT_SECONDS = 60.0


class ResourceRunner:
    """Runs one resource's part of a request for a ``Broker`` (see the module docstring)."""

    def __init__(self, broker: Broker, tables: Any = None) -> None:
        self.broker = broker
        #: The DynamoDB client for the lease and reference tables' reads and lone writes.
        self.tables = tables
        self._side = ThreadPoolExecutor(max_workers=16, thread_name_prefix="table-read")
        self._random = random.Random()

    # -- the read ---------------------------------------------------------------
    def _dynamo_locks(self) -> DynamoLocks | None:
        locks = self.broker.locks
        return locks if isinstance(locks, DynamoLocks) else None

    def needs_peek(self, kind: Any, dry_run: bool) -> bool:
        """Whether a resource of ``kind`` has a lease or a record to read before its AWS read."""
        return self.broker.references is not None or (
            kind.serialize_writes and not dry_run and self._dynamo_locks() is not None
        )

    def prefetch(self, resources: list[str]) -> Future[dict[str, Peeked]]:
        """Start reading the leases and records of ``resources`` (an account's, beside its AssumeRole)."""
        return self._side.submit(self.peek_many, resources)

    def peek_many(self, resources: list[str]) -> dict[str, Peeked]:
        """The references, owners and lease of each resource: consistent reads, 100 keys per call."""
        locks = self._dynamo_locks()
        references = self.broker.references
        tables = [t for t in (locks, references) if t is not None]
        out: dict[str, Peeked] = {}
        per_call = max(1, 100 // max(1, len(tables)))
        for start in range(0, len(resources), per_call):
            chunk = resources[start : start + per_call]
            found: dict[tuple[str, str], dict[str, Any]] = {}
            pending: dict[str, Any] = {
                t.table: {"Keys": [t.key(r) for r in chunk], "ConsistentRead": True} for t in tables
            }
            while pending:
                page = self.tables.batch_get_item(RequestItems=pending)
                for table, items in page.get("Responses", {}).items():
                    for item in items:
                        found[(table, item["pk"]["S"])] = item
                pending = page.get("UnprocessedKeys") or {}
            for r in chunk:
                record = DynamoReferences.record(found.get((references.table, r))) if references else ResourceRecord()
                seen = locks.view(found.get((locks.table, r))) if locks else None
                out[r] = (record, seen)
        return out

    def _read(
        self, kind: Any, client: Any, resource: str, peeked: Peeked | None
    ) -> tuple[Any, ResourceRecord, LeaseView | None]:
        """The broker's record of the resource and its lease, *then* the target's state.

        The order matters: a lease generation read before the policy proves that no write
        under any lease happened between that read and a claim made on that generation.
        The first attempt's table read is done beside the account's AssumeRole (``prefetch``).
        """
        if peeked is None and self.tables is not None:
            peeked = self.peek_many([resource])[resource]
        elif peeked is None:  # stores without a shared DynamoDB client: one read each
            locks, references = self._dynamo_locks(), self.broker.references
            peeked = (
                references.read_record(resource) if references else ResourceRecord(),
                locks.peek(resource) if locks else None,
            )
        record, seen = peeked
        return kind.read(client, resource), record, seen

    # -- one resource -------------------------------------------------------------
    def run(
        self,
        payload: RequestPayload,
        request: dict[str, Any],
        client: Any,
        resource: str,
        items: Items,
        allowed_of: dict[int, Allowed] | None = None,
        acting: Acting | None = None,
        peeked: Peeked | None = None,
        keeper: AnswerKeeper | None = None,
    ) -> list[GrantResult]:
        """One resource's part of a request; ``peeked``: its table read, made before this call.

        ``keeper``: the request's answer keeper (``deploy_helper.execution.answers``), told of
        every result settled here.
        """
        broker = self.broker
        kind = kind_of(items[0][1])
        allowed = [(allowed_of or {}).get(index) or Allowed(rule) for index, _, rule in items]
        rule_of = {id(spec): rule for _, spec, rule in items}
        index_of = {id(spec): index for index, spec, _ in items}
        acting = acting or Acting(request.get("owner") or pipeline_owner(str(request.get("caller")), None))
        # Owners (kept in the reference table) change under the lease, whatever the kind.
        leased = (kind.serialize_writes or broker.references is not None) and not payload.dry_run
        locks = self._dynamo_locks()
        if leased:
            fencing.guard(client)

        def step() -> _Step:
            return _Step(self, kind, payload, request, resource, items, allowed, rule_of, index_of, acting, keeper)

        if leased and locks is None and not _no_lock(broker.locks):
            # A ``Locker`` that is not a lease table: read, plan and write inside its hold.
            with broker.locks.hold(resource) as lease:
                held = step()
                record = broker.references.read_record(resource) if broker.references else ResourceRecord()
                held.plan(kind.read(client, resource), record)
                return held.execute(client, None, True, lease=lease)
        wait = locks.wait_seconds if locks is not None else CLAIM_WAIT_SECONDS
        # Leases are taken and expire by the lease table's clock.
        backoff = _Backoff(locks.clock if locks is not None else broker.clock, wait, self._random)
        while True:
            if self.needs_peek(kind, payload.dry_run):
                state, record, seen = self._read(kind, client, resource, peeked)
            else:
                state, record, seen = kind.read(client, resource), ResourceRecord(), None
            peeked = None  # a second attempt reads the tables again, then the target
            if not leased:
                seen = None
            if seen is not None and seen.busy(backoff.clock()):
                backoff.wait_or_give_up(
                    f"{resource} is being changed by another request and stayed busy for "
                    f"{wait:.0f} s; nothing was changed — retry the request"
                )
                continue
            attempt = step()
            attempt.plan(state, record)
            if payload.dry_run:
                return attempt.planned()
            try:
                return attempt.execute(client, seen if leased else None, leased)
            except ClaimConflict:
                backoff.wait_or_give_up(
                    f"{resource} kept changing under other requests; nothing was changed — retry the request"
                )


class _Backoff:
    """Jittered exponential waits between attempts at one resource, up to a deadline."""

    def __init__(self, clock: Any, seconds: float, rng: random.Random) -> None:
        self.clock = clock
        self._deadline = clock() + seconds
        self._delay = 0.01
        self._random = rng

    def wait_or_give_up(self, message: str) -> None:
        """Wait a little before the next attempt; ``ExecutionError(message)`` once past the deadline."""
        if self.clock() >= self._deadline:
            raise ExecutionError(message)
        time.sleep(self._random.uniform(0, self._delay))
        self._delay = min(self._delay * 2, 0.5)


def _no_lock(locks: Any) -> bool:
    from deploy_helper.execution.locks import NoLock

    return isinstance(locks, NoLock)


class _Step:
    """One attempt at one resource: the plan made on one read, and what follows from it."""

    def __init__(
        self,
        runner: ResourceRunner,
        kind: Any,
        payload: RequestPayload,
        request: dict[str, Any],
        resource: str,
        items: Items,
        allowed: list[Allowed],
        rule_of: dict[int, str],
        index_of: dict[int, int],
        acting: Acting,
        keeper: AnswerKeeper | None = None,
    ) -> None:
        self.runner = runner
        self.keeper = keeper
        self.broker = runner.broker
        self.kind = kind
        self.payload = payload
        self.request = request
        self.resource = resource
        self.items = items
        self.allowed = allowed
        self.rule_of = rule_of
        self.index_of = index_of
        self.acting = acting

    def plan(self, state: Any, record: ResourceRecord) -> None:
        broker, kind = self.broker, self.kind
        self.version = record.version
        self.book = book = OwnerBook(record.owners if broker.references else None, self.acting)
        action: Operation = self.payload.action
        screened = [book.screen(spec, kind.grant_id(spec), action) for _, spec, _ in self.items]
        asked = [(spec, action) for (_, spec, _), s in zip(self.items, screened, strict=True) if s is None]
        allow = [a for a, s in zip(self.allowed, screened, strict=True) if s is None]
        if kind.uses_references:
            references = record.references if broker.references else None
            plan: ResourcePlan = kind.plan(state, self.resource, asked, allow, references=references)
        else:
            plan = kind.plan(state, self.resource, asked, allow)
        for p in plan.items:
            book.settle(p, kind.grant_id(p.spec))
        plan.items.extend(s for s in screened if s is not None)
        plan.owners = book.result()
        self.p = plan
        self.owners_of = {id(p.spec): book.after(p.spec, kind.grant_id(p.spec)) for p in plan.items}
        self.before, self.after = digest(plan.before), digest(plan.after)

    def _entry(self, entry_type: str, p: Any, **fields: Any) -> dict[str, Any]:
        fields.setdefault("owners", self.owners_of[id(p.spec)])
        return entries.grant_entry(
            self.broker.clock(),
            entry_type,
            self.request,
            p.spec,
            rule_id=self.rule_of[id(p.spec)],
            compaction=p.compaction,
            **fields,
        )

    def _result(self, p: Any, decision: Any, reason: str, entry_id: str | None = None) -> GrantResult:
        result = self.broker._result(self.index_of[id(p.spec)], p.spec, decision, reason, self.rule_of[id(p.spec)])
        result.ledger_entry = entry_id
        result.compaction = p.compaction
        return result

    def planned(self) -> list[GrantResult]:
        names = {"applied": "would-apply", "revoked": "would-revoke", "failed": "would-fail"}
        diff = self.kind.diff(self.p) or None
        decided = [(p, names.get(p.outcome, p.outcome)) for p in self.p.items]
        plan_entries = [
            self._entry("decision", p, decision=d, reason=p.reason, before=self.before, after=self.after)
            for p, d in decided
        ]

        def results_of(ids: list[str]) -> list[GrantResult]:
            results = []
            for (p, decision), entry_id in zip(decided, ids, strict=True):
                results.append(self._result(p, decision, p.reason, entry_id))
                results[-1].diff = diff
            return results

        return self.broker.append_final(self.keeper, plan_entries, results_of)

    # -- apply / revoke ------------------------------------------------------------
    def execute(
        self, client: Any, seen: LeaseView | None, leased: bool, lease: Lease | None = None
    ) -> list[GrantResult]:
        broker, book = self.broker, self.book

        def changes(p: Any) -> bool:
            return p.outcome in ("applied", "revoked") or book.changed(p.spec)

        changing = [p for p in self.p.items if changes(p)]
        settled = [p for p in self.p.items if not changes(p)]
        settled_entries = [
            self._entry("decision", p, decision=p.outcome, reason=p.reason, before=self.before, after=self.before)
            for p in settled
        ]
        intent_entries = [
            self._entry("intent", p, decision=p.outcome, reason="about to change", before=self.before, after=self.after)
            for p in changing
        ]
        claim: list[dict[str, Any]] = []
        locks = self.runner._dynamo_locks()
        if changing and leased and lease is None:
            if locks is not None and seen is not None:
                item, lease = locks.take_item(self.resource, seen)
                claim.append(item)
            else:
                lease = Unfenced(self.resource)
        references = broker.references
        recorded = False  # whether the owners were written before the change
        if changing and references is not None and self._keeps_record():
            if self.payload.action == "apply":
                claim.append(
                    references.write_item(self.resource, self.p.references, self.version, owners=self.p.owners)
                )
                recorded = True
            else:
                # Claim the version first: if the references or owners changed since they were
                # read, nothing is removed (``deploy_helper.execution.references``).
                claim.append(references.write_item(self.resource, None, self.version))

        def settled_results(ids: list[str]) -> list[GrantResult]:
            return [
                self._result(p, p.outcome, p.reason, entry_id)
                for p, entry_id in zip(settled, ids[: len(settled)], strict=True)
            ]

        try:
            if not changing:  # nothing to change: these decisions settle the resource
                return self.broker.append_final(self.keeper, settled_entries, settled_results)
            ids = self._commit(settled_entries + intent_entries, claim)
        except LedgerError as exc:
            msg = f"{exc.message}; no change was made"
            return self._settle([self._result(p, "failed", msg) for p in self.p.items])
        results = self._settle(settled_results(ids))
        intent_ids = ids[len(settled) :]
        error: str | None = None
        try:
            with fencing.fenced(lease) if lease is not None else nullcontext():
                self.kind.write(client, self.p)
        except (ClientError, BotoCoreError) as exc:
            error = describe(exc)
        except BrokerError as exc:
            error = exc.message
        except BaseException:
            # A bug, not AWS: give the lease back now rather than at its expiry, then report it.
            if isinstance(lease, DynamoLease) and locks is not None and claim:
                locks.release(lease)
            raise
        finish: list[dict[str, Any]] = []
        if isinstance(lease, DynamoLease) and locks is not None and claim:
            finish.append(locks.release_item(lease))
        revoke_record = (
            error is None and self.payload.action != "apply" and references is not None and self._keeps_record()
        )
        if revoke_record:
            assert references is not None
            finish.append(
                references.write_item(self.resource, self.p.references, self.version + 1, owners=self.p.owners)
            )
        return results + self._finish(changing, intent_ids, error, recorded or revoke_record, finish, lease, locks)

    def _settle(self, results: list[GrantResult]) -> list[GrantResult]:
        if self.keeper is not None:
            self.keeper.settle(results)
        return results

    def _keeps_record(self) -> bool:
        return self.p.references is not None or self.p.owners is not None

    def _outcomes(self, changing: list[Any], intent_ids: list[str], error: str | None, recorded: bool) -> list[Any]:
        return [
            self._entry(
                "outcome",
                p,
                decision="failed" if error else p.outcome,
                reason=error or p.reason,
                before=self.before,
                after=self.before if error else self.after,
                intent=intent_id,
                owners=self.owners_of[id(p.spec)]
                if recorded or not error
                else self.book.before(p.spec, self.kind.grant_id(p.spec)),
            )
            for p, intent_id in zip(changing, intent_ids, strict=True)
        ]

    def _commit(self, batch: list[dict[str, Any]], claim: list[dict[str, Any]]) -> list[str]:
        """The entries with the claim in one transaction; the claim first, alone, if they cannot be one."""
        group = self.broker._group
        if not claim or len(batch) + len(claim) <= MAX_ITEMS:
            return group.append_many(batch, items=claim or None)
        write_conditional(self.runner.tables, claim)
        return group.append_many(batch)

    def _finish(
        self,
        changing: list[Any],
        intent_ids: list[str],
        error: str | None,
        recorded: bool,
        finish: list[dict[str, Any]],
        lease: Lease | None,
        locks: DynamoLocks | None,
    ) -> list[GrantResult]:
        """Record the outcomes and give the lease back, in one transaction when it can be one.

        Returns the changed grants' results (failed with a revoke's references that could not
        be written).
        """

        def results_of(ids: list[str]) -> list[GrantResult]:
            return [
                self._result(p, "failed" if error else p.outcome, error or p.reason, entry_id)
                for p, entry_id in zip(changing, ids, strict=True)
            ]

        outcomes = self._outcomes(changing, intent_ids, error, recorded)
        if len(outcomes) + len(finish) <= MAX_ITEMS:
            try:
                return self.broker.append_final(self.keeper, outcomes, results_of, items=finish or None)
            except (ClaimConflict, LedgerError, ClientError, BotoCoreError):
                logger.warning("outcomes of %s not recorded with their lease and references; one by one", self.resource)
        # One by one: the references (a revoke's), then the outcomes, then the lease.
        reference_write = [i for i in finish if i["Update"]["TableName"] != (locks.table if locks else None)]
        if reference_write:
            try:
                write_conditional(self.runner.tables, reference_write)
            except (ClaimConflict, ClientError, BotoCoreError) as exc:
                error = changed_message(self.resource) if isinstance(exc, ClaimConflict) else describe(exc)
                outcomes = self._outcomes(changing, intent_ids, error, False)
        try:
            ids = self.broker._group.append_many(outcomes)
        except LedgerError:
            # The change is made; its intent is recorded and `ledger verify` reports the
            # missing outcome until a re-run of the same request records it.
            logger.exception("could not record outcomes for %s", self.resource)
            ids = intent_ids
        if isinstance(lease, DynamoLease) and locks is not None:
            locks.release(lease)
        return self._settle(results_of(ids))


def describe(exc: BaseException) -> str:
    """What went wrong with an AWS call or a broker check, in words for the ledger and the caller."""
    if isinstance(exc, BrokerError):
        return exc.message
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"AWS refused the change: {err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    return f"AWS call failed: {exc}"
