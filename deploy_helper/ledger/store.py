"""The ledger in DynamoDB: a gapless hash chain that concurrent writers cannot fork.

Table: partition key ``ledger`` (one chain per ledger name, "main" by
default), sort key ``seq`` (1, 2, 3, ...). Each item holds ``body``, the exact
RFC 8785 canonical bytes of the entry (which include its ``seq`` and the
``prev`` hash), and ``hash`` = SHA-256 of ``body``.

Appending entry *n* is one ``TransactWriteItems``: a ``ConditionCheck`` that
entry *n-1* exists with the hash we chained to, and a ``Put`` of *n* (and of
up to 98 more entries) with ``attribute_not_exists(seq)``. So two writers can
never both write *n* (no fork), nobody can write *n+1* before *n* (no gap),
and no entry is ever overwritten. The broker needs only ``PutItem``,
``ConditionCheckItem``, ``GetItem`` and ``Query`` on the table — never
``UpdateItem`` or ``DeleteItem``. A writer that loses a race re-reads the head
and retries with jittered backoff, within a bounded number of attempts.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import rfc8785
from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.exceptions import LedgerError

GENESIS = "0" * 64
MAX_PER_TRANSACTION = 99  # 100 actions: one ConditionCheck + 99 Puts


@dataclass(frozen=True)
class StoredEntry:
    """One entry as stored: its sequence number, exact bytes and hash."""

    seq: int
    body: bytes
    hash: str

    @property
    def entry(self) -> dict[str, Any]:
        value = json.loads(self.body)
        return value if isinstance(value, dict) else {}


def entry_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def seal_entry(seq: int, prev: str, entry: dict[str, Any]) -> tuple[bytes, str]:
    """The canonical bytes of entry ``seq`` chained to ``prev``, and their hash."""
    body = rfc8785.dumps({**entry, "seq": seq, "prev": prev})
    return body, entry_hash(body)


class DynamoLedger:
    """Appends to and reads the hash-chained ledger in a DynamoDB table."""

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        ledger: str = "main",
        clock: Callable[[], float] = time.time,
        max_attempts: int = 200,
        on_append: Callable[[int, str], None] | None = None,
    ) -> None:
        self._client = client
        self.table = table
        self.ledger = ledger
        self._clock = clock
        self._max_attempts = max_attempts
        self._head: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._random = random.Random()
        self.on_append = on_append

    # -- writing ------------------------------------------------------------
    def append_many(self, entries: list[dict[str, Any]]) -> list[str]:
        """Append ``entries`` in order; return their ids (sequence numbers as text)."""
        ids: list[str] = []
        for start in range(0, len(entries), MAX_PER_TRANSACTION):
            ids.extend(self._append_chunk(entries[start : start + MAX_PER_TRANSACTION]))
        return ids

    def append(self, entry: dict[str, Any]) -> str:
        return self.append_many([entry])[0]

    def _append_chunk(self, entries: list[dict[str, Any]]) -> list[str]:
        with self._lock:
            for attempt in range(self._max_attempts):
                seq, prev = self._head if self._head is not None else self.head()
                chained_to = prev
                items = []
                hashes = []
                for offset, entry in enumerate(entries, start=1):
                    body, digest = seal_entry(seq + offset, prev, entry)
                    items.append(self._put(seq + offset, body, digest))
                    hashes.append(digest)
                    prev = digest
                actions: list[dict[str, Any]] = []
                if seq > 0:
                    actions.append(
                        {
                            "ConditionCheck": {
                                "TableName": self.table,
                                "Key": self._key(seq),
                                "ConditionExpression": "#h = :prev",
                                "ExpressionAttributeNames": {"#h": "hash"},
                                "ExpressionAttributeValues": {":prev": {"S": chained_to}},
                            }
                        }
                    )
                actions.extend(items)
                try:
                    self._client.transact_write_items(TransactItems=actions)
                except ClientError as exc:
                    code = exc.response["Error"]["Code"]
                    if code in ("TransactionCanceledException", "ConditionalCheckFailedException"):
                        self._head = None  # someone else appended: re-read and chain again
                        time.sleep(self._random.uniform(0, min(0.05, 0.002 * (attempt + 1))))
                        continue
                    raise LedgerError(
                        f"the ledger table {self.table} cannot be written ({code}); no change was made"
                    ) from exc
                except BotoCoreError as exc:
                    raise LedgerError(
                        f"the ledger table {self.table} cannot be reached ({exc}); no change was made"
                    ) from exc
                last = seq + len(entries)
                self._head = (last, hashes[-1])
                if self.on_append is not None:
                    self.on_append(last, hashes[-1])
                return [str(s) for s in range(seq + 1, last + 1)]
        raise LedgerError(
            f"the ledger table {self.table} is too contended to append after {self._max_attempts} attempts; "
            "no change was made — retry the request"
        )

    def _key(self, seq: int) -> dict[str, Any]:
        return {"ledger": {"S": self.ledger}, "seq": {"N": str(seq)}}

    def _put(self, seq: int, body: bytes, digest: str) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.table,
                "Item": {**self._key(seq), "body": {"S": body.decode("utf-8")}, "hash": {"S": digest}},
                "ConditionExpression": "attribute_not_exists(seq)",
            }
        }

    # -- reading ------------------------------------------------------------
    def known_head(self) -> tuple[int, str]:
        """The head as this writer last saw it (no read); exact right after its own append."""
        return self._head if self._head is not None else self.head()

    def head(self) -> tuple[int, str]:
        """The last entry's sequence number and hash ((0, GENESIS) when empty)."""
        try:
            page = self._client.query(
                TableName=self.table,
                KeyConditionExpression="#l = :l",
                ExpressionAttributeNames={"#l": "ledger"},
                ExpressionAttributeValues={":l": {"S": self.ledger}},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            )
        except (ClientError, BotoCoreError) as exc:
            raise LedgerError(f"the ledger table {self.table} cannot be read ({exc}); no change was made") from exc
        items = page.get("Items", [])
        self._head = (int(items[0]["seq"]["N"]), items[0]["hash"]["S"]) if items else (0, GENESIS)
        return self._head

    def entries(self, start: int = 1) -> Iterator[StoredEntry]:
        """Every stored entry from ``start`` on, in order."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#l = :l AND #s >= :s",
            "ExpressionAttributeNames": {"#l": "ledger", "#s": "seq"},
            "ExpressionAttributeValues": {":l": {"S": self.ledger}, ":s": {"N": str(start)}},
            "ConsistentRead": True,
        }
        while True:
            page = self._client.query(**kwargs)
            for item in page.get("Items", []):
                yield StoredEntry(int(item["seq"]["N"]), item["body"]["S"].encode("utf-8"), item["hash"]["S"])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def get(self, seq: int) -> StoredEntry | None:
        item = self._client.get_item(TableName=self.table, Key=self._key(seq), ConsistentRead=True).get("Item")
        if not item:
            return None
        return StoredEntry(int(item["seq"]["N"]), item["body"]["S"].encode("utf-8"), item["hash"]["S"])
