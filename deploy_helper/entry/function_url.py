"""The broker behind a Lambda function URL with ``AWS_IAM`` auth.

A function URL adds one fact a plain ``Invoke`` lacks: AWS has checked the
SigV4 signature of the HTTP request, and tells the function who signed it in
``requestContext.authorizer.iam``. The broker still requires its own signed
envelope in the body (the function URL proves the account, the envelope
proves the registered caller and pins the payload), and refuses the request
unless both name the same account: the account that signed the HTTP request
must be the account the signing key is registered to. A stolen envelope is
then useless from any other account, and a principal of a registered account
cannot present another account's envelope.

Only AWS may fill in ``requestContext.authorizer.iam``, so the URL is served by a
function of its own (``template.yaml``: BrokerUrlFunction, handler
``deploy_helper.handler.function_url_handler``) whose resource policy lets the
registered accounts invoke it *only through the URL* (``lambda:InvokeFunction``
with ``lambda:InvokedViaFunctionUrl``, plus ``lambda:InvokeFunctionUrl`` with
AWS_IAM auth). A plain ``Invoke`` cannot reach it. The broker function, which any
registered account may ``Invoke`` with any event, has no URL and refuses every
function-URL-shaped event (:func:`refuse_url_event`): a hand-made event with a
made-up caller identity proves nothing there. Each function knows what it is by
the entry point Lambda calls (its configured handler), which no invoker can choose.

``POST`` the envelope JSON (``{"signed": ..., "signature": ...}``); the answer
is the broker's JSON response with an HTTP status: 200 when the request was
processed (read ``results`` for each grant), 400 malformed, 401 not
authenticated, 403 wrong account (or not a function-URL request), 405 not POST,
413 too large, 503 ledger unavailable.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import TYPE_CHECKING, Any

from deploy_helper.exceptions import AuthenticationError, BrokerError, RequestError
from deploy_helper.ledger import entries
from deploy_helper.models import MAX_ENVELOPE_BYTES, BrokerResponse, ErrorBody
from deploy_helper.trust.identifiers import ACCOUNT_RE
from deploy_helper.trust.signing import check_nesting, parse_signed_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.execution.broker import Broker

logger = logging.getLogger(__name__)

#: Room for the envelope's own JSON around the signed text.
MAX_BODY_BYTES = MAX_ENVELOPE_BYTES + 4096
#: Why the broker function refuses a function-URL-shaped event, whoever sent it.
NOT_THE_URL_FUNCTION = "function-URL events are served only by the URL function"
#: Why the URL function refuses any other event.
ONLY_URL_EVENTS = "the URL function serves only function-URL requests"
_STATUS = {
    "not-the-url-function": 403,
    "not-a-url-request": 403,
    "invalid-request": 400,
    "payload-too-large": 413,
    "method-not-allowed": 405,
    "account-mismatch": 403,
    "not-signed-by-iam": 403,
    "ledger-unavailable": 503,
}


class FunctionUrlError(BrokerError):
    """The HTTP request around the envelope is not acceptable."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message, code=code)


def handle_function_url(
    event: dict[str, Any], broker: Broker, remaining_ms: Callable[[], int] | None = None
) -> dict[str, Any]:
    """Answer one function-URL request with an HTTP response (never raises).

    ``remaining_ms`` is the Lambda context's clock, handed to the broker's deadline.
    """
    claimed: dict[str, Any] = {}
    try:
        account = _iam_account(event)
        envelope = _envelope(event)
        claimed = _claimed(envelope)
        _same_account(broker, claimed, account)
    except BrokerError as exc:
        return _refused(broker, exc, claimed)
    response = broker.handle(envelope, remaining_ms=remaining_ms)
    if response.ok:
        return _http(200, response)
    code = response.error.code if response.error else "error"
    return _http(_status_of(code), response)


def is_function_url(event: Any) -> bool:
    """The shape of a function-URL event (payload format 2.0): ``requestContext.http``."""
    return (
        isinstance(event, dict) and isinstance(event.get("requestContext"), dict) and "http" in event["requestContext"]
    )


def refuse_url_event(event: dict[str, Any], broker: Broker) -> dict[str, Any]:
    """The broker function's answer to a function-URL-shaped event: refused, recorded, nothing done.

    Such an event reaches the broker function only by a plain ``Invoke`` (it has no
    URL), so its ``requestContext.authorizer.iam`` was written by the invoker.
    """
    exc = FunctionUrlError(
        f"{NOT_THE_URL_FUNCTION}; this function takes signed envelopes by Invoke and custom-resource "
        "events. Send the envelope itself by Invoke, or POST it to the broker's function URL "
        "(stack output FunctionUrl)",
        code="not-the-url-function",
    )
    return _refused(broker, exc, _claimed_of(event))


def refuse_other_event(event: Any, broker: Broker) -> dict[str, Any]:
    """The URL function's answer to anything but a function-URL request: refused, recorded, nothing done."""
    exc = FunctionUrlError(
        f"{ONLY_URL_EVENTS}; invoke the broker function (stack output FunctionName) with signed "
        "envelopes and custom-resource events",
        code="not-a-url-request",
    )
    claimed: dict[str, Any] = {}
    if isinstance(event, dict):  # a signed envelope sent to the wrong function: name its claims
        try:
            claimed = _claimed(event)
        except Exception:  # best effort, for the ledger only; the refusal stands either way
            claimed = {}
    return _refused(broker, exc, claimed)


def _claimed_of(event: dict[str, Any]) -> dict[str, Any]:
    """What a body's envelope says about its signer, if it can be read at all (for the ledger only)."""
    try:
        return _claimed(_envelope(event))
    except Exception:  # best effort, for the ledger only; the refusal stands either way
        return {}


def _refused(broker: Broker, exc: BrokerError, claimed: dict[str, Any]) -> dict[str, Any]:
    _refuse(broker, exc, claimed)
    body = BrokerResponse(ok=False, request_id=claimed.get("request_id"), error=_error(exc))
    return _http(_status_of(exc.code), body)


def _iam_account(event: dict[str, Any]) -> str:
    context = event.get("requestContext") or {}
    method = str((context.get("http") or {}).get("method", "")).upper()
    if method != "POST":
        raise FunctionUrlError(f"use POST (got {method[:10] or 'no method'})", code="method-not-allowed")
    authorizer = context.get("authorizer") or {}
    iam = authorizer.get("iam") if isinstance(authorizer, dict) else None
    account = iam.get("accountId") if isinstance(iam, dict) else None
    if not isinstance(account, str) or not ACCOUNT_RE.fullmatch(account):
        raise FunctionUrlError(
            "the function URL must use AWS_IAM auth: sign the HTTP request with SigV4",
            code="not-signed-by-iam",
        )
    return account


def _envelope(event: dict[str, Any]) -> dict[str, Any]:
    raw = event.get("body")
    if not isinstance(raw, str) or not raw:
        raise RequestError("POST the signed envelope as the JSON body")
    if len(raw) > MAX_BODY_BYTES * 4 // 3 + 4:
        raise FunctionUrlError(f"the body is larger than {MAX_BODY_BYTES} bytes", code="payload-too-large")
    if event.get("isBase64Encoded"):
        try:
            text = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise RequestError("the body is not valid base64-encoded UTF-8") from exc
    else:
        text = raw
    if len(text.encode("utf-8", errors="replace")) > MAX_BODY_BYTES:
        raise FunctionUrlError(f"the body is larger than {MAX_BODY_BYTES} bytes", code="payload-too-large")
    check_nesting(text)
    try:
        envelope = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RequestError("the body is not JSON") from exc
    if not isinstance(envelope, dict):
        raise RequestError("the body must be the signed envelope, a JSON object")
    return envelope


def _claimed(envelope: dict[str, Any]) -> dict[str, Any]:
    """What the envelope says about its signer, not yet verified (the broker verifies it next)."""
    signed = envelope.get("signed")
    if not isinstance(signed, str):
        raise RequestError("the envelope has no 'signed' text")
    _, body = parse_signed_text(signed)
    out: dict[str, Any] = {}
    for name in ("caller", "key_id"):
        value = body.get(name)
        if isinstance(value, str) and len(value) <= 64:
            out[name] = value
    payload = body.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("request_id"), str):
        out["request_id"] = payload["request_id"][:64]
    return out


def _same_account(broker: Broker, claimed: dict[str, Any], account: str) -> None:
    found = broker.authenticator.callers.find_key(str(claimed.get("key_id", "")))
    if found is None:
        return  # an unknown key: the broker refuses it with its own message
    owner, caller, _ = found
    if caller.account != account:
        raise FunctionUrlError(
            f"the HTTP request was signed by account {account}, but key {claimed.get('key_id')} "
            f"is registered to {owner} in account {caller.account}; call the function URL from "
            "the caller's own account",
            code="account-mismatch",
        )


def _refuse(broker: Broker, exc: BrokerError, claimed: dict[str, Any]) -> None:
    logger.warning(
        "function-url request refused: %s",
        exc.message,
        extra={"decision": "denied", "code": exc.code},
    )
    try:
        broker.ledger.append_many(
            [
                entries.refusal(
                    broker.clock(),
                    code=f"function-url/{exc.code}",
                    reason=exc.message,
                    claimed=claimed,
                )
            ]
        )
    except BrokerError:
        logger.exception("could not record a refusal in the ledger")


def http_error(status: int, exc: BrokerError) -> dict[str, Any]:
    """An HTTP response carrying ``exc`` (for errors before a request could be read)."""
    return _http(status, BrokerResponse(ok=False, error=_error(exc)))


def _error(exc: BrokerError) -> ErrorBody:
    return ErrorBody(code=exc.code, message=exc.message)


def _status_of(code: str) -> int:
    if code in _STATUS:
        return _STATUS[code]
    if code == AuthenticationError.code or code in (
        "unknown-key",
        "key-of-another-caller",
        "key-not-valid",
        "bad-signature",
        "wrong-audience",
        "stale",
        "replayed",
        "nonce-store-unavailable",
    ):
        return 401
    return 400


def _http(status: int, response: BrokerResponse) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(response.model_dump(mode="json", exclude_none=True)),
        "isBase64Encoded": False,
    }
