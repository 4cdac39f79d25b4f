"""``sqs-send``: one managed statement in an SQS queue policy.

Typical use: a cross-account event flow -- a role in another account sends to (or
consumes from) a queue, or an SNS topic, EventBridge rule or S3 bucket delivers to
it through its service principal, always bound to its source with
``aws:SourceArn``/``aws:SourceAccount``.

Size limits (Amazon SQS Developer Guide, "Amazon SQS policy quotas"): a policy is at
most 8,192 bytes and 20 statements; both are checked before anything is sent. The
policy is the queue's ``Policy`` attribute (``Get/SetQueueAttributes``); an empty
value removes it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import model_validator

from deploy_helper.grants.base import GrantSpec
from deploy_helper.grants.resource_policy import ResourcePolicyKind, check_binding, principal_block, source_condition
from deploy_helper.trust.identifiers import (
    AccountId,
    RoleArn,
    ServicePrincipal,
    SourceArn,
    StrictStr,
    arn_matcher,
    service_arn_re,
)

SQS_POLICY_LIMIT = 8_192
SQS_STATEMENT_LIMIT = 20
QUEUE_ARN_RE = service_arn_re("sqs", r"(?P<name>[A-Za-z0-9_-]{1,75}\.fifo|[A-Za-z0-9_-]{1,80})")
QueueArn = Annotated[
    StrictStr, arn_matcher(QUEUE_ARN_RE, "SQS queue ARN", "arn:aws:sqs:eu-west-1:123456789012:deploy-events")
]
#: The only actions an sqs-send grant can carry.
ACCESS_LEVELS: dict[str, tuple[str, ...]] = {
    "send": ("sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"),
    "consume": (
        "sqs:ChangeMessageVisibility",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:ReceiveMessage",
    ),
}


class SqsSendGrant(GrantSpec):
    """Access for ``principal`` to ``queue`` at a named level.

    Example::

        kind: sqs-send
        queue: arn:aws:sqs:us-east-1:111111111111:deploy-events
        principal: sns.amazonaws.com
        source_arn: arn:aws:sns:us-east-1:333333333333:deployments
        access: send
    """

    kind: Literal["sqs-send"]
    queue: QueueArn
    principal: RoleArn | AccountId | ServicePrincipal
    access: Literal["send", "consume"]
    source_arn: SourceArn | None = None
    source_account: AccountId | None = None

    @model_validator(mode="after")
    def _bound(self) -> SqsSendGrant:
        check_binding(self.principal, self.source_arn, self.source_account)
        return self


class SqsSend(ResourcePolicyKind[SqsSendGrant]):
    """A statement in an SQS queue policy (the ``Policy`` attribute)."""

    kind: ClassVar[str] = "sqs-send"
    spec: ClassVar[type[GrantSpec]] = SqsSendGrant
    service: ClassVar[str] = "sqs"
    permissions: ClassVar[tuple[str, ...]] = ("sqs:GetQueueAttributes", "sqs:SetQueueAttributes")
    size_limit: ClassVar[int | None] = SQS_POLICY_LIMIT
    statement_limit: ClassVar[int | None] = SQS_STATEMENT_LIMIT
    access_levels: ClassVar[dict[str, tuple[str, ...]]] = ACCESS_LEVELS
    principal_forms: ClassVar[frozenset[str]] = frozenset({"roles", "accounts", "services"})
    policy_name: ClassVar[str] = "queue policy"
    limit_owner: ClassVar[str] = "SQS"
    example: ClassVar[dict[str, Any]] = {
        "kind": "sqs-send",
        "queue": "arn:aws:sqs:us-east-1:111111111111:deploy-events",
        "principal": "sns.amazonaws.com",
        "source_arn": "arn:aws:sns:us-east-1:333333333333:deployments",
        "access": "send",
    }
    variants: ClassVar[dict[str, Any]] = {
        "access": "consume",
        "source_arn": "arn:aws:sns:us-east-1:333333333333:other",
        "queue": "arn:aws:sqs:us-east-1:111111111111:other",
    }

    def target_account(self, spec: SqsSendGrant) -> str:
        return _arn(spec.queue).group("account")

    def region(self, spec: SqsSendGrant) -> str | None:
        return _arn(spec.queue).group("region")

    def resource(self, spec: SqsSendGrant) -> str:
        return spec.queue

    def principal(self, spec: SqsSendGrant) -> str:
        return spec.principal

    def statement(self, spec: SqsSendGrant) -> dict[str, Any]:
        statement: dict[str, Any] = {
            "Sid": self.grant_id(spec),
            "Effect": "Allow",
            "Principal": principal_block(spec.principal),
            "Action": list(ACCESS_LEVELS[spec.access]),
            "Resource": spec.queue,
        }
        condition = source_condition(spec.source_arn, spec.source_account)
        if condition:
            statement["Condition"] = condition
        return statement

    def get_policy_text(self, client: Any, resource: str) -> str | None:
        response = client.get_queue_attributes(QueueUrl=queue_url(resource), AttributeNames=["Policy"])
        return str(response.get("Attributes", {}).get("Policy") or "") or None

    def put_policy_text(self, client: Any, resource: str, text: str) -> None:
        client.set_queue_attributes(QueueUrl=queue_url(resource), Attributes={"Policy": text})

    def delete_policy(self, client: Any, resource: str) -> None:
        client.set_queue_attributes(QueueUrl=queue_url(resource), Attributes={"Policy": ""})


def queue_url(arn: str) -> str:
    """The queue's URL, from its ARN (no ``GetQueueUrl`` call, no extra permission)."""
    m = _arn(arn)
    suffix = "amazonaws.com.cn" if m.group("partition") == "aws-cn" else "amazonaws.com"
    return f"https://sqs.{m.group('region')}.{suffix}/{m.group('account')}/{m.group('name')}"


def _arn(arn: str) -> Any:
    m = QUEUE_ARN_RE.fullmatch(arn)
    if m is None:
        raise RuntimeError(f"unparsed queue ARN reached a grant kind: {arn!r}")
    return m
