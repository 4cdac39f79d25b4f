"""``sns-publish``: one managed statement in an SNS topic policy.

Typical use: a cross-account event flow -- a role in another account publishes to a
topic (or subscribes its queue to it), or a service (EventBridge, S3, CloudWatch
alarms) publishes through its service principal, always bound to its source with
``aws:SourceArn``/``aws:SourceAccount``.

Size limits (Amazon SNS Developer Guide, "Amazon SNS API permissions: Actions and
resources reference", Policy quotas): 30 KB (30,720 bytes) and 100 statements per
policy; both are checked before anything is sent. A topic always has a policy: when
the broker removes the last statement, the topic gets an owner-only policy (the
actions of the default policy AWS gives a new topic, for the owner account's root
principal rather than ``*`` with an ``AWS:SourceOwner`` condition) instead of an
empty one.
"""

from __future__ import annotations

import json
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

SNS_POLICY_LIMIT = 30 * 1024
SNS_STATEMENT_LIMIT = 100
TOPIC_ARN_RE = service_arn_re("sns", r"(?P<name>[A-Za-z0-9_-]{1,251}\.fifo|[A-Za-z0-9_-]{1,256})")
TopicArn = Annotated[
    StrictStr, arn_matcher(TOPIC_ARN_RE, "SNS topic ARN", "arn:aws:sns:eu-west-1:123456789012:deployments")
]
#: The only actions an sns-publish grant can carry.
ACCESS_LEVELS: dict[str, tuple[str, ...]] = {
    "publish": ("sns:Publish",),
    "subscribe": ("sns:Subscribe",),
}


class SnsPublishGrant(GrantSpec):
    """Access for ``principal`` to ``topic`` at a named level.

    Example::

        kind: sns-publish
        topic: arn:aws:sns:us-east-1:111111111111:deployments
        principal: arn:aws:iam::333333333333:role/deploy
        access: publish
    """

    kind: Literal["sns-publish"]
    topic: TopicArn
    principal: RoleArn | AccountId | ServicePrincipal
    access: Literal["publish", "subscribe"]
    source_arn: SourceArn | None = None
    source_account: AccountId | None = None

    @model_validator(mode="after")
    def _bound(self) -> SnsPublishGrant:
        check_binding(self.principal, self.source_arn, self.source_account)
        return self


class SnsPublish(ResourcePolicyKind[SnsPublishGrant]):
    """A statement in an SNS topic policy (the ``Policy`` attribute)."""

    kind: ClassVar[str] = "sns-publish"
    spec: ClassVar[type[GrantSpec]] = SnsPublishGrant
    service: ClassVar[str] = "sns"
    permissions: ClassVar[tuple[str, ...]] = ("sns:GetTopicAttributes", "sns:SetTopicAttributes")
    size_limit: ClassVar[int | None] = SNS_POLICY_LIMIT
    statement_limit: ClassVar[int | None] = SNS_STATEMENT_LIMIT
    access_levels: ClassVar[dict[str, tuple[str, ...]]] = ACCESS_LEVELS
    principal_forms: ClassVar[frozenset[str]] = frozenset({"roles", "accounts", "services"})
    policy_name: ClassVar[str] = "topic policy"
    limit_owner: ClassVar[str] = "SNS"
    example: ClassVar[dict[str, Any]] = {
        "kind": "sns-publish",
        "topic": "arn:aws:sns:us-east-1:111111111111:deployments",
        "principal": "arn:aws:iam::333333333333:role/deploy",
        "access": "publish",
    }
    variants: ClassVar[dict[str, Any]] = {
        "access": "subscribe",
        "principal": "333333333333",
        "topic": "arn:aws:sns:us-east-1:111111111111:other",
    }

    def target_account(self, spec: SnsPublishGrant) -> str:
        return _arn(spec.topic).group("account")

    def region(self, spec: SnsPublishGrant) -> str | None:
        return _arn(spec.topic).group("region")

    def resource(self, spec: SnsPublishGrant) -> str:
        return spec.topic

    def principal(self, spec: SnsPublishGrant) -> str:
        return spec.principal

    def statement(self, spec: SnsPublishGrant) -> dict[str, Any]:
        statement: dict[str, Any] = {
            "Sid": self.grant_id(spec),
            "Effect": "Allow",
            "Principal": principal_block(spec.principal),
            "Action": list(ACCESS_LEVELS[spec.access]),
            "Resource": spec.topic,
        }
        condition = source_condition(spec.source_arn, spec.source_account)
        if condition:
            statement["Condition"] = condition
        return statement

    def get_policy_text(self, client: Any, resource: str) -> str | None:
        attributes = client.get_topic_attributes(TopicArn=resource).get("Attributes", {})
        return str(attributes.get("Policy") or "") or None

    def put_policy_text(self, client: Any, resource: str, text: str) -> None:
        client.set_topic_attributes(TopicArn=resource, AttributeName="Policy", AttributeValue=text)

    def delete_policy(self, client: Any, resource: str) -> None:
        self.put_policy_text(client, resource, json.dumps(default_topic_policy(resource), separators=(",", ":")))


def default_topic_policy(topic: str) -> dict[str, Any]:
    """An owner-only policy: the owner account may manage and use the topic, nobody else."""
    m = _arn(topic)
    owner = f"arn:{m.group('partition')}:iam::{m.group('account')}:root"
    return {
        "Version": "2008-10-17",
        "Id": "__default_policy_ID",
        "Statement": [
            {
                "Sid": "__default_statement_ID",
                "Effect": "Allow",
                "Principal": {"AWS": owner},
                "Action": [
                    "SNS:GetTopicAttributes",
                    "SNS:SetTopicAttributes",
                    "SNS:AddPermission",
                    "SNS:RemovePermission",
                    "SNS:DeleteTopic",
                    "SNS:Subscribe",
                    "SNS:ListSubscriptionsByTopic",
                    "SNS:Publish",
                ],
                "Resource": topic,
            }
        ],
    }


def _arn(arn: str) -> Any:
    m = TOPIC_ARN_RE.fullmatch(arn)
    if m is None:
        raise RuntimeError(f"unparsed topic ARN reached a grant kind: {arn!r}")
    return m
