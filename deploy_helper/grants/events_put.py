"""``events-put``: one managed statement in an EventBridge event bus policy.

Typical use: a central bus (in the tooling or an operations account) that other
accounts put deployment events on -- one account or role at a time, or a whole
organization (principal ``*`` bound with ``aws:PrincipalOrgID``) where a rule allows
``organization`` principals.

Writes: statements the plan removes go with ``RemovePermission(StatementId)`` (one
statement, atomically); the resulting document is then sent whole with
``PutPermission(Policy=...)``. Either way AWS treats a ``Policy`` (replacing the
bus policy, or adding its statements by ``Sid``), the bus ends with exactly the
planned document. A bus whose last statement goes has no policy.

Size limit (Amazon EventBridge User Guide, "Amazon EventBridge quotas": "Event bus
policy size ... 10,240 ... Maximum policy size, in characters"; adjustable; the
PutPermission API reference: "The permission policy on the event bus cannot exceed
10 KB in size"). The broker keeps to the default and counts bytes of compact JSON,
never fewer than characters.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import model_validator

from deploy_helper.execution.policydoc import is_managed_sid
from deploy_helper.grants.base import GrantSpec
from deploy_helper.grants.resource_policy import ResourcePolicyKind, principal_block
from deploy_helper.trust.identifiers import AccountId, OrgId, RoleArn, StrictStr, arn_matcher, service_arn_re

if TYPE_CHECKING:
    from deploy_helper.grants.base import ResourcePlan

EVENTS_POLICY_LIMIT = 10_240
BUS_ARN_RE = service_arn_re("events", r"event-bus/(?P<name>[A-Za-z0-9._-]{1,256})")
EventBusArn = Annotated[
    StrictStr,
    arn_matcher(BUS_ARN_RE, "EventBridge event bus ARN", "arn:aws:events:eu-west-1:123456789012:event-bus/deployments"),
]
#: The only actions an events-put grant can carry.
ACCESS_LEVELS: dict[str, tuple[str, ...]] = {"put-events": ("events:PutEvents",)}


class EventsPutGrant(GrantSpec):
    """Permission for ``principal`` to put events on ``bus``.

    Example::

        kind: events-put
        bus: arn:aws:events:us-east-1:111111111111:event-bus/deployments
        principal: "333333333333"
        access: put-events
    """

    kind: Literal["events-put"]
    bus: EventBusArn
    principal: AccountId | RoleArn | Literal["*"]
    access: Literal["put-events"]
    principal_org_id: OrgId | None = None

    @model_validator(mode="after")
    def _org_bound(self) -> EventsPutGrant:
        if self.principal == "*" and not self.principal_org_id:
            raise ValueError("principal '*' requires principal_org_id (your organization's id)")
        if self.principal != "*" and self.principal_org_id:
            raise ValueError("principal_org_id applies only to the organization-wide principal '*'")
        return self


class EventsPut(ResourcePolicyKind[EventsPutGrant]):
    """A statement in an event bus policy (``DescribeEventBus``/``PutPermission``/``RemovePermission``)."""

    kind: ClassVar[str] = "events-put"
    spec: ClassVar[type[GrantSpec]] = EventsPutGrant
    service: ClassVar[str] = "events"
    permissions: ClassVar[tuple[str, ...]] = (
        "events:DescribeEventBus",
        "events:PutPermission",
        "events:RemovePermission",
    )
    size_limit: ClassVar[int | None] = EVENTS_POLICY_LIMIT
    access_levels: ClassVar[dict[str, tuple[str, ...]]] = ACCESS_LEVELS
    principal_forms: ClassVar[frozenset[str]] = frozenset({"roles", "accounts", "organization"})
    policy_name: ClassVar[str] = "event bus policy"
    limit_owner: ClassVar[str] = "EventBridge"
    example: ClassVar[dict[str, Any]] = {
        "kind": "events-put",
        "bus": "arn:aws:events:us-east-1:111111111111:event-bus/deployments",
        "principal": "333333333333",
        "access": "put-events",
    }
    variants: ClassVar[dict[str, Any]] = {
        "principal": "arn:aws:iam::333333333333:role/deploy",
        "bus": "arn:aws:events:us-east-1:111111111111:event-bus/other",
    }

    def target_account(self, spec: EventsPutGrant) -> str:
        return _arn(spec.bus).group("account")

    def region(self, spec: EventsPutGrant) -> str | None:
        return _arn(spec.bus).group("region")

    def resource(self, spec: EventsPutGrant) -> str:
        return spec.bus

    def principal(self, spec: EventsPutGrant) -> str:
        return spec.principal

    def resource_label(self, resource: str) -> str:
        return f"bus {_arn(resource).group('name')}"

    def statement(self, spec: EventsPutGrant) -> dict[str, Any]:
        statement: dict[str, Any] = {
            "Sid": self.grant_id(spec),
            "Effect": "Allow",
            "Principal": principal_block(spec.principal),
            "Action": list(ACCESS_LEVELS[spec.access]),
            "Resource": spec.bus,
        }
        if spec.principal_org_id:
            statement["Condition"] = {"StringEquals": {"aws:PrincipalOrgID": spec.principal_org_id}}
        return statement

    def get_policy_text(self, client: Any, resource: str) -> str | None:
        return str(client.describe_event_bus(Name=_arn(resource).group("name")).get("Policy") or "") or None

    def put_policy_text(self, client: Any, resource: str, text: str) -> None:
        client.put_permission(EventBusName=_arn(resource).group("name"), Policy=text)

    def delete_policy(self, client: Any, resource: str) -> None:
        """Nothing to do: every statement the plan removed went by ``RemovePermission`` in ``write``."""

    def write(self, client: Any, plan: ResourcePlan) -> None:
        """Remove the managed statements the plan drops one by one, then send the new document."""
        name = _arn(plan.resource).group("name")
        before = {s.get("Sid") for s in (plan.before or {}).get("Statement", [])}
        for document in plan.writes:
            after = {s.get("Sid") for s in (document or {}).get("Statement", [])}
            for sid in sorted(str(s) for s in before - after if is_managed_sid(s)):
                try:
                    client.remove_permission(EventBusName=name, StatementId=sid)
                except ClientError as exc:
                    if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                        raise
            if document is not None and any(is_managed_sid(s) for s in after):
                self.put_policy_text(client, plan.resource, json.dumps(document, separators=(",", ":")))


def _arn(arn: str) -> Any:
    m = BUS_ARN_RE.fullmatch(arn)
    if m is None:
        raise RuntimeError(f"unparsed event bus ARN reached a grant kind: {arn!r}")
    return m
