"""The ledger in DynamoDB: a gapless hash chain that concurrent writers cannot fork.

Table: partition key ``ledger`` (one chain per ledger name, "main" by
default), sort key ``seq`` (1, 2, 3, ...). Each item holds ``body``, the exact
RFC 8785 canonical bytes of the entry (which include its ``seq`` and the
``prev`` hash), and ``hash`` = SHA-256 of ``body``.

Appending entry *n* is a ``PutItem`` conditioned on ``attribute_not_exists(seq)``
(a batch of entries is one ``TransactWriteItems`` of such puts). Two writers
can never both write *n*: no fork, no overwrite. A writer chains *n* to the
hash of *n-1*, which it has read; since the broker can neither update nor
delete entries (its role has no ``UpdateItem``/``DeleteItem`` on the table),
*n-1* exists and never changes, so no gap can be written either. A writer that
loses a race re-reads the head and retries with jittered exponential backoff,
within a bounded number of attempts.
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

from deploy_helper.exceptions import ClaimConflict, LedgerError

GENESIS = "0" * 64
MAX_PER_TRANSACTION = 100  # TransactWriteItems' limit
#: Items made from the ids of the entries they are written with.
Late = Callable[[list[str]], list[dict[str, Any]]]


def failed_conditions(exc: ClientError, count: int) -> list[int]:
    """Which of the first ``count`` items of a cancelled transaction failed their condition."""
    if count == 0 or exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return []
    reasons = exc.response.get("CancellationReasons") or []
    return [i for i, reason in enumerate(reasons[:count]) if reason.get("Code") == "ConditionalCheckFailed"]


def write_conditional(client: Any, items: list[dict[str, Any]]) -> None:
    """Write ``items`` (``TransactWriteItems`` items) all or nothing; ``ClaimConflict`` when a condition fails."""
    try:
        if len(items) == 1:
            ((operation, request),) = items[0].items()
            try:
                getattr(client, {"Update": "update_item", "Put": "put_item"}[operation])(**request)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                    raise ClaimConflict([0]) from exc
                raise
        else:
            client.transact_write_items(TransactItems=items)
    except ClientError as exc:
        failed = failed_conditions(exc, len(items))
        if failed:
            raise ClaimConflict(failed) from exc
        raise


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

    #: ``append_many`` writes other conditional items in the entries' transaction.
    takes_items = True

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        ledger: str = "main",
        clock: Callable[[], float] = time.time,
        max_attempts: int = 1000,
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
    def append_many(
        self, entries: list[dict[str, Any]], items: list[dict[str, Any]] | None = None, late: Late | None = None
    ) -> list[str]:
        """Append ``entries`` in order; return their ids (sequence numbers as text).

        ``items``: other ``TransactWriteItems`` items (conditional writes to the broker's
        own tables: a lease taken or given back, references) written in the same
        transaction as the entries, all or nothing. When one of their conditions fails,
        ``ClaimConflict`` names which and nothing is written. Entries and items must
        then fit in one transaction (``MAX_PER_TRANSACTION``).

        ``late``: made into more items, unconditional ones, once the entries' ids are known
        (each attempt at the chain's head gives them anew), written in the same transaction:
        a request's answer kept on its nonce (``deploy_helper.execution.answers``).
        """
        if items or late is not None:
            items = items or []
            if not entries or len(entries) + len(items) > MAX_PER_TRANSACTION:
                raise ValueError(f"{len(entries)} entries and {len(items)} items do not fit in one transaction")
            return self._append_chunk(entries, items, late)
        ids: list[str] = []
        for start in range(0, len(entries), MAX_PER_TRANSACTION):
            ids.extend(self._append_chunk(entries[start : start + MAX_PER_TRANSACTION]))
        return ids

    def append(self, entry: dict[str, Any]) -> str:
        return self.append_many([entry])[0]

    def _append_chunk(
        self, entries: list[dict[str, Any]], extra: list[dict[str, Any]] | None = None, late: Late | None = None
    ) -> list[str]:
        extra = extra or []
        with self._lock:
            for attempt in range(self._max_attempts):
                seq, prev = self._head if self._head is not None else self.head()
                # Unconditional items made from the ids this attempt gives the entries (after ``extra``,
                # so a failed condition's position still names an item of ``extra``).
                lates = late([str(seq + n) for n in range(1, len(entries) + 1)]) if late is not None else []
                items = list(extra) + lates
                if len(items) + len(entries) > MAX_PER_TRANSACTION:
                    raise ValueError(f"{len(entries)} entries and {len(items)} items do not fit in one transaction")
                hashes = []
                for offset, entry in enumerate(entries, start=1):
                    body, digest = seal_entry(seq + offset, prev, entry)
                    items.append(self._put(seq + offset, body, digest))
                    hashes.append(digest)
                    prev = digest
                try:
                    if len(items) == 1 and not extra and not lates:
                        self._client.put_item(**items[0]["Put"], ReturnValuesOnConditionCheckFailure="ALL_OLD")
                    else:
                        self._client.transact_write_items(TransactItems=items)
                except ClientError as exc:
                    code = exc.response["Error"]["Code"]
                    failed = failed_conditions(exc, len(extra))
                    if failed:
                        raise ClaimConflict(failed) from exc
                    if code in ("TransactionCanceledException", "ConditionalCheckFailedException"):
                        # Someone else appended. A refused single put returns the entry that holds
                        # our place: chain to it directly; otherwise re-read the head.
                        taken: Any = exc.response.get("Item")
                        if taken and attempt == 0:
                            self._head = (int(taken["seq"]["N"]), taken["hash"]["S"])
                            continue
                        self._head = None
                        time.sleep(self._random.uniform(0, min(0.1, 0.002 * 2 ** min(attempt, 6))))
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

    def entries(self, start: int = 1, end: int | None = None) -> Iterator[StoredEntry]:
        """Every stored entry from ``start`` on (up to ``end``, inclusive, if given), in order."""
        values = {":l": {"S": self.ledger}, ":s": {"N": str(start)}}
        condition = "#l = :l AND #s >= :s"
        if end is not None:
            condition = "#l = :l AND #s BETWEEN :s AND :e"
            values[":e"] = {"N": str(end)}
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#l": "ledger", "#s": "seq"},
            "ExpressionAttributeValues": values,
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
