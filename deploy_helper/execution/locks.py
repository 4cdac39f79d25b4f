"""Serializing writers of one resource policy: leases that are renewed, checked and fenced.

The broker takes and gives back its leases inside the ledger's transactions
(``take_item``/``release_item``, see ``deploy_helper.execution.resource``);
``DynamoLocks.hold`` takes one on its own, for work that writes no entries with it.

Bucket policies are read-modify-written as a whole: two brokers editing the
same bucket at once would lose one statement. The broker therefore holds a
lease per resource around read → plan → write. ``NoLock`` is for resources
whose writes are atomic per grant and for single-threaded local use.

A lease is a time-limited claim, so a crashed holder blocks nobody for long. A
holder that is merely *slow* (long AWS retries, a throttled ledger) must not
outlive it and then write over a newer request's change. Three things see to that:

- the lease is renewed while its holder works (a conditional update on the holder's
  token: if it fails, the holder knows it lost the lease) -- by a heartbeat under
  ``DynamoLocks.hold``, and by ``ensure`` when a write needs more time than is left;
- ``Lease.ensure(seconds)`` runs immediately before every write: unless the term the
  table last confirmed (by the take or a renewal, timed from before that call was
  sent) still outlasts the write's bounded time plus a margin, it proves in the
  lease table that this holder still holds the lease (token and generation — the
  fencing token) and extends it; it refuses unless the lease then outlasts the
  write (``LeaseLostError``: nothing is sent). The margin also covers clock skew
  between brokers: another holder can take the lease only once it has expired by
  its own clock;
- where AWS offers a precondition, the write carries it too (Lambda's
  ``RevisionId``, see ``deploy_helper.grants.lambda_write``).

The lease item: ``{"pk": resource, "owner": token, "expires_at": epoch seconds,
"generation": n}``. ``generation`` grows by one with every holder; releasing
removes the owner and keeps the item, so generations stay monotonic until the
table's TTL (on ``expires_at``) removes an idle item.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.exceptions import ExecutionError, LeaseLostError

logger = logging.getLogger(__name__)


class Lease(Protocol):
    """A hold on one resource, checked before each write made under it."""

    resource: str

    def ensure(self, seconds: float) -> None:
        """Raise ``LeaseLostError`` unless the lease is held and lasts ``seconds`` more plus a margin."""


class Locker(Protocol):
    """Hands out an exclusive hold on a resource for the duration of a ``with`` block."""

    def hold(self, resource: str) -> AbstractContextManager[Lease]: ...


class Unfenced:
    """The lease of ``NoLock``: nothing to lose, so every write may go."""

    def __init__(self, resource: str) -> None:
        self.resource = resource

    def ensure(self, seconds: float) -> None:
        return None


class NoLock:
    """Does not serialize anything."""

    @contextmanager
    def hold(self, resource: str) -> Iterator[Lease]:
        yield Unfenced(resource)


@dataclass(frozen=True)
class LeaseView:
    """A lease as read: its generation, holder (None: free) and expiry (epoch seconds)."""

    generation: int
    owner: str | None
    expires_at: float

    def busy(self, now: float) -> bool:
        """Held by someone and not yet expired."""
        return self.owner is not None and self.expires_at >= now


class DynamoLease:
    """One holder's lease on one resource in a ``DynamoLocks`` table."""

    def __init__(self, locks: DynamoLocks, resource: str, token: str, generation: int, expires_at: float) -> None:
        self.resource = resource
        self.token = token
        self.generation = generation
        self._locks = locks
        self._expires_at = expires_at
        self._lost: str | None = None
        self._guard = threading.Lock()

    @property
    def expires_at(self) -> float:
        with self._guard:
            return self._expires_at

    @property
    def lost(self) -> str | None:
        """Why the lease is lost, or None while it is held."""
        with self._guard:
            return self._lost

    def remaining(self) -> float:
        """Seconds left on the lease by this holder's clock (negative once it has expired)."""
        return self.expires_at - self._locks.clock()

    def renew(self) -> bool:
        """Extend the lease to a full term if this holder still holds it; False (and ``lost``) if not.

        Raises ``ClientError``/``BotoCoreError`` when the table cannot be reached: the
        lease is then neither confirmed nor known lost.
        """
        if self.lost:
            return False
        expires_at = self._locks.renewal(self)
        if expires_at is None:
            with self._guard:
                self._lost = self._locks.lost_reason(self)
            return False
        with self._guard:
            self._expires_at = max(self._expires_at, expires_at)
        return True

    def ensure(self, seconds: float) -> None:
        margin = self._locks.margin
        if not self.lost and self.remaining() >= seconds + margin:
            # Held until ``expires_at`` as confirmed by the table (the last take or renewal);
            # nobody can take it before then, by their clock, within ``margin``: no call needed.
            return
        try:
            held = self.renew()
        except (ClientError, BotoCoreError) as exc:
            raise LeaseLostError(
                f"cannot confirm the lease on {self.resource} before writing ({_code(exc)}); "
                "nothing was sent — re-send the request"
            ) from exc
        if not held:
            raise LeaseLostError(self.lost or f"the lease on {self.resource} was lost; nothing was sent")
        left = self.remaining()
        if left < seconds + margin:
            raise LeaseLostError(
                f"the lease on {self.resource} has {left:.0f} s left, less than the {seconds:.0f} s a write may "
                f"take plus a {margin:.0f} s margin; nothing was sent — lengthen the lease or shorten the "
                "write's timeouts"
            )


class DynamoLocks:
    """Leases in a DynamoDB table: conditional update to take, renew and give back.

    A lease lasts ``lease_seconds`` from its last renewal, so a crashed holder never
    blocks a resource for longer than that; a waiter gives up after ``wait_seconds``
    with an error that says to retry. While a lease is held a heartbeat renews it
    every ``heartbeat_seconds`` (None: no heartbeat). ``margin_seconds`` is kept
    between the end of any write and the end of the lease. ``clock`` is the time
    by which leases are taken and expire.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        lease_seconds: int = 60,
        wait_seconds: float = 60.0,
        margin_seconds: float = 10.0,
        heartbeat_seconds: float | None = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lease_seconds <= margin_seconds:
            raise ValueError(f"lease_seconds ({lease_seconds}) must be longer than margin_seconds ({margin_seconds})")
        self._client = client
        self._table = table
        self.lease_seconds = lease_seconds
        self.margin = margin_seconds
        self._wait = wait_seconds
        self._heartbeat = heartbeat_seconds
        self.clock = clock
        self._random = random.Random()

    @contextmanager
    def hold(self, resource: str) -> Iterator[Lease]:
        lease = self._acquire(resource, uuid.uuid4().hex)
        stop = threading.Event()
        beat = None
        if self._heartbeat is not None:
            beat = threading.Thread(
                target=self._beat, args=(lease, stop, self._heartbeat), name="lease-heartbeat", daemon=True
            )
            beat.start()
        try:
            yield lease
        finally:
            stop.set()
            if beat is not None:
                beat.join()
            self._release(lease)

    # -- taken in the ledger's transaction ----------------------------------
    def key(self, resource: str) -> dict[str, Any]:
        return {"pk": {"S": resource}}

    @property
    def table(self) -> str:
        return self._table

    @property
    def wait_seconds(self) -> float:
        """How long a request waits for a busy resource before it gives up."""
        return self._wait

    def view(self, item: dict[str, Any] | None) -> LeaseView:
        """The lease as a consistent read of its item found it (``item`` None: never taken)."""
        if not item:
            return LeaseView(0, None, 0.0)
        return LeaseView(
            int(item.get("generation", {}).get("N", "0")),
            item.get("owner", {}).get("S"),
            float(item.get("expires_at", {}).get("N", "0")),
        )

    def peek(self, resource: str) -> LeaseView:
        """One consistent read of the lease (``DynamoLocks.take_item`` needs what it saw)."""
        item = self._client.get_item(TableName=self._table, Key=self.key(resource), ConsistentRead=True).get("Item")
        return self.view(item)

    def take_item(self, resource: str, seen: LeaseView) -> tuple[dict[str, Any], DynamoLease]:
        """A transaction item that takes the lease ``seen`` -- if nobody took it since -- and the lease it gives.

        The condition holds only while the generation is still the one seen and the lease
        is free or expired, so whatever was read when it was seen is still what the last
        holder left: no write under a lease can have happened in between.
        """
        token = uuid.uuid4().hex
        now = self.clock()
        expires_at = int(now + self.lease_seconds)
        values: dict[str, Any] = {
            ":token": {"S": token},
            ":exp": {"N": str(expires_at)},
            ":gen": {"N": str(seen.generation + 1)},
            ":now": {"N": str(int(now))},
        }
        if seen.generation == 0:
            condition = "attribute_not_exists(generation)"
        else:
            condition = "generation = :seen AND (attribute_not_exists(#o) OR expires_at < :now)"
            values[":seen"] = {"N": str(seen.generation)}
        item = {
            "Update": {
                "TableName": self._table,
                "Key": self.key(resource),
                "UpdateExpression": "SET #o = :token, expires_at = :exp, generation = :gen",
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#o": "owner"},
                "ExpressionAttributeValues": values,
            }
        }
        return item, DynamoLease(self, resource, token, seen.generation + 1, expires_at)

    def release_item(self, lease: DynamoLease) -> dict[str, Any]:
        """A transaction item that gives ``lease`` back (only while this holder still holds it)."""
        return {
            "Update": {
                "TableName": self._table,
                "Key": self.key(lease.resource),
                "UpdateExpression": "REMOVE #o SET expires_at = :now",
                "ConditionExpression": "#o = :token AND generation = :gen",
                "ExpressionAttributeNames": {"#o": "owner"},
                "ExpressionAttributeValues": {
                    ":token": {"S": lease.token},
                    ":gen": {"N": str(lease.generation)},
                    ":now": {"N": str(int(self.clock()))},
                },
            }
        }

    def release(self, lease: DynamoLease) -> None:
        """Give ``lease`` back on its own (when it could not go with the ledger's entries)."""
        self._release(lease)

    # -- the table ---------------------------------------------------------
    def _acquire(self, resource: str, token: str) -> DynamoLease:
        deadline = self.clock() + self._wait
        delay = 0.01
        while True:
            now = self.clock()
            expires_at = int(now + self.lease_seconds)
            try:
                response = self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": resource}},
                    UpdateExpression="SET #o = :token, expires_at = :exp ADD generation :one",
                    ConditionExpression="attribute_not_exists(pk) OR attribute_not_exists(#o) OR expires_at < :now",
                    ExpressionAttributeNames={"#o": "owner"},
                    ExpressionAttributeValues={
                        ":token": {"S": token},
                        ":exp": {"N": str(expires_at)},
                        ":now": {"N": str(int(now))},
                        ":one": {"N": "1"},
                    },
                    ReturnValues="UPDATED_NEW",
                )
                generation = int(response["Attributes"]["generation"]["N"])
                return DynamoLease(self, resource, token, generation, expires_at)
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":
                    raise ExecutionError(
                        f"cannot take the lock on {resource} ({_code(exc)}); nothing was changed"
                    ) from exc
            if self.clock() >= deadline:
                raise ExecutionError(
                    f"{resource} is being changed by another request and stayed busy for {self._wait:.0f} s; "
                    "nothing was changed — retry the request"
                )
            time.sleep(self._random.uniform(0, delay))
            delay = min(delay * 2, 0.5)

    def renewal(self, lease: DynamoLease) -> float | None:
        """Extend ``lease`` in the table if its holder still holds it: the new expiry, or None if not."""
        expires_at = int(self.clock() + self.lease_seconds)
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": lease.resource}},
                UpdateExpression="SET expires_at = :exp",
                ConditionExpression="#o = :token AND generation = :gen",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={
                    ":token": {"S": lease.token},
                    ":gen": {"N": str(lease.generation)},
                    ":exp": {"N": str(expires_at)},
                },
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                return None
            raise
        return expires_at

    def lost_reason(self, lease: DynamoLease) -> str:
        """Why ``lease`` is no longer held, in words for the ledger."""
        now = ""
        try:
            item = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": lease.resource}}, ConsistentRead=True
            ).get("Item")
            generation = int(item["generation"]["N"]) if item and "generation" in item else None
            if generation is not None and generation > lease.generation:
                now = (
                    f"; another request took it over (lease generation {generation}, "
                    f"this request had {lease.generation})"
                )
        except (ClientError, BotoCoreError, KeyError, ValueError):
            pass
        return (
            f"the lease on {lease.resource} was lost: it expired while this request worked{now}; "
            "nothing was sent — re-send the request"
        )

    def _release(self, lease: DynamoLease) -> None:
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": lease.resource}},
                UpdateExpression="REMOVE #o SET expires_at = :now",
                ConditionExpression="#o = :token",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":token": {"S": lease.token}, ":now": {"N": str(int(self.clock()))}},
            )
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":
                # Not fatal: the lease then ends when it expires. Raising here would hide
                # whatever ended the ``with`` block.
                logger.warning("could not give back the lease on %s: %s", lease.resource, exc)
        except BotoCoreError as exc:
            logger.warning("could not give back the lease on %s: %s", lease.resource, exc)

    def _beat(self, lease: DynamoLease, stop: threading.Event, every: float) -> None:
        while not stop.wait(every):
            try:
                if not lease.renew():
                    logger.warning("%s", lease.lost)
                    return
            except (ClientError, BotoCoreError) as exc:  # the next beat or the pre-write check tries again
                logger.warning("could not renew the lease on %s: %s", lease.resource, exc)


def _code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "Error"))
    return type(exc).__name__
