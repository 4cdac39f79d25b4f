"""Serializing writers of one resource policy.

Bucket policies are read-modify-written as a whole: two brokers editing the
same bucket at once would lose one statement. The broker therefore holds a
lock per resource around read → plan → write. ``NoLock`` is for resources
whose writes are atomic per grant (Lambda permissions, KMS grants) and for
single-threaded local use.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

from botocore.exceptions import ClientError

from deploy_helper.exceptions import ExecutionError


class Locker(Protocol):
    """Hands out an exclusive hold on a resource for the duration of a ``with`` block."""

    def hold(self, resource: str) -> AbstractContextManager[object]: ...


class NoLock:
    """Does not serialize anything."""

    def hold(self, resource: str) -> AbstractContextManager[object]:
        return nullcontext()


class DynamoLocks:
    """Leases in a DynamoDB table: conditional put to take, conditional delete to give back.

    A lease expires after ``lease_seconds`` so a crashed holder never blocks a
    resource for longer than that; a waiter gives up after ``wait_seconds``
    with an error that says to retry. Items carry a TTL attribute
    (``expires_at``) so the table cleans itself.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        lease_seconds: int = 60,
        wait_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._table = table
        self._lease = lease_seconds
        self._wait = wait_seconds
        self._clock = clock
        self._random = random.Random()

    @contextmanager
    def hold(self, resource: str) -> Iterator[object]:
        token = uuid.uuid4().hex
        self._acquire(resource, token)
        try:
            yield token
        finally:
            self._release(resource, token)

    def _acquire(self, resource: str, token: str) -> None:
        deadline = self._clock() + self._wait
        delay = 0.01
        while True:
            now = self._clock()
            try:
                self._client.put_item(
                    TableName=self._table,
                    Item={
                        "pk": {"S": resource},
                        "owner": {"S": token},
                        "expires_at": {"N": str(int(now + self._lease))},
                    },
                    ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                    ExpressionAttributeValues={":now": {"N": str(int(now))}},
                )
                return
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise ExecutionError(
                        f"cannot take the lock on {resource} ({exc.response['Error']['Code']}); nothing was changed"
                    ) from exc
            if self._clock() >= deadline:
                raise ExecutionError(
                    f"{resource} is being changed by another request and stayed busy for {self._wait:.0f} s; "
                    "nothing was changed — retry the request"
                )
            time.sleep(self._random.uniform(0, delay))
            delay = min(delay * 2, 0.5)

    def _release(self, resource: str, token: str) -> None:
        try:
            self._client.delete_item(
                TableName=self._table,
                Key={"pk": {"S": resource}},
                ConditionExpression="#o = :token",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":token": {"S": token}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
