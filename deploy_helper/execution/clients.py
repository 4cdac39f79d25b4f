"""Target-account clients, built once per service and region; every request signs as itself.

Building a botocore client costs milliseconds of CPU (its class and methods, its event
handlers, its endpoint ruleset, its HTTP pool): a request that touched 100 accounts built
100 of them per service. ``ClientPool`` builds one client per (service, region) on first
use, shares it between every target account and request, and keeps it (``MAX_CLIENTS``; the
least recently used go first).

What must stay per target account is kept per account, outside the client, in an
``AccountState`` (one per role, service and region, kept across requests, ``MAX_CLIENTS`` too):
the retry handler with its retry quota and the adaptive rate limiter (built by botocore's own
functions, ``botocore_compat.account_retries``), so that throttling in one account neither
slows nor exhausts the retries of another and each keeps what it learned from one request
to the next; and the ``ExpectedBucketOwner`` of its S3 calls (``_BucketOwner``). The shared
client has no retry handler or rate limiter of its own (``botocore_compat.retries_apart``).

CloudTrail attribution is unchanged: each request still assumes the role under its own
name (``deploy_helper.execution.sessions``) and each call is signed with *that request's*
credentials. A request works through a ``RequestClient``, a view of the shared client bound
to the request's credentials and its account: every call made through the view (an
operation, a paginator's page, a waiter's poll) runs with them in a context variable, which
the shared client's credentials (``BoundCredentials``) read when botocore signs the request.
A call made on a shared client outside any view has no credentials and is never sent (fail
closed).

Hooks stay the request's too: ``view.meta.events`` is the view's own event emitter. The
shared client forwards the events its account's handlers use (``ACCOUNT_EVENTS``) to the
calling view's account first, before the shared client's own handlers (botocore registers
the retry handlers on the most specific event names, so they ran early), and every event of
a call (``FORWARDED``) to the calling view's emitter last, after the shared client's own and
so after the rate limiter's wait in ``before-send``, as the lease fence of
``deploy_helper.execution.fencing`` needs. A hook a request registers (the fence, drift's
read-only guard) sees only that request's calls and goes away with its view.
Registering for an event that is not forwarded raises.

botocore has no public way to do any of this; ``deploy_helper.execution.botocore_compat``
holds the internals used, checks them, and the pool falls back to a client per target
account (retries on the client) when the retry internals are missing or the retry mode is
``legacy``, or to a new client
per request (the plain path) when the binding internals are.
"""

from __future__ import annotations

import contextvars
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from types import MethodType
from typing import TYPE_CHECKING, Any

from botocore.hooks import HierarchicalEmitter, first_non_none_response

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


#: Shared clients kept (a few services in a few regions, or, without ``botocore_compat``'s
#: retry internals, a few services in each of the accounts recent requests touched), and
#: accounts' retry states kept. One client holds about 150 KiB (its event handlers and HTTP
#: pool; its class is shared), so the pool stays under about 75 MB.
MAX_CLIENTS = 512
#: Hosts a client for every account keeps connections to: S3 has a host per bucket.
SHARED_HOSTS = 256
#: Connections a client for every account keeps per host (botocore keeps 10): Lambda and KMS
#: have one host per region, which every account's calls share.
SHARED_CONNECTIONS = 64
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
#: The events an account's own handlers may use (botocore's retry handler, quota and rate
#: limiter; the bucket owner): forwarded to them, first.
ACCOUNT_EVENTS = ("provide-client-params", "request-created", "before-send", "needs-retry", "after-call")
#: The forwarded events botocore emits until a handler answers (the others reach every handler).
_UNTIL_RESPONSE = frozenset({"before-call", "choose-signer"})
_UNBOUND = "deploy-helper-unbound"


@dataclass(frozen=True)
class AccountState:
    """What one target account (role, service, region) keeps of its own on a shared client."""

    account: str
    events: HierarchicalEmitter
    #: botocore's retry handler (with the account's retry quota) and adaptive rate limiter.
    retry_handler: Any
    rate_limiter: Any


@dataclass(frozen=True)
class _Binding:
    credentials: ReadOnlyCredentials
    events: HierarchicalEmitter
    account: AccountState | None = None


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

    forwarded: tuple[str, ...] = FORWARDED

    def register(
        self, event_name: str, handler: Any, unique_id: Any = None, unique_id_uses_count: bool = False
    ) -> None:
        self._check_forwarded(event_name)
        super().register(event_name, handler, unique_id, unique_id_uses_count)

    def register_first(
        self, event_name: str, handler: Any, unique_id: Any = None, unique_id_uses_count: bool = False
    ) -> None:
        self._check_forwarded(event_name)
        super().register_first(event_name, handler, unique_id, unique_id_uses_count)

    def register_last(
        self, event_name: str, handler: Any, unique_id: Any = None, unique_id_uses_count: bool = False
    ) -> None:
        self._check_forwarded(event_name)
        super().register_last(event_name, handler, unique_id, unique_id_uses_count)

    def _check_forwarded(self, event_name: str) -> None:
        if event_name.split(".", 1)[0] not in self.forwarded:
            raise ValueError(
                f"{event_name!r} is not forwarded to a request's hooks; forwarded: {', '.join(self.forwarded)}"
            )


class _AccountEvents(_ViewEvents):
    """An account's own handlers; only events forwarded to them may be registered."""

    forwarded = ACCOUNT_EVENTS


def _forward(event_name: str, **kwargs: Any) -> Any:
    """On the shared client, last: the calling view's hooks for this event."""
    binding = _current.get()
    if binding is None:
        return None
    return _emit(binding.events, event_name, kwargs)


def _forward_account(event_name: str, **kwargs: Any) -> Any:
    """On the shared client, first: the calling view's account's handlers for this event."""
    binding = _current.get()
    if binding is None or binding.account is None:
        return None
    return _emit(binding.account.events, event_name, kwargs)


def _emit(events: HierarchicalEmitter, event_name: str, kwargs: dict[str, Any]) -> Any:
    """Emit as botocore emits this event: until a response, or to every handler (the first response wins)."""
    if event_name.split(".", 1)[0] in _UNTIL_RESPONSE:
        return events.emit_until_response(event_name, **kwargs)[1]
    return first_non_none_response(events.emit(event_name, **kwargs))


class _ViewMeta:
    """The shared client's ``meta``, with the view's own ``events``."""

    def __init__(self, meta: Any, events: HierarchicalEmitter) -> None:
        self._meta = meta
        self.events = events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._meta, name)


class RequestClient:
    """A shared client as one request sees it: its calls signed with the request's credentials, its own hooks."""

    def __init__(self, shared: Any, credentials: ReadOnlyCredentials, account: AccountState | None = None) -> None:
        self._shared = shared
        self._api_call = botocore_compat.api_call(shared)
        self._binding = _Binding(credentials, _ViewEvents(), account)
        self.meta = _ViewMeta(shared.meta, self._binding.events)

    @property
    def shared_client(self) -> Any:
        """The client this view calls through (the same for every account and request on this service and region)."""
        return self._shared

    @property
    def account_state(self) -> AccountState | None:
        """The account's own retry handler, rate limiter and bucket owner (None: the shared client is the account's)."""
        return self._binding.account

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
    """Target-account clients of one session, kept per (service, region), and accounts' own retry states."""

    def __init__(
        self,
        session: Session,
        config: Config | None = None,
        *,
        max_clients: int = MAX_CLIENTS,
        share: bool = True,
        connections: int = SHARED_CONNECTIONS,
    ) -> None:
        self._session = session
        self._config = config
        self._connections = connections
        self._max = max_clients
        self.sharing = share and botocore_compat.supports_shared_clients()
        #: Whether clients of one service share their class (``botocore_compat.share_client_classes``).
        self._classes = False
        #: Whether one client serves every account (their retry states apart), or one per role.
        self.across_accounts = False
        if self.sharing:
            botocore_compat.share_endpoint_providers()
            self._classes = botocore_compat.share_client_classes()
            self.across_accounts = botocore_compat.keep_retries_apart()
        self._shared: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._accounts: OrderedDict[tuple[str, str, str | None], AccountState] = OrderedDict()
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
                return RequestClient(shared[0], frozen, shared[1])
        return self._build(
            account,
            service,
            region,
            credentials["AccessKeyId"],
            credentials["SecretAccessKey"],
            credentials["SessionToken"],
        )

    def _shared_client(
        self, role_arn: str, account: str, service: str, region: str | None
    ) -> tuple[Any, AccountState | None] | None:
        """The shared client and the account's own state on it (None: on a client of the account's own)."""
        with self._lock:
            if self.across_accounts:
                client = self._kept((service, region or ""), None, service, region)
                if client is not None:
                    state = self._account(role_arn, account, service, region, client)
                    if state is not None:
                        return client, state
                    self._fall_back()
                elif not self.sharing:
                    return None
            client = self._kept((role_arn, service, region or ""), account, service, region)
            return None if client is None else (client, None)

    def _kept(self, key: tuple[str, ...], account: str | None, service: str, region: str | None) -> Any:
        """The shared client under ``key``, built on first use (``account``: the one account it serves)."""
        client = self._shared.get(key)
        if client is not None:
            self._shared.move_to_end(key)
            return client
        # One build at a time: a botocore session is not safe for concurrent client creation,
        # and the build is CPU only.
        if account is None:
            with botocore_compat.retries_apart():
                client = self._build(None, service, region, _UNBOUND, _UNBOUND, None, self._across_config())
            if not (
                botocore_compat.retries_kept_apart(client) and botocore_compat.keep_host_pools(client, SHARED_HOSTS)
            ):
                self._fall_back()  # botocore gave the client retries of its own after all, or changed
                return None
        else:
            client = self._build(account, service, region, _UNBOUND, _UNBOUND, None)
        if not botocore_compat.bind_credentials(client, BoundCredentials()):
            self.sharing = self.across_accounts = False
            return None
        for event in ACCOUNT_EVENTS if account is None else ():
            client.meta.events.register_first(event, _forward_account, unique_id=f"deploy-helper-account-{event}")
        for event in FORWARDED:
            client.meta.events.register_last(event, _forward, unique_id=f"deploy-helper-view-{event}")
        self._shared[key] = client
        while len(self._shared) > self._max:
            self._shared.popitem(last=False)  # views still in use keep theirs alive
        return client

    def account_states(self) -> dict[tuple[str, str, str | None], AccountState]:
        """The accounts' own states kept, by (role, service, region)."""
        with self._lock:
            return dict(self._accounts)

    def _fall_back(self) -> None:
        """From now on, one client per role, service and region, which keeps the account's retries itself."""
        self.across_accounts = False
        self._shared.clear()
        self._accounts.clear()

    def _account(
        self, role_arn: str, account: str, service: str, region: str | None, shared: Any
    ) -> AccountState | None:
        """The account's own retry state and bucket owner on ``shared``: built on first use, then kept."""
        key = (role_arn, service, region)
        state = self._accounts.get(key)
        if state is not None:
            self._accounts.move_to_end(key)
            return state
        events = _AccountEvents()
        try:
            handler, limiter = botocore_compat.account_retries(shared, events)
        except ValueError:  # botocore registers them on an event the shared client does not forward
            return None
        if service == "s3":
            events.register("provide-client-params.s3", _BucketOwner(account))
        state = AccountState(account, events, handler, limiter)
        self._accounts[key] = state
        while len(self._accounts) > self._max:
            self._accounts.popitem(last=False)  # views still in use keep theirs
        return state

    def _across_config(self) -> Config:
        """The configuration of a client for every account: room for every account's connections."""
        from botocore.config import Config

        config = self._config or Config()
        connections = max(getattr(config, "max_pool_connections", None) or 10, self._connections)
        return config.merge(Config(max_pool_connections=connections))

    def _build(
        self,
        account: str | None,
        service: str,
        region: str | None,
        key: str,
        secret: str,
        token: str | None,
        config: Config | None = None,
    ) -> Any:
        with botocore_compat.client_classes_shared() if self._classes else nullcontext():
            client = self._session.client(
                service,  # type: ignore[call-overload]
                region_name=region,
                aws_access_key_id=key,
                aws_secret_access_key=secret,
                aws_session_token=token,
                config=config or self._config,
            )
        if service == "s3" and account is not None:
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
