"""Custom-resource events: their shapes, what they ask for, and how an answer echoes them.

``parse_event`` validates an event (``CreateEvent`` / ``UpdateEvent`` /
``DeleteEvent``, bounded in size and depth); ``grant_from_properties`` reads
the grant a resource declares; ``EventHead`` is what is needed to answer an
event at all, read before it is validated.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from deploy_helper.entry.cfn_response import CustomResourceResponse
from deploy_helper.exceptions import RequestError
from deploy_helper.grants import REGISTRY, AnyGrant, GrantSpec, kind_of
from deploy_helper.models import MAX_NESTING
from deploy_helper.trust.auth import short_errors
from deploy_helper.trust.identifiers import STACK_ARN_RE, StackArn

#: Properties that are not fields of the grant.
RESERVED_PROPERTIES = ("ServiceToken", "ServiceTimeout", "Plan", "Kind")
MAX_EVENT_BYTES = 64 * 1024
PLAN_SUFFIX = "-plan"

PhysicalId = Annotated[str, StringConstraints(strict=True, pattern=r"^[\x21-\x7e]{1,1024}$")]
CfnRequestId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9-]{1,64}$")]
LogicalId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9]{1,255}$")]


class EventBase(BaseModel):
    """Fields of every request type."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    service_token: Annotated[str, StringConstraints(max_length=2048)] | None = Field(None, alias="ServiceToken")
    response_url: Annotated[str, StringConstraints(max_length=8192)] = Field(alias="ResponseURL")
    stack_id: StackArn = Field(alias="StackId")
    request_id: CfnRequestId = Field(alias="RequestId")
    logical_resource_id: LogicalId = Field(alias="LogicalResourceId")
    resource_type: Annotated[str, StringConstraints(max_length=60)] = Field(alias="ResourceType")
    resource_properties: dict[str, Any] = Field(alias="ResourceProperties")


class CreateEvent(EventBase):
    """CloudFormation creates the resource."""

    request_type: Literal["Create"] = Field(alias="RequestType")


class UpdateEvent(EventBase):
    """CloudFormation updates the resource (or, in a rollback, puts the old properties back)."""

    request_type: Literal["Update"] = Field(alias="RequestType")
    physical_resource_id: PhysicalId = Field(alias="PhysicalResourceId")
    old_resource_properties: dict[str, Any] = Field(alias="OldResourceProperties")


class DeleteEvent(EventBase):
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
