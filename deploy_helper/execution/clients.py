"""Target-account clients, built once per target role, service and region; every request signs as itself.

Building a botocore client costs milliseconds of CPU (its class and methods, its event
handlers, its endpoint ruleset, its HTTP pool): a request that touched 100 accounts built
100 of them, and the next request built them again. ``ClientPool`` builds one client per
(role, service, region) on first use and keeps it (``MAX_CLIENTS``; the least recently used
go first). Clients stay per target account, so each account's adaptive rate limiter and
retry quota are its own, and they keep what they learned from one request to the next.

CloudTrail attribution is unchanged: each request still assumes the role under its own
name (``deploy_helper.execution.sessions``) and each call is signed with *that request's*
credentials. A request works through a ``RequestClient``, a view of the shared client bound
to the request's credentials: every call made through the view (an operation, a paginator's
page, a waiter's poll) runs with the request's credentials in a context variable, which the
shared client's credentials (``BoundCredentials``) read when botocore signs the request. A
call made on a shared client outside any view has no credentials and is never sent (fail
closed).

Hooks stay the request's too: ``view.meta.events`` is the view's own event emitter, and the
shared client forwards every event of a call (``FORWARDED``) to the emitter of the view that
makes the call. A hook a request registers (the lease fence of ``deploy_helper.execution.fencing``,
drift's read-only guard) sees only that request's calls and goes away with its view. Forwarded
handlers run after the shared client's own: after the adaptive rate limiter's wait in
``before-send``, as the fence needs. Registering for an event that is not forwarded raises.

botocore has no public way to do the binding; ``deploy_helper.execution.botocore_compat`` holds
the two internals it uses, checks them, and the pool falls back to a new client per request
(the plain path) when they are missing.
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from types import MethodType
from typing import TYPE_CHECKING, Any

from botocore.hooks import HierarchicalEmitter

from deploy_helper.execution import botocore_compat

if TYPE_CHECKING:
    from typing import TypeAlias

    import boto3
    import botocore.session
    from botocore.config import Config
    from botocore.credentials import ReadOnlyCredentials

    #: What makes the broker's clients: a boto3 session (tests, the CLI, the local harness) or,
    #: in the function, a botocore one behind ``BotocoreSession``; only ``client`` is used.
    Session: TypeAlias = "boto3.Session | BotocoreSession"


class BotocoreSession:
    """A botocore session with ``boto3.Session.client``'s signature: the broker's clients without boto3.

    The broker uses nothing of boto3 but ``Session.client``, which is botocore's
    ``create_client``; importing boto3 (its resources, their docs, and s3transfer with
    ``multiprocessing`` through the S3 client's injected methods) costs a cold start tens of
    milliseconds for nothing. Credentials, region and endpoints come from the environment
    and configuration files as with ``boto3.Session()``. Its data loader is the process's
    (``deploy_helper.trust.identifiers.botocore_loader``): what it parses for the clients, the
    region checks of a request's identifiers read without parsing it again.
    """

    def __init__(self, session: botocore.session.Session | None = None) -> None:
        if session is None:
            import botocore.session

            from deploy_helper.trust.identifiers import botocore_loader

            session = botocore.session.get_session()
            session.register_component("data_loader", botocore_loader())
        self.botocore_session = session

    def client(self, service_name: str, region_name: str | None = None, **kwargs: Any) -> Any:
        return self.botocore_session.create_client(service_name, region_name=region_name, **kwargs)


#: Shared clients kept: a few services in each of the accounts recent requests touched. One
#: client holds about 150 KiB (its event handlers and HTTP pool; its class is shared), so
#: the pool stays under about 75 MB.
MAX_CLIENTS = 512
#: The events a client emits while it makes a call, forwarded to the calling view's hooks.
FORWARDED = (
    "provide-client-params",
    "before-parameter-build",
    "before-endpoint-resolution",
    "before-call",
    "request-created",
    "choose-signer",
    "before-sign",
    "before-send",
    "response-received",
    "needs-retry",
    "after-call",
    "after-call-error",
)
_UNBOUND = "deploy-helper-unbound"


@dataclass(frozen=True)
class _Binding:
    credentials: ReadOnlyCredentials
    events: HierarchicalEmitter


_current: contextvars.ContextVar[_Binding | None] = contextvars.ContextVar("deploy_helper_target_call", default=None)


class BoundCredentials:
    """A shared client's credentials: those of the request whose view makes the current call."""

    method = "deploy-helper-request"

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        binding = _current.get()
        if binding is None:
            from botocore.exceptions import NoCredentialsError

            raise NoCredentialsError()
        return binding.credentials

    @property
    def access_key(self) -> str | None:
        return self.get_frozen_credentials().access_key

    @property
    def secret_key(self) -> str | None:
        return self.get_frozen_credentials().secret_key

    @property
    def token(self) -> str | None:
        return self.get_frozen_credentials().token


class _ViewEvents(HierarchicalEmitter):
    """A view's own hooks; only events the shared client forwards may be registered."""

    def register(
        self, event_name: str, handler: Any, unique_id: Any = None, unique_id_uses_count: bool = False
    ) -> None:
        _check_forwarded(event_name)
        super().register(event_name, handler, unique_id, unique_id_uses_count)

    def register_first(
        self, event_name: str, handler: Any, unique_id: Any = None, unique_id_uses_count: bool = False
    ) -> None:
        _check_forwarded(event_name)
        super().register_first(event_name, handler, unique_id, unique_id_uses_count)

    def register_last(
        self, event_name: str, handler: Any, unique_id: Any = None, unique_id_uses_count: bool = False
    ) -> None:
        _check_forwarded(event_name)
        super().register_last(event_name, handler, unique_id, unique_id_uses_count)


def _check_forwarded(event_name: str) -> None:
    if event_name.split(".", 1)[0] not in FORWARDED:
        raise ValueError(f"{event_name!r} is not forwarded to a request's hooks; forwarded: {', '.join(FORWARDED)}")


def _forward(event_name: str, **kwargs: Any) -> Any:
    """On the shared client: the calling view's hooks for this event (a response ends the chain)."""
    binding = _current.get()
    if binding is None:
        return None
    _, response = binding.events.emit_until_response(event_name, **kwargs)
    return response


class _ViewMeta:
    """The shared client's ``meta``, with the view's own ``events``."""

    def __init__(self, meta: Any, events: HierarchicalEmitter) -> None:
        self._meta = meta
        self.events = events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meta, name)


class RequestClient:
    """A shared client as one request sees it: its calls signed with the request's credentials, its own hooks."""

    def __init__(self, shared: Any, credentials: ReadOnlyCredentials) -> None:
        self._shared = shared
        self._api_call = botocore_compat.api_call(shared)
        self._binding = _Binding(credentials, _ViewEvents())
        self.meta = _ViewMeta(shared.meta, self._binding.events)

    @property
    def shared_client(self) -> Any:
        """The client this view calls through (the same for every request on this role, service and region)."""
        return self._shared

    def _make_api_call(self, operation_name: str, api_params: dict[str, Any]) -> Any:
        token = _current.set(self._binding)
        try:
            return self._api_call(operation_name, api_params)
        finally:
            _current.reset(token)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._shared, name)
        if isinstance(value, MethodType) and value.__self__ is self._shared:
            # The client's own methods run on the view, so their calls come back to _make_api_call.
            # (Bound afresh each time: kept on the view, they would make it a reference cycle.)
            value = MethodType(value.__func__, self)
        return value

    def __repr__(self) -> str:
        return f"RequestClient({self._shared!r})"


class ClientPool:
    """Target-account clients of one session, kept per (role, service, region)."""

    def __init__(
        self,
        session: Session,
        config: Config | None = None,
        *,
        max_clients: int = MAX_CLIENTS,
        share: bool = True,
    ) -> None:
        self._session = session
        self._config = config
        self._max = max_clients
        self.sharing = share and botocore_compat.supports_shared_clients()
        #: Whether clients of one service share their class (``botocore_compat.share_client_classes``).
        self._classes = False
        if self.sharing:
            botocore_compat.share_endpoint_providers()
            self._classes = botocore_compat.share_client_classes()
        self._shared: OrderedDict[tuple[str, str, str | None], Any] = OrderedDict()
        self._lock = threading.Lock()
        #: Clients built so far (shared or plain), for the benchmark and tests.
        self.built = 0

    def client(self, role_arn: str, account: str, service: str, region: str | None, credentials: dict[str, Any]) -> Any:
        """A client of ``service`` in ``region`` signing as ``credentials`` (an AssumeRole answer's)."""
        if self.sharing:
            shared = self._shared_client(role_arn, account, service, region)
            if shared is not None:
                from botocore.credentials import ReadOnlyCredentials

                frozen = ReadOnlyCredentials(
                    credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"]
                )
                return RequestClient(shared, frozen)
        return self._build(
            account,
            service,
            region,
            credentials["AccessKeyId"],
            credentials["SecretAccessKey"],
            credentials["SessionToken"],
        )

    def _shared_client(self, role_arn: str, account: str, service: str, region: str | None) -> Any:
        key = (role_arn, service, region)
        with self._lock:
            client = self._shared.get(key)
            if client is not None:
                self._shared.move_to_end(key)
                return client
            # One build at a time: a botocore session is not safe for concurrent client creation,
            # and the build is CPU only.
            client = self._build(account, service, region, _UNBOUND, _UNBOUND, None)
            if not botocore_compat.bind_credentials(client, BoundCredentials()):
                self.sharing = False
                return None
            for event in FORWARDED:
                client.meta.events.register_last(event, _forward, unique_id=f"deploy-helper-view-{event}")
            self._shared[key] = client
            while len(self._shared) > self._max:
                self._shared.popitem(last=False)  # views still in use keep theirs alive
            return client

    def _build(self, account: str, service: str, region: str | None, key: str, secret: str, token: str | None) -> Any:
        with botocore_compat.client_classes_shared() if self._classes else nullcontext():
            client = self._session.client(
                service,  # type: ignore[call-overload]
                region_name=region,
                aws_access_key_id=key,
                aws_secret_access_key=secret,
                aws_session_token=token,
                config=self._config,
            )
        if service == "s3":
            client.meta.events.register("provide-client-params.s3", _BucketOwner(account))
        self.built += 1
        return client


class _BucketOwner:
    """Names the target account as the bucket's owner on every S3 call that accepts it.

    S3 refuses the call (403 AccessDenied) when another account owns the bucket, so a
    bucket name that changed hands is never read or written.
    """

    def __init__(self, account: str) -> None:
        self.account = account

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if model.input_shape is not None and "ExpectedBucketOwner" in model.input_shape.members:
            params.setdefault("ExpectedBucketOwner", self.account)
