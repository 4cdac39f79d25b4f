"""What the strict-AWS checks share (see :mod:`deploy_helper.local.strict_aws`).

The intercepted call (``_Call``) and who sent it (``Caller``); a check's verdict
(``AwsRefusal``); ``_LocalReads``, the plain clients through which the checks read the
local server's state: they act as the harness's administrator
(``OrganizationAccountAccessRole``, as ``LocalAws.admin_session`` does) of the right
account, and find the caller's account with ``sts:GetCallerIdentity`` on a plain client
with the caller's credentials (cached by access key id), so they never pass through the
strict-AWS hooks themselves; and the synthetic responses that stand in for AWS's answer.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.credentials import ReadOnlyCredentials

from deploy_helper.local.faults import RawBody
from deploy_helper.local.server import ADMIN_ROLE, DEFAULT_ACCOUNT, LOCAL_CONFIG

if TYPE_CHECKING:
    from collections.abc import Callable

    from botocore.model import OperationModel

    from deploy_helper.local.server import LocalAws


class AwsRefusal(Exception):
    """A check's verdict: AWS would answer this request with this error."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as ``sts:GetCallerIdentity`` reports it."""

    account: str
    arn: str

    @property
    def chained(self) -> bool:
        """True when the caller is itself an assumed-role session."""
        return ":assumed-role/" in self.arn


@dataclass
class _Call:
    """One intercepted API call, with lazy access to the caller's identity."""

    model: OperationModel
    params: dict[str, Any]
    region: str
    url: str
    _identify: Callable[[], Caller | None]
    _caller: Caller | None = field(default=None, init=False)

    def caller(self) -> Caller | None:
        if self._caller is None:
            self._caller = self._identify()
        return self._caller


class _LocalReads:
    """Plain (unhooked) clients on the local server, and the callers' identities."""

    def __init__(self, local: LocalAws) -> None:
        self._local = local
        self._lock = threading.RLock()
        # One plain session for every client the checks use: it carries no hooks, and
        # its loader reads each service model once.
        self._plain: Any = boto3.Session(region_name="us-east-1")
        base = local.base_session().get_credentials()
        if base is None:
            raise ValueError("LocalAws.base_session() has no credentials")
        self._base_credentials: ReadOnlyCredentials = base.get_frozen_credentials()
        self._clients: dict[tuple[str, str, str | None], Any] = {}
        self._admin_credentials: dict[str, ReadOnlyCredentials] = {}
        self._callers: dict[str, Caller] = {}
        self._busy = threading.local()

    # -- plain clients and identities ----------------------------------------
    def _client(self, service: str, region: str, credentials: ReadOnlyCredentials) -> Any:
        """A plain (unhooked) client with ``credentials``, cached by access key."""
        key = (service, region, credentials.access_key)
        with self._lock:  # a boto3 Session is not safe for concurrent client creation
            client = self._clients.get(key)
            if client is None:
                client = self._plain.client(
                    service,
                    endpoint_url=self._local.endpoint,
                    region_name=region,
                    config=LOCAL_CONFIG,
                    aws_access_key_id=credentials.access_key,
                    aws_secret_access_key=credentials.secret_key,
                    aws_session_token=credentials.token,
                )
                self._clients[key] = client
            return client

    def _admin(self, service: str, account: str, region: str) -> Any:
        """A plain client acting as administrator of ``account``."""
        return self._client(service, region, self._admin_of(account))

    def _admin_of(self, account: str) -> ReadOnlyCredentials:
        """Credentials of the harness's administrator role in ``account``.

        Kept across calls, but checked each time: after ``LocalAws.reset`` moto has
        forgotten the key and would silently route it to its default account.
        """
        if account == DEFAULT_ACCOUNT:
            return self._base_credentials
        with self._lock:
            cached = self._admin_credentials.get(account)
        if cached is not None:
            identity = self._client("sts", "us-east-1", cached).get_caller_identity()
            if identity["Account"] == account:
                return cached
            with self._lock:
                for key in [k for k in self._clients if k[2] == cached.access_key]:
                    del self._clients[key]
        sts = self._client("sts", "us-east-1", self._base_credentials)
        issued = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/{ADMIN_ROLE}", RoleSessionName="strict-aws")[
            "Credentials"
        ]
        fresh = ReadOnlyCredentials(issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"])
        with self._lock:
            self._admin_credentials[account] = fresh
        return fresh

    def _identify(self, request_signer: Any) -> Caller | None:
        auth = request_signer.get_auth_instance(
            request_signer.signing_name, request_signer.region_name, signature_version="v4"
        )
        credentials = getattr(auth, "credentials", None)
        if credentials is None:
            return None
        with self._lock:
            cached = self._callers.get(credentials.access_key)
        if cached is not None:
            return cached
        sts = self._client("sts", request_signer.region_name, credentials)
        identity = sts.get_caller_identity()
        caller = Caller(account=identity["Account"], arn=identity["Arn"])
        with self._lock:
            self._callers[credentials.access_key] = caller
        return caller

    def _account_of(self, call: _Call, explicit: str | None) -> str | None:
        if explicit:
            return explicit
        caller = call.caller()
        return caller.account if caller else None


# -- responses ----------------------------------------------------------------
def _error_response(call: _Call, refusal: AwsRefusal) -> tuple[AWSResponse, dict[str, Any]]:
    protocol = call.model.service_model.protocol
    error: dict[str, Any] = {"Code": refusal.code, "Message": refusal.message}
    if protocol in ("query", "ec2"):
        error["Type"] = "Sender"
    parsed: dict[str, Any] = {"Error": error}
    if protocol in ("json", "rest-json"):
        parsed["message"] = refusal.message
    return _response(call, refusal.status, parsed, {"__type": refusal.code, **error})


def _success_response(call: _Call, body: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
    return _response(call, 200, dict(body), body)


def _response(
    call: _Call, status: int, parsed: dict[str, Any], body: dict[str, Any]
) -> tuple[AWSResponse, dict[str, Any]]:
    request_id = str(uuid.uuid4())
    content = json.dumps(body).encode()
    headers = {
        "x-amzn-requestid": request_id,
        "content-type": "application/json",
        "content-length": str(len(content)),
    }
    parsed["ResponseMetadata"] = {
        "RequestId": request_id,
        "HTTPStatusCode": status,
        "HTTPHeaders": dict(headers),
        "RetryAttempts": 0,
    }
    response = AWSResponse(call.url, status, HTTPHeaders.from_dict(headers), RawBody(content))
    return response, parsed


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
