"""Answering CloudFormation: where a response may go, its shape, and sending it once.

- ``cloudformation_response_url`` is the production check of a ``ResponseURL``:
  HTTPS, on the CloudFormation response bucket of the stack's own region
  (``cloudformation-custom-resource-response-<region without dashes>`` on the
  global or the regional S3 host), no credentials or port in the URL, and a
  pre-signed query. Anything else is refused and nothing is ever sent there:
  a forged event must not turn the broker into a tool that PUTs to hosts of
  the forger's choosing. ``loopback_response_url`` accepts the same shape on
  ``http://127.0.0.1`` only; the local harness and the tests pass it
  explicitly (``deploy_helper.entry.custom_resource.configure``), never the event.
- ``CustomResourceResponse`` is the body; ``body()`` keeps it within
  CloudFormation's 4,096 bytes by trimming ``Reason`` from the front (the end
  of a message says what to fix).
- ``ResponseSender`` PUTs with an empty Content-Type, follows no redirect, and
  retries a bounded number of times; ``Reply`` makes sure only the first
  answer for an event is sent (the watchdog and the handler may race).
- ``Watchdog`` answers for the handler shortly before Lambda's timeout.
"""

from __future__ import annotations

import http.client
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from deploy_helper.exceptions import RequestError

logger = logging.getLogger(__name__)

#: CloudFormation's limit for the whole response body.
MAX_BODY_BYTES = 4096
#: A Reason longer than this is trimmed even when the body would fit.
MAX_REASON = 1024
MAX_URL = 8192
_REGION = re.compile(r"[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}", re.ASCII)
_SIGNATURE_PARAMS = ("X-Amz-Signature", "Signature")


class ResponseUrlRefused(RequestError):
    """The event's ResponseURL is not a CloudFormation pre-signed response URL."""

    code = "response-url-refused"


@dataclass(frozen=True)
class ResponseTarget:
    """A ResponseURL that passed the configured check; the only thing a sender sends to."""

    url: str
    scheme: Literal["https", "http"]
    host: str
    port: int | None
    path_and_query: str


#: Checks a ResponseURL for a stack in a region: the target, or ``ResponseUrlRefused``.
ResponseUrlValidator = Callable[[str, str], ResponseTarget]


def response_bucket(region: str) -> str:
    """The name of CloudFormation's response bucket in ``region``."""
    return f"cloudformation-custom-resource-response-{region.replace('-', '')}"


def cloudformation_response_url(url: str, region: str) -> ResponseTarget:
    """The production check: HTTPS on the stack region's CloudFormation response bucket."""
    parts = _split(url)
    if parts.scheme != "https":
        raise ResponseUrlRefused("the ResponseURL must use https; nothing was sent")
    if not _REGION.fullmatch(region):
        raise ResponseUrlRefused(f"cannot check the ResponseURL: {region[:40]!r} is not a region")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    bucket = response_bucket(region)
    allowed = {
        f"{bucket}.s3.{suffix}",
        f"{bucket}.s3.{region}.{suffix}",
        f"{bucket}.s3-{region}.{suffix}",
    }
    host = (parts.hostname or "").lower()
    if host not in allowed or parts.port not in (None, 443):
        raise ResponseUrlRefused(
            f"the ResponseURL host {host[:100]!r} is not CloudFormation's response bucket for "
            f"{region} ({bucket}.s3.{suffix}); nothing was sent"
        )
    return _target(url, parts, "https")


def loopback_response_url(url: str, region: str) -> ResponseTarget:
    """The local harness's check: the same URL shape, on http://127.0.0.1 only."""
    del region  # a loopback stand-in serves every region
    parts = _split(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1":
        raise ResponseUrlRefused("the local harness only answers to http://127.0.0.1; nothing was sent")
    return _target(url, parts, "http")


def _split(url: Any) -> Any:
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise ResponseUrlRefused("the event has no usable ResponseURL; nothing was sent")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in url):
        raise ResponseUrlRefused("the ResponseURL contains spaces or control characters; nothing was sent")
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise ResponseUrlRefused("the ResponseURL carries credentials or a fragment; nothing was sent")
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ResponseUrlRefused("the ResponseURL has a malformed port; nothing was sent") from exc
    return parts


def _target(url: str, parts: Any, scheme: Literal["https", "http"]) -> ResponseTarget:
    if len(parts.path) < 2:
        raise ResponseUrlRefused("the ResponseURL names no object; nothing was sent")
    query = parse_qs(parts.query)
    if not any(name in query for name in _SIGNATURE_PARAMS):
        raise ResponseUrlRefused("the ResponseURL is not pre-signed; nothing was sent")
    return ResponseTarget(url, scheme, str(parts.hostname), parts.port, f"{parts.path}?{parts.query}")


def trim_keep_end(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, keeping its end (where a message says what to fix)."""
    if len(text) <= limit:
        return text
    marker = "(trimmed) ..."
    return marker + text[-(limit - len(marker)) :]


class CustomResourceResponse(BaseModel):
    """What is PUT to the ResponseURL."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    status: Literal["SUCCESS", "FAILED"] = Field(alias="Status")
    reason: str = Field(default="", alias="Reason")
    physical_resource_id: str = Field(alias="PhysicalResourceId", min_length=1, max_length=1024)
    stack_id: str = Field(alias="StackId")
    request_id: str = Field(alias="RequestId")
    logical_resource_id: str = Field(alias="LogicalResourceId")
    no_echo: bool = Field(default=False, alias="NoEcho")
    data: dict[str, str] = Field(default_factory=dict, alias="Data")

    def body(self) -> bytes:
        """The JSON body, within 4,096 bytes: Reason trimmed first, then Data dropped."""
        import json

        reason = trim_keep_end(self.reason, MAX_REASON)
        document = self.model_dump(by_alias=True)
        for attempt in range(3):
            document["Reason"] = reason
            encoded = json.dumps(document, separators=(",", ":")).encode("utf-8")
            excess = len(encoded) - MAX_BODY_BYTES
            if excess <= 0:
                return encoded
            if attempt == 0 and len(reason) > excess + 40:
                reason = trim_keep_end(reason, len(reason) - excess - 20)
            else:
                document["Data"] = {}
                reason = trim_keep_end(reason, 256)
        return json.dumps(document, separators=(",", ":")).encode("utf-8")[:MAX_BODY_BYTES]


class ResponseNotDelivered(Exception):
    """The response could not be PUT to its URL after the allowed attempts."""


@dataclass
class ResponseSender:
    """PUTs a response body to a checked target; bounded retries, no redirects."""

    attempts: int = 4
    timeout: float = 10.0
    backoff: float = 0.5
    sleep: Callable[[float], None] = time.sleep

    def put(self, target: ResponseTarget, body: bytes) -> int:
        """Send ``body``; the HTTP status that accepted it, or ``ResponseNotDelivered``."""
        last = "no attempt"
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                status = self._put_once(target, body)
            except (OSError, http.client.HTTPException) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if status < 300:
                return status
            last = f"HTTP {status}"
            if status < 500:
                break  # an expired or wrong pre-signed URL does not get better
        raise ResponseNotDelivered(f"the response to {target.host} was not accepted ({last})")

    def _put_once(self, target: ResponseTarget, body: bytes) -> int:
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            connection = http.client.HTTPSConnection(
                target.host, target.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(target.host, target.port, timeout=self.timeout)
        try:
            connection.request(
                "PUT",
                target.path_and_query,
                body=body,
                headers={"Content-Type": "", "Content-Length": str(len(body))},
            )
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()


@dataclass
class Reply:
    """The one answer to one event: the first ``send`` wins, later ones are dropped."""

    target: ResponseTarget
    sender: ResponseSender
    sent: CustomResourceResponse | None = None
    delivered: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def send(self, response: CustomResourceResponse) -> bool:
        """Send ``response`` unless an answer was already sent; whether this call sent it."""
        with self._lock:
            if self.sent is not None:
                logger.info(
                    "an answer was already sent (%s); dropping the later %s",
                    self.sent.status,
                    response.status,
                )
                return False
            self.sent = response
            try:
                self.sender.put(self.target, response.body())
            except ResponseNotDelivered as exc:
                logger.error("could not deliver the custom-resource response: %s", exc)
                return True
            self.delivered = True
            logger.info("custom-resource response sent", extra={"status": response.status})
            return True


class Watchdog:
    """Calls ``on_timeout`` ``margin`` seconds before the Lambda invocation runs out of time.

    Without a Lambda context (direct calls, tests of other paths) it does nothing.
    """

    def __init__(self, context: Any, margin: float, on_timeout: Callable[[], object]) -> None:
        self._timer: threading.Timer | None = None
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if callable(remaining):
            delay = max(0.0, float(remaining()) / 1000.0 - margin)
            self._timer = threading.Timer(delay, on_timeout)
            self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
