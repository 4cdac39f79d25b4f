"""A deterministic slow call: chosen AWS calls of a boto3 Session wait until released.

``Stalls().install(session)`` hooks a session; clients created from it afterwards
are subject to its stalls::

    stalls = Stalls().install(session)
    stall = stalls.hold("s3.PutBucketPolicy")       # the first such call waits ...
    ...                                              # (another thread makes it)
    assert stall.wait_reached()                      # ... it is waiting now
    ...                                              # act meanwhile: take the lease over
    stall.release()                                  # ... and now it goes on

A held call waits on botocore's ``before-parameter-build`` event: after the caller
decided to make it, before its request is built, signed or sent -- the place where a writer
that is slow for any reason (a paused process, a throttled ledger, long retries of
an earlier call) has decided to write but has not yet written. ``reached`` is set
while a call is held, so a test needs no sleep: each side waits for an event the
other sets. A held call that is never released gives up after ``timeout`` seconds
with ``StallNotReleased`` (so a broken test fails instead of hanging).

Operations are fnmatch patterns on ``"<service>.<Operation>"`` as in
``deploy_helper.local.faults``; ``where`` narrows a stall to calls whose parameters it
accepts (``lambda p: p["TableName"] == "refs"``); ``skip`` lets that many matching calls
through first.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import boto3
    from botocore.model import OperationModel

_HOOK_ID = "deploy-helper-stalls"


class StallNotReleased(RuntimeError):
    """A held call was not released in time: the test that held it never let it go."""


@dataclass
class Stall:
    """One ``hold(...)`` instruction and its state."""

    operation: str
    where: Callable[[dict[str, Any]], bool] | None = None
    skip: int = 0
    times: int = 1
    #: Set once a call is being held.
    reached: threading.Event = field(default_factory=threading.Event)
    seen: int = 0
    held: int = 0
    _released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """Let every held call (and any later one) of this stall go on."""
        self._released.set()

    def wait_reached(self, timeout: float = 60.0) -> bool:
        """Wait until a call is being held; False if none was within ``timeout`` seconds."""
        return self.reached.wait(timeout)


class Stalls:
    """Holds chosen calls of the sessions it is installed on (see the module docstring)."""

    def __init__(self, timeout: float = 120.0) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._stalls: list[Stall] = []

    def install(self, session: boto3.Session) -> Stalls:
        session.events.register("before-parameter-build", self._before_build, unique_id=f"{_HOOK_ID}-{id(self)}")
        return self

    def hold(
        self,
        operation: str,
        *,
        where: Callable[[dict[str, Any]], bool] | None = None,
        skip: int = 0,
        times: int = 1,
    ) -> Stall:
        """Hold matching calls number ``skip + 1`` to ``skip + times`` until ``release()``."""
        if skip < 0 or times < 1:
            raise ValueError(f"skip must be >= 0 and times >= 1, not {skip} and {times}")
        stall = Stall(operation, where=where, skip=skip, times=times)
        with self._lock:
            self._stalls.append(stall)
        return stall

    def _before_build(self, model: OperationModel, params: dict[str, Any], **_: Any) -> None:
        operation = f"{model.service_model.service_id.hyphenize()}.{model.name}"
        with self._lock:
            stall = None
            for candidate in self._stalls:
                if not fnmatch.fnmatchcase(operation, candidate.operation):
                    continue
                if candidate.where is not None and not candidate.where(params):
                    continue
                candidate.seen += 1
                if stall is None and candidate.skip < candidate.seen <= candidate.skip + candidate.times:
                    stall = candidate
                    stall.held += 1
        if stall is None:
            return
        stall.reached.set()
        if not stall._released.wait(self._timeout):
            raise StallNotReleased(f"{operation} was held for {self._timeout:.0f} s and never released")
