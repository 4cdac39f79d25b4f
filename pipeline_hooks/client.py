"""Build, sign and send requests to the broker.

``BrokerClient`` signs a payload with a ``Signer`` (a key file or a KMS key)
and sends it through a transport: ``LambdaTransport`` invokes the broker
function (what pipelines do), ``InProcessTransport`` hands it to a broker in
this process (the local harness and the demo).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from deploy_helper.exceptions import BrokerError
from deploy_helper.models import BrokerResponse
from deploy_helper.trust.signing import seal

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
    ) -> BrokerResponse:
        payload = self.payload(
            grants, action=action, dry_run=dry_run, context=context, request_id=request_id, owner=owner
        )
        return self.send_envelope(self.envelope(payload))


def _in_progress(response: BrokerResponse) -> bool:
    return response.error is not None and response.error.code == "in-progress"
