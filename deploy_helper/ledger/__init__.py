"""The grant ledger: every decision and change, append-only.

The broker talks to the ledger through ``Ledger.append_many`` only; storage
(DynamoDB with a hash chain, or memory for unit tests) lives behind it.
Entries are plain JSON-compatible dicts built by ``deploy_helper.ledger.entries``.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol


class Ledger(Protocol):
    """Append entries in order; return their ids. Raise ``LedgerError`` if they cannot be stored."""

    def append_many(self, entries: list[dict[str, Any]]) -> list[str]: ...


class MemoryLedger:
    """A ledger in memory: for unit tests and local experiments only."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def append_many(self, entries: list[dict[str, Any]]) -> list[str]:
        with self._lock:
            ids = []
            for entry in entries:
                self.entries.append({**entry, "seq": len(self.entries) + 1})
                ids.append(str(len(self.entries)))
            return ids
