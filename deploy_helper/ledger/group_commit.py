"""Group commit: concurrent ``append_many`` calls coalesced into as few ledger appends as possible."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy_helper.ledger import Ledger


class _Pending:
    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.ids: list[str] = []
        self.error: BaseException | None = None
        self.done = threading.Event()


class GroupCommit:
    """Coalesces concurrent ``append_many`` calls into as few ledger appends as possible.

    Many resources finish their reads (and later their writes) at about the same time;
    appending each one's intents separately costs one ledger transaction per resource,
    serialized by the ledger's hash chain. Here the first caller becomes the leader and
    appends everything queued meanwhile in one call, up to ``max_batch`` entries (one
    DynamoDB transaction), each caller's entries contiguous and in order; callers get
    their own ids, or the ledger's error (then none of their entries were written,
    unless a single caller alone has more than ``max_batch``, as with the ledger itself).
    """

    def __init__(self, ledger: Ledger, max_batch: int = 99) -> None:
        self._ledger = ledger
        self._max = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False

    def append_many(self, entries: list[dict[str, Any]]) -> list[str]:
        if not entries:
            return []
        mine = _Pending(entries)
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

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._leading = False
                    return
                batch: list[Any] = []
                size = 0
                while self._queue and (not batch or size + len(self._queue[0].entries) <= self._max):
                    pending = self._queue.pop(0)
                    batch.append(pending)
                    size += len(pending.entries)
            try:
                ids = self._ledger.append_many([e for p in batch for e in p.entries])
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


#: The answer to a retry that arrives while the first delivery is still being processed.
