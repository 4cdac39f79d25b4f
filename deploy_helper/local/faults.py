"""Fault injection for boto3 sessions, through botocore event hooks.

``FaultInjector(seed=7).install(session)`` hooks a boto3 Session so that clients
created from it afterwards can be told to fail chosen calls::

    faults = FaultInjector(seed=7).install(session)
    faults.fail(operation="lambda.AddPermission", error="throttling", rate=0.3)
    faults.fail(operation="s3.*", error="access-denied", accounts={"222222222222"}, times=1)

Where the fault happens. The injector works on each HTTP *attempt*: it hooks
botocore's ``before-send`` event, which fires once per attempt, after the request is
built and signed and before it is sent. A fault therefore means the request never
reached AWS: nothing changed there. The error is returned to botocore as an HTTP
response in the service's own wire format (JSON, REST-JSON, REST-XML, query XML or
CBOR), so botocore parses it, its retry handler sees it (a client configured with
retries retries throttling, 5xx and timeouts exactly as against AWS) and the caller
gets ``client.exceptions.<Code>`` with the real code, HTTP status and message.
Timeouts are raised as ``botocore.exceptions.ConnectTimeoutError`` /
``ReadTimeoutError``, as botocore's HTTP layer raises them.

With ``after=True`` the attempt IS sent (the injector sends the signed request
itself) and AWS makes the change; the response is then thrown away and the fault is
returned instead -- a response lost after the change happened. Use it to prove that
re-running a batch is idempotent.

Errors (code and HTTP status as each service returns them):

* ``throttling``: Lambda ``TooManyRequestsException`` 429 (with ``Retry-After``); S3
  ``SlowDown`` 503; KMS ``ThrottlingException`` 400; STS and other query services
  ``Throttling`` 400; DynamoDB item operations
  ``ProvisionedThroughputExceededException`` 400, other DynamoDB and JSON services
  ``ThrottlingException`` 400.
* ``access-denied``: S3 ``AccessDenied`` 403; STS and other query services
  ``AccessDenied`` 403; KMS and DynamoDB ``AccessDeniedException`` 400; Lambda and
  other services ``AccessDeniedException`` 403.
* ``server-error``: Lambda ``ServiceException`` 500; S3 ``InternalError`` 500; KMS
  ``KMSInternalException`` 500; DynamoDB ``InternalServerError`` 500; others
  ``InternalFailure`` 500.
* ``unavailable``: ``ServiceUnavailable`` 503.
* ``timeout``: ``ConnectTimeoutError`` (with ``after=True``: ``ReadTimeoutError``);
``connect-timeout`` and ``read-timeout`` choose the exception explicitly.

Rules are tried in the order they were added; each rule that matches the operation
(``fnmatch`` pattern on ``"<service>.<Operation>"``, e.g. ``lambda.AddPermission``,
``s3.*``, ``*``) and the caller's account, and has not used up ``times``, draws one
number from the seeded ``random.Random``; the first whose draw falls below its
``rate`` fires. With one thread the sequence of faults is therefore the same for the
same seed and the same sequence of calls; with several threads the order of draws
follows the order of calls. The RNG, the rules and the counters sit behind one lock.

The caller's account (only needed when a rule names ``accounts``) comes from
``sts:GetCallerIdentity`` with the caller's credentials on a separate plain client,
cached by access key id; that client is not hooked.
"""

from __future__ import annotations

import fnmatch
import json
import random
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args
from xml.sax.saxutils import escape

import boto3
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.config import Config
from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError
from botocore.httpsession import URLLib3Session

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from botocore.awsrequest import AWSPreparedRequest
    from botocore.credentials import ReadOnlyCredentials
    from botocore.model import OperationModel

FaultKind = Literal[
    "throttling",
    "access-denied",
    "server-error",
    "unavailable",
    "timeout",
    "connect-timeout",
    "read-timeout",
]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

_MODEL_KEY = "deploy_helper.faults.model"
_ACCOUNT_KEY = "deploy_helper.faults.account"
_HOOK_ID = "deploy-helper-faults"
_PLAIN_CONFIG = Config(retries={"max_attempts": 1, "mode": "standard"})
_DYNAMODB_ITEM_OPERATIONS = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
        "TransactWriteItems",
    }
)


@dataclass
class FaultRule:
    """One ``fail(...)`` instruction; ``injected`` counts the faults it caused."""

    operation: str
    error: FaultKind
    rate: float
    accounts: frozenset[str] | None
    times: int | None
    after: bool
    injected: int = 0

    @property
    def exhausted(self) -> bool:
        """True when the rule has caused ``times`` faults already."""
        return self.times is not None and self.injected >= self.times

    def applies_to(self, operation: str, account: str | None) -> bool:
        """Whether this rule covers ``operation`` called by ``account``."""
        if not fnmatch.fnmatchcase(operation, self.operation):
            return False
        return self.accounts is None or account in self.accounts


@dataclass(frozen=True)
class OperationStats:
    """What one operation saw: HTTP attempts, and how many of them got a fault."""

    calls: int = 0
    faults: int = 0


@dataclass
class _Counter:
    calls: int = 0
    faults: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class RawBody:
    """The ``raw`` of a synthetic ``AWSResponse``: yields the body once."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class FaultInjector:
    """Makes chosen AWS calls of a boto3 Session fail like AWS fails (see module doc).

    ``seed`` seeds the ``random.Random`` that decides which calls fail.
    ``account_resolver`` maps a caller's credentials to its account id; by default
    ``sts:GetCallerIdentity`` on a plain client at ``endpoint_url`` (``None``: boto3's
    own endpoint configuration, e.g. ``AWS_ENDPOINT_URL``).
    """

    def __init__(
        self,
        seed: int | None = None,
        *,
        account_resolver: Callable[[ReadOnlyCredentials], str | None] | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._counters: dict[str, _Counter] = {}
        self._accounts: dict[str, str | None] = {}
        self._resolver = account_resolver or self._caller_account
        self._endpoint_url = endpoint_url
        self._http: URLLib3Session | None = None

    # -- public API ----------------------------------------------------------
    def install(self, session: boto3.Session) -> FaultInjector:
        """Hook ``session``; clients created from it afterwards are subject to faults.

        Installing the same injector twice has no further effect. Several injectors
        may be installed on one session; each counts every attempt, and the fault of
        the first one installed wins when more than one fires.
        """
        for event, handler in self._hooks():
            session.events.register(event, handler, unique_id=self._hook_id(event))
        return self

    def uninstall(self, session: boto3.Session) -> None:
        """Unhook ``session``; clients created from it afterwards see no faults."""
        for event, handler in self._hooks():
            session.events.unregister(event, handler, unique_id=self._hook_id(event))

    def fail(
        self,
        operation: str = "*",
        error: FaultKind = "throttling",
        rate: float = 1.0,
        accounts: Iterable[str] | None = None,
        times: int | None = None,
        *,
        after: bool = False,
    ) -> FaultRule:
        """Add a rule: calls matching ``operation`` fail with ``error`` at ``rate``.

        ``operation`` is an fnmatch pattern on ``"<service>.<Operation>"``;
        ``accounts`` limits the rule to callers in those accounts (``None``: any);
        ``times`` caps the number of faults (``None``: no cap); ``after=True`` lets the
        request reach AWS and replaces its response (see the module docstring).
        """
        if error not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {error!r}; choose one of {FAULT_KINDS}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, not {rate}")
        if times is not None and times < 0:
            raise ValueError(f"times must be None or >= 0, not {times}")
        if after and error == "connect-timeout":
            raise ValueError("a request that was sent cannot end in a connect timeout")
        rule = FaultRule(
            operation=operation,
            error=error,
            rate=rate,
            accounts=frozenset(accounts) if accounts is not None else None,
            times=times,
            after=after,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule and zero the counters (the RNG keeps its position)."""
        with self._lock:
            self._rules.clear()
            self._counters.clear()

    def stats(self) -> dict[str, OperationStats]:
        """Per ``"<service>.<Operation>"``: HTTP attempts seen and faults injected."""
        with self._lock:
            return {op: OperationStats(calls=c.calls, faults=c.faults) for op, c in sorted(self._counters.items())}

    def faults_by_kind(self) -> dict[str, dict[str, int]]:
        """Per operation, the number of faults injected of each kind."""
        with self._lock:
            return {op: dict(c.by_kind) for op, c in sorted(self._counters.items()) if c.by_kind}

    # -- hooks ---------------------------------------------------------------
    def _hooks(self) -> list[tuple[str, Callable[..., Any]]]:
        return [("before-call", self._before_call), ("before-send", self._before_send)]

    def _hook_id(self, event: str) -> str:
        return f"{_HOOK_ID}-{id(self)}-{event}"

    def _before_call(
        self,
        model: OperationModel,
        request_signer: Any,
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        context[_MODEL_KEY] = model
        operation = _operation_name(model)
        with self._lock:
            needs_account = any(
                r.accounts is not None and fnmatch.fnmatchcase(operation, r.operation) for r in self._rules
            )
        if needs_account:
            context[_ACCOUNT_KEY] = self._account_of(request_signer)

    def _before_send(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse | None:
        context = getattr(request, "context", None) or {}
        model: OperationModel | None = context.get(_MODEL_KEY)
        if model is None:
            return None
        operation = _operation_name(model)
        account = context.get(_ACCOUNT_KEY)
        with self._lock:
            counter = self._counters.setdefault(operation, _Counter())
            counter.calls += 1
            rule = self._draw(operation, account)
            if rule is not None:
                rule.injected += 1
                counter.faults += 1
                counter.by_kind[rule.error] = counter.by_kind.get(rule.error, 0) + 1
        if rule is None:
            return None
        if rule.after:
            self._send_and_discard(request)
        return self._fault(rule, model, request.url)

    def _draw(self, operation: str, account: str | None) -> FaultRule | None:
        for rule in self._rules:
            if rule.exhausted or not rule.applies_to(operation, account):
                continue
            if self._rng.random() < rule.rate:
                return rule
        return None

    # -- faults --------------------------------------------------------------
    def _fault(self, rule: FaultRule, model: OperationModel, url: str) -> AWSResponse:
        kind = rule.error
        if kind == "connect-timeout" or (kind == "timeout" and not rule.after):
            raise ConnectTimeoutError(endpoint_url=url, error="injected connect timeout")
        if kind in ("read-timeout", "timeout"):
            raise ReadTimeoutError(endpoint_url=url, error="injected read timeout")
        code, status, message = aws_error_for(kind, model)
        return error_response(model, url, code, status, message)

    def _send_and_discard(self, request: AWSPreparedRequest) -> None:
        with self._lock:
            if self._http is None:
                self._http = URLLib3Session()
            http = self._http
        response = http.send(request)
        _ = response.content  # read it whole so the connection is released

    # -- accounts ------------------------------------------------------------
    def _account_of(self, request_signer: Any) -> str | None:
        auth = request_signer.get_auth_instance(
            request_signer.signing_name, request_signer.region_name, signature_version="v4"
        )
        credentials = getattr(auth, "credentials", None)
        if credentials is None:
            return None
        with self._lock:
            if credentials.access_key in self._accounts:
                return self._accounts[credentials.access_key]
        account = self._resolver(credentials)
        with self._lock:
            self._accounts[credentials.access_key] = account
        return account

    def _caller_account(self, credentials: ReadOnlyCredentials) -> str | None:
        sts = boto3.Session(
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
            aws_session_token=credentials.token,
            region_name="us-east-1",
        ).client("sts", endpoint_url=self._endpoint_url, config=_PLAIN_CONFIG)
        return str(sts.get_caller_identity()["Account"])


# -- the errors AWS returns ----------------------------------------------------
def aws_error_for(kind: str, model: OperationModel) -> tuple[str, int, str]:
    """The (code, HTTP status, message) a service returns for a fault of ``kind``."""
    service = model.service_model.service_id.hyphenize()
    query = model.service_model.resolved_protocol in ("query", "ec2")
    action = f"{model.service_model.signing_name}:{model.name}"
    if kind == "throttling":
        if service == "lambda":
            return "TooManyRequestsException", 429, "Rate exceeded"
        if service == "s3":
            return "SlowDown", 503, "Please reduce your request rate."
        if service == "dynamodb" and model.name in _DYNAMODB_ITEM_OPERATIONS:
            return (
                "ProvisionedThroughputExceededException",
                400,
                "The level of configured provisioned throughput for the table was exceeded. "
                "Consider increasing your provisioning level with the UpdateTable API.",
            )
        return ("Throttling" if query else "ThrottlingException"), 400, "Rate exceeded"
    if kind == "access-denied":
        if service == "s3":
            return "AccessDenied", 403, "Access Denied"
        denied = (
            f"User is not authorized to perform: {action} because no identity-based policy allows the {action} action"
        )
        if query:
            return "AccessDenied", 403, denied
        if service in ("kms", "dynamodb"):
            return "AccessDeniedException", 400, denied
        return "AccessDeniedException", 403, denied
    if kind == "server-error":
        return {
            "lambda": ("ServiceException", 500, "An internal error occurred."),
            "s3": ("InternalError", 500, "We encountered an internal error. Please try again."),
            "kms": (
                "KMSInternalException",
                500,
                "The request was rejected because an internal exception occurred. The request can be retried.",
            ),
            "dynamodb": ("InternalServerError", 500, "Internal server error"),
        }.get(service, ("InternalFailure", 500, "An internal error occurred."))
    if kind == "unavailable":
        return "ServiceUnavailable", 503, "Service is unable to handle request."
    raise ValueError(f"{kind!r} is not an error response")


def error_response(model: OperationModel, url: str, code: str, status: int, message: str) -> AWSResponse:
    """An HTTP error response as the service sends it, in the service's wire protocol."""
    service_model = model.service_model
    protocol = service_model.resolved_protocol
    prefix = service_model.endpoint_prefix
    request_id = str(uuid.uuid4())
    headers = {"x-amzn-RequestId": request_id}
    if protocol == "rest-xml":
        host_id = uuid.uuid4().hex
        headers = {"x-amz-request-id": request_id, "x-amz-id-2": host_id}
        headers["Content-Type"] = "application/xml"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>{host_id}</HostId></Error>"
        ).encode()
    elif protocol == "query":
        namespace = f"https://{prefix}.amazonaws.com/doc/{service_model.api_version}/"
        fault = "Receiver" if status >= 500 else "Sender"
        headers["Content-Type"] = "text/xml"
        body = (
            f'<ErrorResponse xmlns="{namespace}"><Error><Type>{fault}</Type>'
            f"<Code>{code}</Code><Message>{escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
    elif protocol == "ec2":
        headers["Content-Type"] = "text/xml;charset=UTF-8"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{code}</Code><Message>{escape(message)}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        ).encode()
    elif protocol == "rest-json":
        headers["x-amzn-ErrorType"] = f"{code}:http://internal.amazon.com/coral/com.amazonaws.{prefix}/"
        headers["Content-Type"] = "application/json"
        kind = "Service" if status >= 500 else "User"
        body = json.dumps({"Type": kind, "message": message}).encode()
        if status == 429:
            headers["Retry-After"] = "1"
    elif protocol == "smithy-rpc-v2-cbor":
        headers["smithy-protocol"] = "rpc-v2-cbor"
        headers["Content-Type"] = "application/cbor"
        body = _cbor_text_map({"__type": f"com.amazonaws.{prefix}#{code}", "message": message})
    else:  # "json"
        version = service_model.metadata.get("jsonVersion", "1.1")
        headers["Content-Type"] = f"application/x-amz-json-{version}"
        body = json.dumps({"__type": f"com.amazonaws.{prefix}#{code}", "message": message}).encode()
    if service_model.service_id.hyphenize() == "dynamodb":
        headers["x-amz-crc32"] = str(zlib.crc32(body) & 0xFFFFFFFF)
    headers["Content-Length"] = str(len(body))
    return AWSResponse(url, status, HTTPHeaders.from_dict(headers), RawBody(body))


def _operation_name(model: OperationModel) -> str:
    return f"{model.service_model.service_id.hyphenize()}.{model.name}"


def _cbor_text_map(values: dict[str, str]) -> bytes:
    """CBOR (RFC 8949) encoding of a map of text strings: all an error body needs."""

    def head(major: int, length: int) -> bytes:
        if length < 24:
            return bytes([major << 5 | length])
        if length < 0x100:
            return bytes([major << 5 | 24, length])
        if length < 0x10000:
            return bytes([major << 5 | 25]) + length.to_bytes(2, "big")
        return bytes([major << 5 | 26]) + length.to_bytes(4, "big")

    def text(value: str) -> bytes:
        data = value.encode("utf-8")
        return head(3, len(data)) + data

    out = bytearray(head(5, len(values)))
    for key, value in values.items():
        out += text(key) + text(value)
    return bytes(out)
