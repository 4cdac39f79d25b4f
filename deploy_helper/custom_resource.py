"""``Custom::DeployHelperGrant``: a grant that lives as long as a CloudFormation resource.

A service team writes the grant in its stack, with the request schema's
fields in CloudFormation's PascalCase, and may add ``Plan: true`` to see what
would change without changing it::

    AuthorizerPermission:
      Type: Custom::DeployHelperGrant
      Properties:
        ServiceToken: !Ref DeployHelperServiceToken
        Kind: lambda-invoke
        Function: arn:aws:lambda:us-east-1:222222222222:function:token-authorizer
        Principal: apigateway.amazonaws.com
        SourceArn: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:\
                         ${Api}/authorizers/*"
        SourceAccount: !Ref AWS::AccountId

Semantics:

- **Create** applies the grant. The PhysicalResourceId is the grant's id (the
  StatementId / Sid / KMS grant name the ledger records), ``-plan`` added
  for a plan-only resource.
- **Update** applies the grant of the new properties and returns its id. A
  changed grant has a new id, so CloudFormation later sends Delete for the
  old one (which revokes it); an unchanged one is applied idempotently
  (``unchanged``: nothing is sent to AWS).
- **Delete** revokes. A grant already gone, a target that no longer exists, a
  PhysicalResourceId that is not this grant's (a Create that failed), or an
  event that cannot be confirmed, all answer SUCCESS: Delete never blocks a
  stack's deletion or rollback. What was left in place is in the ledger and
  the log.
- ``Fn::GetAtt`` offers ``GrantId``, ``StatementId``, ``LedgerEntry``,
  ``Decision``, ``TargetAccount`` and ``Target``.

Trust: before anything else the ``ResponseURL`` is checked
(``deploy_helper.cfn_response``); an event whose URL is not CloudFormation's
is refused and nothing is sent anywhere. Then the event is confirmed against
the stack it names (``deploy_helper.stack_verify``): registered account,
stack in progress, deployed with a registered deploy role, the resource with
the same properties in its template. Only then does the broker authorize
(``rules.yaml`` names the stacks caller), plan and apply, exactly as for a
signed request. Every refusal is a ``denied`` entry in the ledger.

Why not crhelper's ``CfnResource``: this module keeps every guarantee
crhelper gives — a catch-all that always answers (also when the broker
cannot even be built), a timer that answers before Lambda's timeout, a Reason
trimmed to fit while keeping its end, an idempotent Delete — but not its
machinery, which would weaken the trust checks: its sender PUTs to whatever
host the event names (we must refuse foreign URLs before any byte is sent)
and retries in an unbounded ``while True`` loop; its timer leaves 0.5 s and
answers without the grant's PhysicalResourceId (so a rollback could not
remove a grant applied at the last moment); it resets the root logger's level
on every call and builds three unused boto3 clients; Delete sleeps 120 s by
default; and its module-level mutable state is shared by concurrent threads
of a test process. Here ``handle`` is a pure decision (event → response) and
``cfn_response`` is the thin sender, each tested on its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

import rfc8785
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from deploy_helper.auth import Identity, short_errors
from deploy_helper.cfn_response import (
    CustomResourceResponse,
    Reply,
    ResponseSender,
    ResponseUrlValidator,
    Watchdog,
    cloudformation_response_url,
    trim_keep_end,
)
from deploy_helper.exceptions import BrokerError, LedgerError, RequestError
from deploy_helper.grants import REGISTRY, AnyGrant, GrantSpec, kind_of
from deploy_helper.identifiers import STACK_ARN_RE, StackArn
from deploy_helper.ledger import entries
from deploy_helper.models import MAX_NESTING
from deploy_helper.request import RequestPayload
from deploy_helper.stack_verify import RESOURCE_TYPE, StackClaim, StackNotConfirmed, StackVerifier

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.broker import Broker
    from deploy_helper.models import GrantResult

logger = logging.getLogger(__name__)

#: Properties that are not fields of the grant.
RESERVED_PROPERTIES = ("ServiceToken", "ServiceTimeout", "Plan", "Kind")
MAX_EVENT_BYTES = 64 * 1024
PLAN_SUFFIX = "-plan"
#: AWS error codes that mean "the target resource no longer exists".
_GONE = ("ResourceNotFoundException", "NoSuchBucket", "NotFoundException")

PhysicalId = Annotated[str, StringConstraints(strict=True, pattern=r"^[\x21-\x7e]{1,1024}$")]
CfnRequestId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9-]{1,64}$")]
LogicalId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9]{1,255}$")]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    service_token: Annotated[str, StringConstraints(max_length=2048)] | None = Field(None, alias="ServiceToken")
    response_url: Annotated[str, StringConstraints(max_length=8192)] = Field(alias="ResponseURL")
    stack_id: StackArn = Field(alias="StackId")
    request_id: CfnRequestId = Field(alias="RequestId")
    logical_resource_id: LogicalId = Field(alias="LogicalResourceId")
    resource_type: Annotated[str, StringConstraints(max_length=60)] = Field(alias="ResourceType")
    resource_properties: dict[str, Any] = Field(alias="ResourceProperties")


class CreateEvent(_Event):
    """CloudFormation creates the resource."""

    request_type: Literal["Create"] = Field(alias="RequestType")


class UpdateEvent(_Event):
    """CloudFormation updates the resource (or, in a rollback, puts the old properties back)."""

    request_type: Literal["Update"] = Field(alias="RequestType")
    physical_resource_id: PhysicalId = Field(alias="PhysicalResourceId")
    old_resource_properties: dict[str, Any] = Field(alias="OldResourceProperties")


class DeleteEvent(_Event):
    """CloudFormation deletes the resource (stack deletion, rollback, clean-up after an update)."""

    request_type: Literal["Delete"] = Field(alias="RequestType")
    physical_resource_id: PhysicalId = Field(alias="PhysicalResourceId")


CustomResourceEvent = Annotated[CreateEvent | UpdateEvent | DeleteEvent, Field(discriminator="request_type")]
_EVENT: TypeAdapter[Any] = TypeAdapter(CustomResourceEvent)
_GRANT: TypeAdapter[Any] = TypeAdapter(AnyGrant)


def parse_event(event: Any) -> CreateEvent | UpdateEvent | DeleteEvent:
    """The validated event; raises ``RequestError`` saying what is wrong."""
    _check_depth(event)
    try:
        size = len(json.dumps(event))
    except (TypeError, ValueError) as exc:
        raise RequestError("the event is not JSON") from exc
    if size > MAX_EVENT_BYTES:
        raise RequestError(f"the event is larger than {MAX_EVENT_BYTES} bytes")
    try:
        return _EVENT.validate_python(event)
    except ValidationError as exc:
        raise RequestError(f"not a CloudFormation custom-resource event: {short_errors(exc)}") from exc


def _check_depth(value: Any, depth: int = 0) -> None:
    if depth > MAX_NESTING:
        raise RequestError(f"the event is nested deeper than {MAX_NESTING} levels")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _check_depth(child, depth + 1)


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def grant_from_properties(properties: dict[str, Any]) -> tuple[GrantSpec, bool]:
    """The grant and the plan flag of a resource's properties; raises ``RequestError``."""
    kind_name = properties.get("Kind")
    if kind_name not in REGISTRY:
        raise RequestError(f"set Kind to one of {', '.join(sorted(REGISTRY))} (got {str(kind_name)[:40]!r})")
    plan = properties.get("Plan", "false")
    if plan not in (True, False, "true", "false"):
        raise RequestError("Plan must be true or false")
    fields = {_pascal(name): name for name in REGISTRY[kind_name].spec.model_fields if name != "kind"}
    data: dict[str, Any] = {"kind": kind_name}
    for key, value in properties.items():
        if key in RESERVED_PROPERTIES:
            continue
        if key not in fields:
            raise RequestError(
                f"unknown property {str(key)[:60]!r} for a {kind_name} grant; use {', '.join(sorted(fields))}"
            )
        data[fields[key]] = value
    try:
        spec: GrantSpec = _GRANT.validate_python(data)
    except ValidationError as exc:
        names = {v: k for k, v in fields.items()}
        problems = []
        for error in exc.errors()[:3]:
            loc = [names.get(str(p), str(p)) for p in error["loc"][1:]] or ["(grant)"]
            problems.append(f"{'.'.join(loc)}: {error['msg']}")
        raise RequestError(f"invalid {kind_name} grant: {'; '.join(problems)}") from exc
    return spec, plan in (True, "true")


def physical_id(spec: GrantSpec, plan: bool) -> str:
    """The PhysicalResourceId of a grant: its id, with ``-plan`` for a plan-only resource."""
    return kind_of(spec).grant_id(spec) + (PLAN_SUFFIX if plan else "")


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


# -- the entry point ---------------------------------------------------------------


@dataclass(frozen=True)
class EventHead:
    """The fields needed to answer an event, read before it is validated."""

    request_type: str
    response_url: str
    stack_id: str
    request_id: str
    logical_resource_id: str
    physical_resource_id: str | None

    @classmethod
    def read(cls, event: Any) -> EventHead:
        def text(name: str, limit: int) -> str:
            value = event.get(name) if isinstance(event, dict) else None
            return value[:limit] if isinstance(value, str) else ""

        physical = text("PhysicalResourceId", 1024)
        return cls(
            request_type=text("RequestType", 16),
            response_url=text("ResponseURL", 8192),
            stack_id=text("StackId", 256),
            request_id=text("RequestId", 64),
            logical_resource_id=text("LogicalResourceId", 255),
            physical_resource_id=physical or None,
        )

    @property
    def region(self) -> str:
        match = STACK_ARN_RE.fullmatch(self.stack_id)
        if match is None:
            raise RequestError("the event's StackId is not a stack id; nothing was sent")
        return match.group("region")

    @property
    def is_delete(self) -> bool:
        return self.request_type == "Delete"

    def not_created_id(self) -> str:
        """A PhysicalResourceId that is recognisably no grant (a Create that changed nothing)."""
        seed = f"{self.stack_id}|{self.logical_resource_id}|{self.request_id}".encode()
        return f"DeployHelperNotCreated-{hashlib.sha256(seed).hexdigest()[:16]}"

    def unchanged_id(self) -> str:
        """The id to answer with when nothing was changed: the current one, or a no-grant id."""
        return self.physical_resource_id or self.not_created_id()

    def answer(
        self,
        status: Literal["SUCCESS", "FAILED"],
        physical: str,
        reason: str = "",
        data: dict[str, str] | None = None,
    ) -> CustomResourceResponse:
        """The response to this event, echoing the ids CloudFormation sent."""
        return CustomResourceResponse(
            status=status,
            reason=reason,
            physical_resource_id=physical,
            stack_id=self.stack_id,
            request_id=self.request_id,
            logical_resource_id=self.logical_resource_id,
            data=data or {},
        )


@dataclass
class _Progress:
    """What the watchdog needs to answer for a handler that is still working."""

    physical_id: str


def handle_custom_resource(event: Any, context: Any, get_broker: Callable[[], Broker]) -> dict[str, Any]:
    """Answer one custom-resource event (``lambda_handler`` dispatches here); returns a summary."""
    settings = current_settings()
    head = EventHead.read(event)
    try:
        target = settings.response_url_validator(head.response_url, head.region)
    except RequestError as exc:
        _record_refusal(_broker_or_none(get_broker), head, exc)
        return {"ok": False, "sent": False, "error": {"code": exc.code, "message": exc.message}}
    reply = Reply(target, settings.sender)
    progress = _Progress(head.unchanged_id())

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
            response = handle(event, head, get_broker, settings, progress, clock if callable(clock) else None)
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


def handle(
    event: Any,
    head: EventHead,
    get_broker: Callable[[], Broker],
    settings: CustomResourceSettings,
    progress: _Progress,
    remaining_ms: Callable[[], int] | None = None,
) -> CustomResourceResponse:
    """Decide the answer to an event whose ResponseURL passed the check; sends nothing.

    ``remaining_ms`` (the Lambda context's clock) is the broker's deadline: no change is
    started when too little time is left to record it and answer.
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
        _record_refusal(broker, head, exc)
        if head.is_delete:
            return head.answer("SUCCESS", head.unchanged_id(), f"nothing to remove: {exc.message}")
        return head.answer("FAILED", head.unchanged_id(), exc.message)
    return _Decision(broker, settings, head, parsed, progress, remaining_ms).run()


@dataclass
class _Decision:
    broker: Broker
    settings: CustomResourceSettings
    head: EventHead
    event: CreateEvent | UpdateEvent | DeleteEvent
    progress: _Progress
    remaining_ms: Callable[[], int] | None = None

    def run(self) -> CustomResourceResponse:
        head, event = self.head, self.event
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
            confirmed = self.settings.verifier(self.broker).confirm(
                StackClaim(
                    request_type=event.request_type,
                    stack_id=event.stack_id,
                    logical_resource_id=event.logical_resource_id,
                    resource_type=event.resource_type,
                    properties=event.resource_properties,
                    request_id=_request_id(event),
                )
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
        self.progress.physical_id = grant_pid  # from here on, the grant may exist
        try:
            response = self.broker.execute(identity, payload, remaining_ms=self.remaining_ms)
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
        _record_refusal(self.broker, self.head, exc)


def _request_id(event: _Event) -> str:
    return f"cfn-{event.request_id}"[:64]


def _event_digest(event: _Event) -> str:
    core = {
        "RequestType": getattr(event, "request_type", ""),
        "StackId": event.stack_id,
        "RequestId": event.request_id,
        "LogicalResourceId": event.logical_resource_id,
        "ResourceProperties": event.resource_properties,
    }
    return "sha256:" + hashlib.sha256(rfc8785.dumps(core)).hexdigest()


def _broker_or_none(get_broker: Callable[[], Broker]) -> Broker | None:
    try:
        return get_broker()
    except Exception:  # the refusal is still logged; the ledger needs a broker
        logger.exception("the broker cannot start; the refusal is only in the log")
        return None


def _record_refusal(broker: Broker | None, head: EventHead, exc: BrokerError) -> None:
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


__all__ = [
    "RESOURCE_TYPE",
    "CreateEvent",
    "CustomResourceEvent",
    "CustomResourceSettings",
    "DeleteEvent",
    "UpdateEvent",
    "configure",
    "grant_from_properties",
    "handle_custom_resource",
    "parse_event",
    "physical_id",
]
