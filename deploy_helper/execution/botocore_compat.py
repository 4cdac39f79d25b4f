"""The places where target-account clients lean on botocore internals, and nowhere else.

botocore has no public way to (1) give an already-built client a credentials object
that is resolved when each request is signed, or (2) make the clients of one service
share their parsed endpoint ruleset and their class. All are done here, each checked against the
installed botocore before use; when a check fails, the caller falls back to the plain
path (a new client per request, each parsing its own ruleset), which is slower but
needs nothing of botocore's internals. ``tests/unit/test_botocore_compat.py`` fails
loudly when an upgrade of botocore removes what this module relies on.

- ``bind_credentials(client, credentials)``: the client's request signer keeps its
  credentials in ``_request_signer._credentials`` and calls their
  ``get_frozen_credentials()`` once per signature;
- ``api_call(client)``: every operation, paginator page and waiter poll of a client goes
  through ``BaseClient._make_api_call(operation_name, api_params)``;
- ``share_endpoint_providers()``: ``botocore.regions.EndpointRulesetResolver`` builds an
  ``EndpointProvider`` from the module global ``botocore.regions.EndpointProvider`` for
  every client, parsing the whole ruleset each time (about a third of a client's creation).
  The providers are immutable once built (their ``resolve_endpoint`` keeps a thread-safe
  LRU cache), so one per (ruleset, partitions, excluded parameters) serves every client.
- ``share_client_classes()`` / ``client_classes_shared()``: ``ClientCreator._create_client_class``
  builds a new class for every client, with a method and a docstring object per operation
  (about 100 KiB and a fifth of a client's creation). The class depends only on the service
  model (one object per loader) and the session's ``creating-client-class`` handlers, so
  clients built inside ``client_classes_shared()`` reuse the first class built for the same
  (session emitter, service, model); clients built elsewhere are untouched.
- ``keep_retries_apart()`` / ``retries_apart()`` / ``account_retries(client, events)``:
  ``ClientCreator._register_retries(client)`` gives each new client, in the ``standard`` and
  ``adaptive`` retry modes, a retry handler with its retry quota
  (``botocore.retries.standard.register_retry_handler``) and an adaptive rate limiter
  (``botocore.retries.adaptive.register_retry_handler``), both registered on the client's
  events. A client built inside ``retries_apart()`` gets neither (and is marked so:
  ``retries_kept_apart(client)``); ``account_retries`` registers a fresh pair, built by the
  same two botocore functions, on an emitter of the caller's (one per target account). The
  ``legacy`` mode keeps no state between calls and is left on the client.
- ``keep_host_pools(client, hosts)``: a client's HTTP session (``client._endpoint.http_session``)
  keeps its connections in a urllib3 ``PoolManager`` (``_manager``), one pool per host, at most
  10 hosts (the least recently used closed first). A client of one account met one or two S3
  bucket hosts (virtual-hosted addressing: a host per bucket); one client for every account
  meets all of them, so it keeps more.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import SimpleNamespace
from typing import Any

_install_lock = threading.Lock()
_providers: dict[tuple[int, int, frozenset[str]], tuple[Any, Any, Any]] = {}
#: Rulesets are per botocore loader and service: a process with many sessions starts over past this.
MAX_PROVIDERS = 256


def supports_shared_clients() -> bool:
    """Whether this botocore has the chokepoint a shared client's calls are bound at."""
    from botocore.client import BaseClient

    return callable(getattr(BaseClient, "_make_api_call", None))


def bind_credentials(client: Any, credentials: Any) -> bool:
    """Sign every later request of ``client`` with ``credentials``; False if botocore changed."""
    signer = getattr(client, "_request_signer", None)
    if signer is None or not hasattr(signer, "_credentials"):
        return False
    signer._credentials = credentials
    return True


def api_call(client: Any) -> Any:
    """The bound method every call of ``client`` goes through."""
    return client._make_api_call


def share_endpoint_providers() -> bool:
    """Install the shared endpoint providers (idempotent); False (and nothing changed) if botocore changed."""
    import botocore.regions

    with _install_lock:
        current = getattr(botocore.regions, "EndpointProvider", None)
        if current is _shared_provider:
            return True
        if not isinstance(current, type) or not hasattr(botocore.regions, "EndpointRulesetResolver"):
            return False
        global _original
        _original = current
        botocore.regions.EndpointProvider = _shared_provider  # type: ignore[attr-defined]
        return True


_original: Any = None


def _shared_provider(ruleset_data: Any, partition_data: Any, excluded_params: Any = None) -> Any:
    """One provider per ruleset: the loader keeps each service's ruleset (and the partitions) as one object."""
    key = (id(ruleset_data), id(partition_data), frozenset(excluded_params or ()))
    kept = _providers.get(key)
    if kept is not None:
        return kept[0]
    provider = _original(ruleset_data=ruleset_data, partition_data=partition_data, excluded_params=excluded_params)
    with _install_lock:
        if len(_providers) >= MAX_PROVIDERS:
            _providers.clear()
        # The data are kept with the provider: their ids stay theirs while the key is in use.
        kept = _providers.setdefault(key, (provider, ruleset_data, partition_data))
    return kept[0]


_classes: dict[tuple[int, str, int], tuple[type, Any, Any]] = {}
_sharing_classes: contextvars.ContextVar[bool] = contextvars.ContextVar("deploy_helper_client_classes", default=False)
_SHARED_MARK = "_deploy_helper_shared"


def share_client_classes() -> bool:
    """Install the class cache (idempotent); False (and nothing changed) if botocore changed."""
    from botocore.client import ClientCreator

    with _install_lock:
        original = getattr(ClientCreator, "_create_client_class", None)
        if original is None:
            return False
        if getattr(original, _SHARED_MARK, False):
            return True

        def _create_client_class(self: Any, service_name: str, service_model: Any) -> Any:
            emitter = getattr(self, "_event_emitter", None)
            description = getattr(service_model, "_service_description", None)
            if not _sharing_classes.get() or emitter is None or description is None:
                return original(self, service_name, service_model)
            key = (id(emitter), service_name, id(description))
            kept = _classes.get(key)
            if kept is None:
                built = original(self, service_name, service_model)
                with _install_lock:
                    if len(_classes) >= MAX_PROVIDERS:
                        _classes.clear()
                    # The emitter and model are kept with the class: their ids stay theirs.
                    kept = _classes.setdefault(key, (built, emitter, description))
            return kept[0]

        setattr(_create_client_class, _SHARED_MARK, True)
        ClientCreator._create_client_class = _create_client_class  # type: ignore[attr-defined]
        return True


def client_classes_shared() -> AbstractContextManager[None]:
    """Clients built in this block (this thread) share their class with earlier ones of their service."""
    return _turned_on(_sharing_classes)


@contextmanager
def _turned_on(flag: contextvars.ContextVar[bool]) -> Iterator[None]:
    """``flag`` is True in this block (this thread), as it was before after it."""
    token = flag.set(True)
    try:
        yield
    finally:
        flag.reset(token)


#: The retry modes whose handlers keep state between calls (retry quota, rate limiter).
APART_MODES = ("standard", "adaptive")
_retries_apart: contextvars.ContextVar[bool] = contextvars.ContextVar("deploy_helper_retries_apart", default=False)
_APART_MARK = "_deploy_helper_retries_apart"


def keep_retries_apart() -> bool:
    """Install the retry registration that ``retries_apart()`` turns off (idempotent); False if botocore changed."""
    from botocore.client import ClientCreator

    try:
        from botocore.retries import adaptive, standard
    except ImportError:
        return False
    if not (
        callable(getattr(standard, "register_retry_handler", None))
        and callable(getattr(adaptive, "register_retry_handler", None))
    ):
        return False
    with _install_lock:
        original = getattr(ClientCreator, "_register_retries", None)
        if original is None:
            return False
        if getattr(original, _SHARED_MARK, False):
            return True

        def _register_retries(self: Any, client: Any) -> Any:
            if _retries_apart.get() and _retry_mode(client) in APART_MODES:
                setattr(client, _APART_MARK, True)
                return None
            return original(self, client)

        setattr(_register_retries, _SHARED_MARK, True)
        ClientCreator._register_retries = _register_retries  # type: ignore[attr-defined]
        return True


def retries_apart() -> AbstractContextManager[None]:
    """Clients built in this block (this thread) get no retry handler or rate limiter of their own."""
    return _turned_on(_retries_apart)


def retries_kept_apart(client: Any) -> bool:
    """Whether ``client`` was built without its own retry handler and rate limiter (``retries_apart``)."""
    return bool(client.__dict__.get(_APART_MARK, False))


def _retry_mode(client: Any) -> Any:
    retries = getattr(client.meta.config, "retries", None) or {}
    return retries.get("mode")


def account_retries(client: Any, events: Any) -> tuple[Any, Any]:
    """Register on ``events`` the retry handler (with its quota) and rate limiter botocore would give ``client``.

    Returns (retry handler, adaptive rate limiter), each None when the client's retry mode has none.
    """
    mode = _retry_mode(client)
    if mode not in APART_MODES:
        return None, None
    from botocore.retries import adaptive, standard

    stand_in: Any = SimpleNamespace(meta=SimpleNamespace(events=events, service_model=client.meta.service_model))
    total = client.meta.config.retries.get("total_max_attempts")
    kwargs = {} if total is None else {"max_attempts": total}
    handler = standard.register_retry_handler(stand_in, **kwargs)
    limiter = adaptive.register_retry_handler(stand_in) if mode == "adaptive" else None
    return handler, limiter


def keep_host_pools(client: Any, hosts: int) -> bool:
    """Let ``client`` keep the connections of ``hosts`` hosts; False (and nothing changed) if botocore changed."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    pools: Any = getattr(getattr(session, "_manager", None), "pools", None)
    if not isinstance(getattr(pools, "_maxsize", None), int):
        return False
    pools._maxsize = max(pools._maxsize, hosts)
    return True
