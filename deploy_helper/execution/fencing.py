"""Writes to a leased resource start only while the lease outlasts them.

``guard(client)`` hooks a target-account client so that every HTTP attempt of a
write operation (anything but ``Get``/``List``/``Describe``/``Head``) first calls
``Lease.ensure`` of the lease the current write runs under (``fenced(lease)``) with
the attempt's bounded time: the client's connect plus read timeout. The hook runs
on botocore's ``before-send`` event, once per attempt and after the client's own
rate limiter and retry back-off have waited, so the retries that made a lease
expire under a slow writer (adaptive retries, long read timeouts) are each checked
again: once the lease is lost, the next attempt is never sent. A write attempted
on a guarded client outside ``fenced`` is refused (fail closed).

``check(seconds)`` is the same check for writes that are not AWS calls in the target
account (the reference table): their whole bounded time, retries included, is
``worst_case_seconds`` of their client's configuration.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from deploy_helper.exceptions import LeaseLostError

if TYPE_CHECKING:
    from botocore.config import Config

    from deploy_helper.execution.locks import Lease

_current: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("deploy_helper_lease", default=None)
_READS = ("Get", "List", "Describe", "Head")
_HOOK_ID = "deploy-helper-fence"
#: botocore's cap on one retry's back-off, and the most an ``x-amz-retry-after`` header may add.
_MAX_BACKOFF, _RETRY_AFTER = 20.0, 5.0
_DEFAULT_TIMEOUT = 60.0


@contextmanager
def fenced(lease: Lease) -> Iterator[Lease]:
    """Writes made in this block (and in threads started by ``grants.base.in_parallel``) run under ``lease``."""
    token = _current.set(lease)
    try:
        yield lease
    finally:
        _current.reset(token)


def check(seconds: float) -> None:
    """Before a write that may take ``seconds``: raise ``LeaseLostError`` unless the current lease outlasts it."""
    lease = _current.get()
    if lease is None:
        raise LeaseLostError("a write to a leased resource was attempted outside its lease; nothing was sent")
    lease.ensure(seconds)


def guard(client: Any) -> Any:
    """Fence every write attempt of ``client`` (see the module docstring); returns ``client``."""
    bound = attempt_seconds(client.meta.config)

    def before_send(event_name: str, **_: Any) -> None:
        operation = event_name.rsplit(".", 1)[-1]
        if not operation.startswith(_READS):
            check(bound)

    # 'before-send' (not 'before-send.<service>.<Operation>') and last: botocore calls the
    # handlers of a more specific event name first, and the adaptive rate limiter waits in
    # a 'before-send' handler; this check must come after every wait.
    client.meta.events.register_last("before-send", before_send, unique_id=_HOOK_ID)
    return client


def attempt_seconds(config: Config) -> float:
    """The longest one HTTP attempt of a client may take: its connect plus read timeout."""
    connect = getattr(config, "connect_timeout", None) or _DEFAULT_TIMEOUT
    read = getattr(config, "read_timeout", None) or _DEFAULT_TIMEOUT
    return float(connect) + float(read)


def worst_case_seconds(config: Config) -> float:
    """The longest one call of a client may take: every attempt and every back-off between them."""
    retries = getattr(config, "retries", None) or {}
    attempts = retries.get("total_max_attempts") or (retries.get("max_attempts", 4) + 1)
    backoff = sum(min(2.0**i, _MAX_BACKOFF) + _RETRY_AFTER for i in range(attempts - 1))
    return attempts * attempt_seconds(config) + backoff
