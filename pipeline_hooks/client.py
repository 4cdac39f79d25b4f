"""Build, sign and send requests to the broker.

``BrokerClient`` signs a payload with a ``Signer`` (a key file or a KMS key)
and sends it through a transport: ``LambdaTransport`` invokes the broker
function (what pipelines do), ``InProcessTransport`` hands it to a broker in
this process (the local harness and the demo).

A set of grants larger than one request may carry (``MAX_GRANTS`` grants, the
broker's envelope size, Lambda's 6 MB invoke payload) is sent as several signed
requests, one after another (``pipeline_hooks.parts``): each has its own nonce and a
request id derived from the caller's (``<id>.2of5``), and the answers are merged back
into one ``SplitResponse`` with the grants' original indexes. A part that fails is
reported on its own grants; the other parts' answers are kept. Sending the same set
again is safe: the parts are cut the same way and get the same ids, and the broker
plans no change for what is already in place.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from deploy_helper.exceptions import BrokerError
from deploy_helper.models import MAX_GRANTS, BrokerResponse, ErrorBody, GrantResult
from deploy_helper.trust.signing import seal
from pipeline_hooks.parts import PART_BYTES, fits, part_request_id, plan_parts

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.execution.broker import Broker
    from deploy_helper.trust.signing import Signer


class Transport(Protocol):
    """Delivers an envelope to a broker and returns its raw JSON answer."""

    def send(self, envelope: dict[str, str]) -> dict[str, Any]: ...


@dataclass
class InProcessTransport:
    """Calls a broker in this process through the real Lambda handler."""

    broker: Broker

    def send(self, envelope: dict[str, str]) -> dict[str, Any]:
        from deploy_helper import handler

        handler.set_broker(self.broker)
        return handler.lambda_handler(json.loads(json.dumps(envelope)), None)


@dataclass
class LambdaTransport:
    """Invokes the broker function synchronously (``lambda:InvokeFunction``)."""

    function_name: str
    client: Any

    def send(self, envelope: dict[str, str]) -> dict[str, Any]:
        response = self.client.invoke(
            FunctionName=self.function_name,
            InvocationType="RequestResponse",
            Payload=json.dumps(envelope).encode("utf-8"),
        )
        body = response["Payload"].read()
        if response.get("FunctionError"):
            raise BrokerError(f"the broker function failed: {body[:500].decode('utf-8', 'replace')}")
        answer = json.loads(body)
        if not isinstance(answer, dict):
            raise BrokerError("the broker returned something that is not a JSON object")
        return answer


#: The broker function's timeout (template.yaml ``Timeout``; a test keeps them equal).
BROKER_TIMEOUT_S = 120
#: Invoking the broker: wait longer than the function may run, so a slow request is answered
#: rather than abandoned. A retry botocore still makes (a dropped connection) is safe: the broker
#: answers a byte-identical envelope with its first answer (or "in progress") and changes nothing.
INVOKE_READ_TIMEOUT_S = BROKER_TIMEOUT_S + 30
#: How long ``BrokerClient`` keeps asking for the answer of a request that is still in progress.
IN_PROGRESS_WAIT_S = BROKER_TIMEOUT_S + 60


def invoke_config() -> Any:
    """The botocore configuration for invoking the broker (see ``INVOKE_READ_TIMEOUT_S``)."""
    from botocore.config import Config

    return Config(
        read_timeout=INVOKE_READ_TIMEOUT_S,
        connect_timeout=10,
        retries={"mode": "standard", "total_max_attempts": 3},
        tcp_keepalive=True,
    )


def lambda_client(session: Any) -> Any:
    """A Lambda client fit to invoke the broker."""
    return session.client("lambda", config=invoke_config())


def new_request_id() -> str:
    return f"req-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class PartProgress:
    """Where a split request is: part ``number`` of ``count`` is being sent, or is answered.

    ``status``: ``sending`` before the part goes out; then ``done`` (the broker answered
    for its grants), ``refused`` (the broker refused the whole part: ``message`` says why)
    or ``failed`` (no answer: ``message`` says why). ``seconds``: how long the part took.
    """

    number: int
    count: int
    request_id: str
    grants: int
    status: Literal["sending", "done", "refused", "failed"]
    seconds: float = 0.0
    message: str = ""

    def heading(self) -> str:
        """The start of the part's progress line: ``part 2/5 (<id>.2of5): 1,000 grants ... ``."""
        return f"part {self.number}/{self.count} ({self.request_id}): {self.grants:,} grants ... "

    def ending(self) -> str:
        """The end of the line, once the part is answered: ``done in 3.1 s`` (or how it went wrong)."""
        said = "done" if self.status == "done" else f"{self.status} ({self.message})"
        return f"{said} in {self.seconds:.1f} s"


class PartOutcome(BaseModel):
    """One part of a split request: which grants it carried and how it went."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    #: The part's grants, as indexes in the whole set.
    indexes: list[int]
    status: Literal["done", "refused", "failed"]
    seconds: float
    error: ErrorBody | None = None


class SplitResponse(BrokerResponse):
    """The answers of a request sent in several parts, merged: results carry the original indexes.

    ``ok`` is true when every part was processed. The grants of a part that was refused or
    got no answer are reported ``failed`` (``would-fail`` for a plan) with the reason, so
    ``failed`` is true; ``error`` is set only when no part was processed at all.
    """

    parts: list[PartOutcome] = Field(default_factory=list)


@dataclass
class BrokerClient:
    """Signs and sends grant requests for one caller."""

    caller: str
    audience: str
    signer: Signer
    transport: Transport
    clock: Callable[[], float] = time.time
    sent: list[dict[str, str]] = field(default_factory=list)
    #: Waits between asking again for a request that is still in progress (injectable for tests).
    sleep: Callable[[float], None] = time.sleep
    #: The most grants one request carries; larger sets are split (``pipeline_hooks.parts``).
    max_grants: int = MAX_GRANTS
    #: The most bytes one request's grants take, serialized.
    max_part_bytes: int = PART_BYTES

    def payload(
        self,
        grants: list[dict[str, Any]],
        *,
        action: str = "apply",
        dry_run: bool = False,
        context: dict[str, Any] | None = None,
        request_id: str | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """The payload to sign; ``owner`` names whose grants these are within the caller
        (default: the context's ``pipeline``, so re-runs of one pipeline are one owner)."""
        return {
            "request_id": request_id or new_request_id(),
            "action": action,
            "dry_run": dry_run,
            "context": context or {},
            **({"owner": owner} if owner else {}),
            "grants": grants,
        }

    def envelope(self, payload: dict[str, Any]) -> dict[str, str]:
        return seal(self.signer, caller=self.caller, audience=self.audience, payload=payload, now=self.clock())

    def send_envelope(self, envelope: dict[str, str]) -> BrokerResponse:
        """Send ``envelope``; while the broker says it is still in progress, send it again.

        Sending the same envelope again is safe: the broker answers it with the first
        delivery's answer and changes nothing (``deploy_helper.trust.nonces``).
        """
        self.sent.append(envelope)
        response = BrokerResponse.model_validate(self.transport.send(envelope))
        waited, pause = 0.0, 1.0
        while _in_progress(response) and waited < IN_PROGRESS_WAIT_S:
            self.sleep(pause)
            waited += pause
            pause = min(pause * 2, 15.0)
            response = BrokerResponse.model_validate(self.transport.send(envelope))
        if _in_progress(response):
            raise BrokerError(
                f"the broker is still processing request {response.request_id} after {int(waited)} s; "
                "its outcome will be in the ledger (deploy-helper ledger list)"
            )
        return response

    def request(
        self,
        grants: list[dict[str, Any]],
        *,
        action: str = "apply",
        dry_run: bool = False,
        context: dict[str, Any] | None = None,
        request_id: str | None = None,
        owner: str | None = None,
        progress: Callable[[PartProgress], None] | None = None,
    ) -> BrokerResponse:
        """Sign and send ``grants``; a set past one request's limits goes as several requests.

        One request: the broker's answer as it is. Several (``SplitResponse``): ``progress``
        is told before and after each part.
        """
        parts = plan_parts(grants, max_grants=self.max_grants, max_bytes=self.max_part_bytes)
        if len(parts) <= 1:
            payload = self.payload(
                grants, action=action, dry_run=dry_run, context=context, request_id=request_id, owner=owner
            )
            return self.send_envelope(self.envelope(payload))
        base = request_id or new_request_id()
        outcomes: list[PartOutcome] = []
        results: list[GrantResult] = []
        answered: list[BrokerResponse] = []
        first_error: BaseException | None = None
        not_answered: tuple[type[Exception], ...] = (BrokerError, ValueError, *_transport_errors())
        for number, indexes in enumerate(parts, start=1):
            part_id = part_request_id(base, number, len(parts))
            report = PartProgress(number, len(parts), part_id, len(indexes), "sending")
            if progress is not None:
                progress(report)
            started = time.perf_counter()
            payload = self.payload(
                [grants[i] for i in indexes],
                action=action,
                dry_run=dry_run,
                context=context,
                request_id=part_id,
                owner=owner,
            )
            error: ErrorBody | None = None
            try:
                envelope = self.envelope(payload)  # sealed just before it goes: its time window starts now
                if not fits(envelope):
                    raise BrokerError("this part is larger than one request may be even alone; it was not sent")
                response = self.send_envelope(envelope)
            except not_answered as exc:
                first_error = first_error or exc
                status: Literal["done", "refused", "failed"] = "failed"
                error = ErrorBody(code="not-answered", message=_describe(exc))
            else:
                answered.append(response)
                if response.error is not None:
                    status, error = "refused", response.error
                else:
                    status = "done"
                    results += [r.model_copy(update={"index": indexes[r.index]}) for r in response.results]
            seconds = time.perf_counter() - started
            if error is not None:
                decision: Literal["failed", "would-fail"] = "would-fail" if dry_run else "failed"
                reason = f"request {part_id} ({number} of {len(parts)}) {status}: {error.code}: {error.message}"
                results += [
                    GrantResult(index=i, kind=str(grants[i].get("kind", "")), decision=decision, reason=reason)
                    for i in indexes
                ]
            outcomes.append(
                PartOutcome(request_id=part_id, indexes=indexes, status=status, seconds=seconds, error=error)
            )
            if progress is not None:
                message = f"{error.code}: {error.message}" if error is not None else ""
                progress(PartProgress(number, len(parts), part_id, len(indexes), status, seconds, message))
        if not answered and first_error is not None:  # nothing reached the broker: as for one request
            if isinstance(first_error, BrokerError):
                raise first_error
            raise BrokerError(f"no part of request {base} was answered: {_describe(first_error)}") from first_error
        processed = next((r for r in answered if r.error is None), None)
        return SplitResponse(
            ok=all(o.status == "done" for o in outcomes),
            request_id=base,
            caller=processed.caller if processed is not None else None,
            action=action,
            dry_run=dry_run,
            results=sorted(results, key=lambda r: r.index),
            error=None if processed is not None else (outcomes[0].error if outcomes else None),
            parts=outcomes,
        )


def _in_progress(response: BrokerResponse) -> bool:
    return response.error is not None and response.error.code == "in-progress"


def _transport_errors() -> tuple[type[Exception], ...]:
    """What invoking the function may raise besides ``BrokerError`` (botocore's errors)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BrokerError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"
