"""Deciding the answer to a custom-resource event whose ResponseURL passed the check.

In order: the event parses; its ``ServiceToken`` is the function this broker
was invoked through (a resource of another broker, another environment, is
refused: its Delete would go there, orphaning the grant here); the grant its
properties declare parses; the event is confirmed against its stack
(``deploy_helper.trust.stack_verify``, which also checks the ServiceToken in the
stack's resolved template); then the broker authorizes, plans and applies as
for a signed request, acting for the resource's owner
``stack:<StackId>/<LogicalResourceId>/<PhysicalResourceId>`` (``deploy_helper.execution.owners``).
Nothing here sends anything: ``handle`` returns the response.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import rfc8785

from deploy_helper.entry.cfn_response import CustomResourceResponse, trim_keep_end
from deploy_helper.entry.custom_resource.events import (
    CreateEvent,
    DeleteEvent,
    EventBase,
    EventHead,
    UpdateEvent,
    grant_from_properties,
    parse_event,
    physical_id,
)
from deploy_helper.exceptions import BrokerError, LedgerError, RequestError
from deploy_helper.execution.owners import Acting, stack_owner
from deploy_helper.ledger import entries
from deploy_helper.request import RequestPayload
from deploy_helper.trust.auth import Identity
from deploy_helper.trust.stack_verify import StackClaim, StackNotConfirmed, StackVerifier, service_token_refusal

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.execution.broker import Broker
    from deploy_helper.models import GrantResult

logger = logging.getLogger(__name__)

#: AWS error codes that mean "the target resource no longer exists".
_GONE = ("ResourceNotFoundException", "NoSuchBucket", "NotFoundException")


class ServiceTokenRefused(RequestError):
    """The event is for another broker's resource (its ServiceToken is not this function)."""

    code = "service-token"


@dataclass
class Progress:
    """What the watchdog needs to answer for a handler that is still working."""

    physical_id: str


def handle(
    event: Any,
    head: EventHead,
    get_broker: Callable[[], Broker],
    verifier: Callable[[Broker], StackVerifier],
    progress: Progress,
    remaining_ms: Callable[[], int] | None = None,
    *,
    own_function: str | None = None,
) -> CustomResourceResponse:
    """Decide the answer to an event whose ResponseURL passed the check; sends nothing.

    ``remaining_ms`` (the Lambda context's clock) is the broker's deadline: no change is
    started when too little time is left to record it and answer. ``own_function`` is the
    ARN this invocation was made through (the context's ``invoked_function_arn``).
    """
    try:
        broker = get_broker()
    except Exception as exc:
        message = exc.message if isinstance(exc, BrokerError) else type(exc).__name__
        logger.error("the broker cannot start: %s", message)
        reason = f"the broker cannot start: {message}"
        if head.is_delete:
            return head.answer("SUCCESS", head.unchanged_id(), reason + "; the grant was left in place")
        return head.answer("FAILED", head.unchanged_id(), reason)
    try:
        parsed = parse_event(event)
    except RequestError as exc:
        record_refusal(broker, head, exc)
        if head.is_delete:
            return head.answer("SUCCESS", head.unchanged_id(), f"nothing to remove: {exc.message}")
        return head.answer("FAILED", head.unchanged_id(), exc.message)
    return _Decision(broker, verifier, head, parsed, progress, remaining_ms, own_function).run()


@dataclass
class _Decision:
    broker: Broker
    verifier: Callable[[Broker], StackVerifier]
    head: EventHead
    event: CreateEvent | UpdateEvent | DeleteEvent
    progress: Progress
    remaining_ms: Callable[[], int] | None = None
    own_function: str | None = None

    def run(self) -> CustomResourceResponse:
        head, event = self.head, self.event
        refused = service_token_refusal(event.service_token, self.own_function, "the event's")
        if refused is not None:
            exc = ServiceTokenRefused(refused)
            self._refuse(exc)
            if isinstance(event, DeleteEvent):
                return head.answer("SUCCESS", event.physical_resource_id, f"not this broker's resource: {refused}")
            return head.answer("FAILED", head.unchanged_id(), refused)
        try:
            spec, plan = grant_from_properties(event.resource_properties)
        except RequestError as exc:
            if isinstance(event, DeleteEvent):
                return head.answer(
                    "SUCCESS",
                    event.physical_resource_id,
                    "not a grant of deploy-helper; nothing to remove",
                )
            self._refuse(exc)
            return head.answer("FAILED", head.unchanged_id(), exc.message)
        grant_pid = physical_id(spec, plan)
        if isinstance(event, DeleteEvent):
            if event.physical_resource_id != grant_pid:
                return head.answer(
                    "SUCCESS",
                    event.physical_resource_id,
                    "not created by deploy-helper (e.g. a failed create); nothing to remove",
                )
            if plan:
                return head.answer("SUCCESS", grant_pid, "plan only; nothing to remove")
        try:
            confirmed = self.verifier(self.broker).confirm(
                StackClaim(
                    request_type=event.request_type,
                    stack_id=event.stack_id,
                    logical_resource_id=event.logical_resource_id,
                    resource_type=event.resource_type,
                    properties=event.resource_properties,
                    request_id=_request_id(event),
                    physical_resource_id=grant_pid if isinstance(event, DeleteEvent) else None,
                ),
                service_token=self.own_function,
            )
        except StackNotConfirmed as exc:
            self._refuse(exc)
            if isinstance(event, DeleteEvent):
                return head.answer("SUCCESS", grant_pid, f"left in place: {exc.message}")
            if isinstance(event, UpdateEvent) and exc.status == "UPDATE_ROLLBACK_IN_PROGRESS":
                # The grant being rolled back to was never removed (an update only adds the new
                # grant; its clean-up Delete of the old one never ran), so nothing needs to change.
                return head.answer("SUCCESS", grant_pid, f"rollback: no change made ({exc.message})")
            return head.answer("FAILED", head.unchanged_id(), exc.message)
        identity = Identity(
            caller=confirmed.caller,
            account=confirmed.account,
            key_id=event.stack_id,
            signed_digest=_event_digest(event),
            method="stack",
        )
        payload = RequestPayload.model_validate(
            {
                "request_id": _request_id(event),
                "action": "revoke" if isinstance(event, DeleteEvent) else "apply",
                "dry_run": plan,
                "context": {
                    "stack_id": event.stack_id,
                    "logical_resource_id": event.logical_resource_id,
                },
                "grants": [spec.model_dump(mode="json", exclude_none=True)],
            }
        )
        # The owner is this resource: a Delete removes only its own ownership. A grant with no
        # recorded owner (applied before owners were kept) is revoked by a clean-up Delete only
        # when CloudFormation's own history shows this logical id had this physical id.
        unconfirmed = None
        if confirmed.cleanup and not confirmed.history_confirmed:
            unconfirmed = (
                f"CloudFormation does not show that {event.logical_resource_id} of this stack had the "
                f"physical id {grant_pid} (a Delete during an update's clean-up must); left in place"
            )
        acting = Acting(stack_owner(event.stack_id, event.logical_resource_id, grant_pid), unconfirmed)
        self.progress.physical_id = grant_pid  # from here on, the grant may exist
        try:
            response = self.broker.execute(identity, payload, remaining_ms=self.remaining_ms, acting=acting)
        except LedgerError as exc:
            if isinstance(event, DeleteEvent):
                return head.answer("SUCCESS", grant_pid, f"left in place: {exc.message}")
            return head.answer("FAILED", head.unchanged_id(), f"{exc.message}; no change was made")
        return self._answer(response.results[0], grant_pid)

    def _answer(self, result: GrantResult, grant_pid: str) -> CustomResourceResponse:
        head, event = self.head, self.event
        data = {
            "GrantId": result.grant_id,
            "StatementId": result.grant_id,
            "LedgerEntry": result.ledger_entry or "",
            "Decision": result.decision,
            "TargetAccount": result.account,
            "Target": result.target,
        }
        extra = {"decision": result.decision, "stack_id": event.stack_id, "grant": result.grant_id}
        if isinstance(event, DeleteEvent):
            if result.decision in ("revoked", "absent", "would-revoke"):
                logger.info("grant %s: %s", result.decision, result.grant_id, extra=extra)
                return head.answer("SUCCESS", grant_pid, result.decision, data)
            if result.decision == "kept":  # other owners still need it
                logger.info("grant kept for its other owners: %s", result.grant_id, extra=extra)
                return head.answer("SUCCESS", grant_pid, f"kept: {result.reason}", data)
            if any(code in result.reason for code in _GONE):
                logger.info("grant target no longer exists", extra=extra)
                return head.answer("SUCCESS", grant_pid, "the target no longer exists; nothing to remove", data)
            logger.error("could not revoke a grant; left in place: %s", result.reason, extra=extra)
            return head.answer("SUCCESS", grant_pid, f"left in place ({result.decision}): {result.reason}", data)
        if result.decision in ("applied", "unchanged", "would-apply"):
            logger.info("grant %s: %s", result.decision, result.grant_id, extra=extra)
            return head.answer("SUCCESS", grant_pid, result.decision, data)
        logger.warning("grant %s: %s", result.decision, result.reason, extra=extra)
        rule = f" (rule {result.rule_id})" if result.rule_id else ""
        return head.answer("FAILED", head.unchanged_id(), f"{result.decision}{rule}: {result.reason}", data)

    def _refuse(self, exc: BrokerError) -> None:
        record_refusal(self.broker, self.head, exc)


def _request_id(event: EventBase) -> str:
    return f"cfn-{event.request_id}"[:64]


def _event_digest(event: EventBase) -> str:
    core = {
        "RequestType": getattr(event, "request_type", ""),
        "StackId": event.stack_id,
        "RequestId": event.request_id,
        "LogicalResourceId": event.logical_resource_id,
        "ResourceProperties": event.resource_properties,
    }
    return "sha256:" + hashlib.sha256(rfc8785.dumps(core)).hexdigest()


def record_refusal(broker: Broker | None, head: EventHead, exc: BrokerError) -> None:
    """A ``denied`` ledger entry for a refused event (what it claimed is recorded as unverified)."""
    logger.warning(
        "custom-resource event refused: %s",
        trim_keep_end(exc.message, 300),
        extra={"decision": "denied", "code": exc.code, "stack_id": head.stack_id},
    )
    if broker is None:
        return
    claimed = {
        "request_id": f"cfn-{head.request_id}"[:64] if head.request_id else None,
        "key_id": head.stack_id or None,
        "action": {"Create": "apply", "Update": "apply", "Delete": "revoke"}.get(head.request_type),
    }
    code = getattr(exc, "check", None) or exc.code
    entry = entries.refusal(broker.clock(), code=f"custom-resource/{code}", reason=exc.message, claimed=claimed)
    try:
        broker.ledger.append_many([entry])
    except LedgerError:
        logger.exception("could not record a refusal in the ledger")
