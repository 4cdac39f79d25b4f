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
from deploy_helper.signing import seal

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.broker import Broker
    from deploy_helper.signing import Signer


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
        self.sent.append(envelope)
        return BrokerResponse.model_validate(self.transport.send(envelope))

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
