"""Group commit: concurrent ``append_many`` calls coalesced into as few ledger appends as possible."""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from deploy_helper.exceptions import ClaimConflict

if TYPE_CHECKING:
    from deploy_helper.ledger import Ledger
    from deploy_helper.ledger.store import Late

logger = logging.getLogger(__name__)

#: DynamoDB's limit on the items of one ``TransactWriteItems``.
MAX_ITEMS = 100


class _Pending:
    def __init__(self, entries: list[dict[str, Any]], items: list[dict[str, Any]], late: Late | None = None) -> None:
        self.entries = entries
        self.items = items
        self.late = late
        self.keys = {_item_key(item) for item in items}
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    @property
    def size(self) -> int:
        return len(self.entries) + len(self.items) + (self.late is not None)

    @property
    def conditional(self) -> bool:
        """Whether its writes must be one transaction with its entries."""
        return bool(self.items) or self.late is not None


class GroupCommit:
    """Coalesces concurrent ``append_many`` calls into as few ledger appends as possible.

    Many resources finish their reads (and later their writes) at about the same time;
    appending each one's intents separately costs one ledger transaction per resource,
    serialized by the ledger's hash chain. Here the first caller becomes the leader and
    appends everything queued meanwhile in one call, up to ``max_batch`` entries (one
    DynamoDB transaction), each caller's entries contiguous and in order; callers get
    their own ids, or the ledger's error (then none of their entries were written,
    unless a single caller alone has more than ``max_batch``, as with the ledger itself).

    A caller may add ``items``: conditional writes to the broker's own tables (taking or
    giving back a lease, references) that must be written with its entries or not at
    all. They go into the same transaction; when one of a caller's conditions fails,
    that caller alone gets ``ClaimConflict`` and the rest of the batch is written
    without it. A batch never holds two writes of one item (DynamoDB refuses that).
    Ledgers other than DynamoDB (memory, for tests) get the items written first by
    ``transact`` and then the entries.

    A caller may also give ``late``: unconditional items made from its entries' ids once
    the batch's place in the chain is known (a request's answer, kept on its nonce with
    the request's last entries: ``deploy_helper.execution.answers``); DynamoDB ledgers only.
    """

    def __init__(
        self,
        ledger: Ledger,
        max_batch: int = 99,
        transact: Any = None,
    ) -> None:
        self._ledger = ledger
        self._max = max_batch
        #: A DynamoDB client for ``items`` when the ledger cannot take them itself.
        self._transact = transact
        self._native = bool(getattr(ledger, "takes_items", False))
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False

    @property
    def takes_late(self) -> bool:
        """Whether ``append_many`` can take ``late`` items (a ledger in DynamoDB)."""
        return self._native

    def append_many(
        self, entries: list[dict[str, Any]], items: list[dict[str, Any]] | None = None, late: Late | None = None
    ) -> list[str]:
        """Append ``entries`` (with ``items``, and ``late``'s items made from their ids) in a batch; their ids."""
        if not entries:
            return []
        if late is not None and not self._native:
            raise ValueError("late items need a ledger in DynamoDB")
        mine = _Pending(entries, list(items or []), late)
        if mine.conditional and mine.size > MAX_ITEMS:
            raise ValueError(f"{len(entries)} entries with {len(mine.items)} conditions do not fit in one transaction")
        with self._lock:
            self._queue.append(mine)
            lead = not self._leading
            self._leading = True
        if lead:
            self._drain()
        mine.done.wait()
        if mine.error is not None:
            raise mine.error
        return mine.ids

    def _next_batch(self) -> list[_Pending]:
        """Callers taken from the queue in order while they fit; one touching an item already taken waits."""
        batch: list[_Pending] = []
        size = 0
        keys: set[str] = set()
        conditional = False
        for pending in list(self._queue):
            cap = MAX_ITEMS if conditional or pending.conditional else self._max
            if batch and size + pending.size > cap:
                break
            if pending.keys & keys:
                continue
            batch.append(pending)
            self._queue.remove(pending)
            size += pending.size
            keys |= pending.keys
            conditional = conditional or pending.conditional
        return batch

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._leading = False
                    return
                batch = self._next_batch()
            try:
                ids = self._append(
                    [e for p in batch for e in p.entries], [i for p in batch for i in p.items], _lates(batch)
                )
            except ClaimConflict as conflict:
                # Only the callers whose conditions failed are refused; the others go again.
                losers = _owners_of(batch, conflict.failed)
                with self._lock:
                    self._queue[:0] = [p for p in batch if p not in losers]
                for p in losers:
                    p.error = ClaimConflict([])
                    p.done.set()
                continue
            except BaseException as exc:  # handed to every caller of the batch
                for p in batch:
                    p.error = exc
                    p.done.set()
                continue
            start = 0
            for p in batch:
                p.ids = ids[start : start + len(p.entries)]
                start += len(p.entries)
                p.done.set()

    def _append(self, entries: list[dict[str, Any]], items: list[dict[str, Any]], late: Late | None) -> list[str]:
        if not items and late is None:
            return self._ledger.append_many(entries)
        if self._native:
            return self._ledger.append_many(entries, items, late)  # type: ignore[call-arg]
        if self._transact is None:
            raise ValueError("conditional items need a DynamoDB client beside a ledger that is not in DynamoDB")
        from deploy_helper.ledger.store import write_conditional

        write_conditional(self._transact, items)
        return self._ledger.append_many(entries)


def _lates(batch: list[_Pending]) -> Late | None:
    """One ``late`` for a batch: each caller's own, given the ids of that caller's entries."""
    if all(p.late is None for p in batch):
        return None

    def late(ids: list[str]) -> list[dict[str, Any]]:
        made: list[dict[str, Any]] = []
        start = 0
        for p in batch:
            if p.late is not None:
                try:
                    made.extend(p.late(ids[start : start + len(p.entries)]))
                except Exception:  # one caller's extra must not cost the others their writes
                    logger.exception("could not make the late items of a ledger append")
            start += len(p.entries)
        return made

    return late


def _owners_of(batch: list[_Pending], failed: list[int]) -> list[_Pending]:
    """The callers whose items are at the positions ``failed`` of the batch's items."""
    losers: list[_Pending] = []
    start = 0
    for p in batch:
        if any(start <= i < start + len(p.items) for i in failed):
            losers.append(p)
        start += len(p.items)
    return losers


def _item_key(item: dict[str, Any]) -> str:
    (operation,) = item.values()
    key = operation.get("Key") or {k: v for k, v in operation.get("Item", {}).items() if k in ("pk", "ledger", "seq")}
    return json.dumps([operation["TableName"], key], sort_keys=True)
