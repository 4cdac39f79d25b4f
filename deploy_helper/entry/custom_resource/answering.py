"""Answering custom-resource events: always, in time, and only to CloudFormation.

``handle_custom_resource`` checks the ``ResponseURL`` before anything else,
then has ``decision.handle`` decide the answer (a pure event → response step)
under a ``Watchdog`` that answers before Lambda's timeout, and a catch-all that
answers when the broker has a bug. ``cfn_response`` is the thin sender.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploy_helper.entry.cfn_response import (
    Reply,
    ResponseSender,
    ResponseUrlValidator,
    Watchdog,
    cloudformation_response_url,
)
from deploy_helper.entry.custom_resource.decision import Progress, handle, record_refusal
from deploy_helper.entry.custom_resource.events import EventHead
from deploy_helper.exceptions import RequestError
from deploy_helper.trust.stack_verify import StackVerifier

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.execution.broker import Broker

logger = logging.getLogger(__name__)

# -- configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class CustomResourceSettings:
    """How custom-resource events are answered; production defaults.

    The local harness replaces ``response_url_validator`` (loopback stand-in
    for S3) through ``configure``; nothing in an event can change it.
    ``timeout_margin`` is how long before Lambda's timeout the watchdog answers.
    """

    response_url_validator: ResponseUrlValidator = cloudformation_response_url
    sender: ResponseSender = field(default_factory=ResponseSender)
    timeout_margin: float = 3.0
    verifier: Callable[[Broker], StackVerifier] = StackVerifier.for_broker


_settings = CustomResourceSettings()


def configure(settings: CustomResourceSettings | None) -> None:
    """Use ``settings`` for the following events; ``None`` restores the production settings."""
    global _settings
    _settings = settings or CustomResourceSettings()


def current_settings() -> CustomResourceSettings:
    """The settings events are answered with now."""
    return _settings


def handle_custom_resource(event: Any, context: Any, get_broker: Callable[[], Broker]) -> dict[str, Any]:
    """Answer one custom-resource event (``lambda_handler`` dispatches here); returns a summary.

    ``context`` is the Lambda context: its clock bounds the work, and its
    ``invoked_function_arn`` is the only ServiceToken this broker acts for.
    """
    settings = current_settings()
    head = EventHead.read(event)
    try:
        target = settings.response_url_validator(head.response_url, head.region)
    except RequestError as exc:
        record_refusal(_broker_or_none(get_broker), head, exc)
        return {"ok": False, "sent": False, "error": {"code": exc.code, "message": exc.message}}
    reply = Reply(target, settings.sender)
    progress = Progress(head.unchanged_id())

    def on_timeout() -> None:
        logger.error("about to run out of time; answering now", extra={"stack_id": head.stack_id})
        if head.is_delete:
            reply.send(head.answer("SUCCESS", progress.physical_id, "timed out; the grant may be left in place"))
        else:
            reply.send(
                head.answer(
                    "FAILED",
                    progress.physical_id,
                    "the broker ran out of time; retry the deployment",
                )
            )

    with Watchdog(context, settings.timeout_margin, on_timeout):
        try:
            clock = getattr(context, "get_remaining_time_in_millis", None)
            own = getattr(context, "invoked_function_arn", None)
            response = handle(
                event,
                head,
                get_broker,
                settings.verifier,
                progress,
                clock if callable(clock) else None,
                own_function=own if isinstance(own, str) else None,
            )
        except Exception as exc:  # a bug must still produce an answer, never a stack waiting an hour
            logger.exception("unexpected error while handling a custom-resource event")
            reason = f"internal error in the broker ({type(exc).__name__}); see its log"
            if head.is_delete:
                response = head.answer("SUCCESS", head.unchanged_id(), reason + "; the grant may be left in place")
            else:
                response = head.answer("FAILED", progress.physical_id, reason)
        sent = reply.send(response)
    answered = reply.sent or response
    return {
        "ok": answered.status == "SUCCESS",
        "sent": sent,
        "delivered": reply.delivered,
        "status": answered.status,
        "physical_resource_id": answered.physical_resource_id,
        "reason": answered.reason,
    }


def _broker_or_none(get_broker: Callable[[], Broker]) -> Broker | None:
    try:
        return get_broker()
    except Exception:  # the refusal is still logged; the ledger needs a broker
        logger.exception("the broker cannot start; the refusal is only in the log")
        return None
