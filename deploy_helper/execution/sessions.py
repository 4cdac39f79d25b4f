"""Sessions in target accounts: one AssumeRole per account and request.

The broker assumes ``arn:aws:iam::TARGET:role/<path><name>`` with the
configured ExternalId, a RoleSessionName and SourceIdentity that carry the
request id, and the session tag ``DeployHelperMinBootstrap`` — the target role's
trust policy only accepts versions it implements, so a broker that needs a newer
bootstrap is refused by AWS itself, at no extra call. When AssumeRole is refused
the broker asks once more with the oldest version to tell the operator *why*: not
bootstrapped / ExternalId differs, or bootstrap too old.

Credentials belong to the request that asked for them: they are kept per (role,
request id), never handed to another request, so every call CloudTrail records in
a target account names (SourceIdentity, RoleSessionName) the request that made it.
That costs one AssumeRole per target account per request — the bound the batch
benchmark counts — and no more: a request asking twice for one account gets the
same session. The clients themselves are not per request: one client per role,
service and region is built once and kept (``deploy_helper.execution.clients``), and each
request's calls through it are signed with that request's credentials.

Every S3 call through a target-account client carries ``ExpectedBucketOwner`` (the
target account): S3 refuses it (403 AccessDenied) when another account owns the
bucket, so a bucket name that changed hands is never read or written.

``reader_for`` assumes the bootstrap's read-only ``deploy-helper-reader`` role
(same path, trust, ExternalId and session tags) to confirm custom-resource
events against the stack they claim to come from.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from deploy_helper.exceptions import TargetAccessError
from deploy_helper.execution.clients import ClientPool

if TYPE_CHECKING:
    from collections.abc import Callable

    from botocore.config import Config

    from deploy_helper.config import BrokerConfig
    from deploy_helper.execution.clients import Session

BOOTSTRAP_TAG = "DeployHelperMinBootstrap"
#: The read-only role of the bootstrap (``account_bootstrap/broker-role.yaml``).
READER_ROLE_NAME = "deploy-helper-reader"
_SESSION_CHARS = re.compile(r"[^\w+=,.@-]")
#: Sessions kept (per role and request): far more than the accounts one request touches
#: at once; the oldest go first.
MAX_SESSIONS = 1024


def session_name(request_id: str) -> str:
    """A RoleSessionName/SourceIdentity (2-64 chars of ``[\\w+=,.@-]``) carrying the request id."""
    return ("dh-" + _SESSION_CHARS.sub("-", request_id))[:64]


@dataclass
class _Cached:
    credentials: dict[str, Any]
    expires_at: float


class TargetClients:
    """Clients acting as one role in one target account for one request (its AssumeRole session).

    The clients come from the broker's ``ClientPool`` (``deploy_helper.execution.clients``): built
    once per role, service and region and shared between requests, each call signed with this
    request's credentials, each request's hooks its own.
    """

    def __init__(self, pool: ClientPool, role_arn: str, account: str, credentials: dict[str, Any]):
        self._pool = pool
        self.role_arn = role_arn
        self.account = account
        self._credentials = credentials
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._lock = threading.Lock()

    def client(self, service: str, region: str | None = None) -> Any:
        key = (service, region)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._pool.client(self.role_arn, self.account, service, region, self._credentials)
                self._clients[key] = client
            return client


class TargetSessions:
    """Assumes the broker role in target accounts, one AssumeRole per account and request."""

    def __init__(
        self,
        session: Session,
        config: BrokerConfig,
        *,
        client_config: Config | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin: int = 300,
        reader_role_name: str = READER_ROLE_NAME,
    ) -> None:
        self._session = session
        self._reader_role_name = reader_role_name
        self._config = config
        self._client_config = client_config
        self._clock = clock
        self._margin = refresh_margin
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._sts: Any = None
        #: Target-account clients, kept across requests (``deploy_helper.execution.clients``).
        self.clients = ClientPool(session, client_config)

    def role_arn(self, account: str) -> str:
        return f"arn:aws:iam::{account}:role{self._config.target_role_path}{self._config.target_role_name}"

    def reader_role_arn(self, account: str) -> str:
        return f"arn:aws:iam::{account}:role{self._config.target_role_path}{self._reader_role_name}"

    def for_account(self, account: str, request_id: str) -> TargetClients:
        return self._clients(account, request_id, self.role_arn(account))

    def reader_for(self, account: str, request_id: str) -> TargetClients:
        """Clients acting as the read-only reader role in ``account`` (CloudFormation reads only)."""
        return self._clients(account, request_id, self.reader_role_arn(account))

    def _clients(self, account: str, request_id: str, role_arn: str) -> TargetClients:
        key = (role_arn, request_id)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                cached = self._cache.get(key)
            if cached is None or cached.expires_at - self._margin <= self._clock():
                try:
                    credentials = self._assume(account, request_id, role_arn=role_arn)
                except TargetAccessError:
                    with self._guard:
                        self._locks.pop(key, None)
                    raise
                expiry = credentials["Expiration"]
                expires_at = expiry.timestamp() if hasattr(expiry, "timestamp") else self._clock() + 900
                cached = _Cached(credentials, expires_at)
                with self._guard:
                    self._cache[key] = cached
                    self._cache.move_to_end(key)
                    while len(self._cache) > MAX_SESSIONS:
                        old, _ = self._cache.popitem(last=False)
                        self._locks.pop(old, None)
        return TargetClients(self.clients, role_arn, account, cached.credentials)

    def _sts_client(self) -> Any:
        with self._guard:
            if self._sts is None:
                self._sts = self._session.client("sts", region_name=self._config.region, config=self._client_config)
            return self._sts

    def _assume(
        self, account: str, request_id: str, bootstrap: int | None = None, *, role_arn: str | None = None
    ) -> dict[str, Any]:
        role_arn = role_arn or self.role_arn(account)
        name = session_name(request_id)
        kwargs: dict[str, Any] = {
            "RoleArn": role_arn,
            "RoleSessionName": name,
            "SourceIdentity": name,
            "DurationSeconds": self._config.session_duration,
            "Tags": [{"Key": BOOTSTRAP_TAG, "Value": str(bootstrap or self._config.min_bootstrap_version)}],
        }
        if self._config.external_id:
            kwargs["ExternalId"] = self._config.external_id
        try:
            return dict(self._sts_client().assume_role(**kwargs)["Credentials"])
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code not in ("AccessDenied", "AccessDeniedException"):
                raise TargetAccessError(
                    f"cannot assume {role_arn}: {code}: {exc.response['Error'].get('Message', '')}"
                ) from exc
            if bootstrap is None and self._config.min_bootstrap_version > 1:
                try:
                    self._assume(account, request_id, bootstrap=1, role_arn=role_arn)
                except TargetAccessError:
                    pass
                else:
                    raise TargetAccessError(
                        f"account {account} is bootstrapped with a version older than "
                        f"{self._config.min_bootstrap_version}, which this broker needs; "
                        f"re-run `deploy-helper bootstrap --account {account}`",
                        code="bootstrap-outdated",
                    ) from exc
            raise TargetAccessError(
                f"cannot assume {role_arn}: account {account} is not bootstrapped, or its "
                "ExternalId differs from the broker's. Run `deploy-helper bootstrap --account "
                f"{account}` (with the broker's ExternalId)",
                code="not-bootstrapped",
            ) from exc
        except BotoCoreError as exc:
            raise TargetAccessError(f"cannot reach STS to assume a role in {account}: {exc}") from exc
