"""Serializing writers of one resource policy.

Bucket policies are read-modify-written as a whole: two brokers editing the
same bucket at once would lose one statement. The broker therefore holds a
lock per resource around read → plan → write. ``NoLock`` is for resources
whose writes are atomic per grant (Lambda permissions, KMS grants) and for
single-threaded local use.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol


class Locker(Protocol):
    """Hands out an exclusive hold on a resource for the duration of a ``with`` block."""

    def hold(self, resource: str) -> AbstractContextManager[object]: ...


class NoLock:
    """Does not serialize anything."""

    def hold(self, resource: str) -> AbstractContextManager[object]:
        return nullcontext()
