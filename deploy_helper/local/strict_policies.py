"""AWS's documented refusals of resource-policy writes that moto accepts (strict_aws, part two).

Registered by :func:`deploy_helper.local.strict_aws.install` beside its own checks;
each check gets the call's parameters and raises ``AwsRefusal`` where AWS would
refuse, with AWS's error code and HTTP status. Sizes are counted as the service
counts them: the document as sent (which the broker sends as compact JSON).

SQS ``SetQueueAttributes`` with ``Policy``
  * longer than 8,192 bytes, or more than 20 statements (Amazon SQS Developer Guide,
    "Amazon SQS policy quotas") -> ``InvalidAttributeValue`` 400.
SNS ``SetTopicAttributes`` with ``AttributeName=Policy``
  * longer than 30 KB (30,720 bytes) or more than 100 statements (Amazon SNS
    Developer Guide, "Policy quotas") -> ``InvalidParameter`` 400; a document that
    is not a JSON object -> ``InvalidParameter`` 400.
EventBridge ``PutPermission`` with ``Policy``
  * longer than 10,240 characters (EventBridge quotas, "Event bus policy size") ->
    ``PolicyLengthExceededException`` 400.
ECR ``SetRepositoryPolicy`` / Secrets Manager ``PutResourcePolicy``
  * longer than 10,240 / 20,480 characters: already refused by botocore's own
    parameter validation (the API models' length constraints) before any request;
    checked here too so a client without validation sees AWS's refusal
    (``InvalidParameterException`` 400 for both).
Secrets Manager ``PutResourcePolicy`` with ``BlockPublicPolicy=True``
  * a statement that allows ``*`` (or ``{"AWS": "*"}``) without a condition ->
    ``PublicPolicyException`` 400, "This resource policy contains a public policy".
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

#: Documented limits (bytes or characters; the broker sends ASCII, where they are equal).
SQS_POLICY_LIMIT = 8_192
SQS_STATEMENT_LIMIT = 20
SNS_POLICY_LIMIT = 30_720
SNS_STATEMENT_LIMIT = 100
EVENTS_POLICY_LIMIT = 10_240
ECR_POLICY_LIMIT = 10_240
SECRETS_POLICY_LIMIT = 20_480


def checks(refusal: type[Exception]) -> dict[str, Callable[[dict[str, Any]], None]]:
    """The checks by ``<service>.<Operation>``; ``refusal(code, status, message)`` is raised."""

    def sqs_set_queue_attributes(params: dict[str, Any]) -> None:
        text = (params.get("Attributes") or {}).get("Policy")
        if not text:
            return
        size = len(text.encode("utf-8"))
        if size > SQS_POLICY_LIMIT:
            raise refusal(
                "InvalidAttributeValue",
                400,
                f"Invalid value for the parameter Policy. Reason: the policy is {size} bytes, "
                f"over the maximum of {SQS_POLICY_LIMIT}.",
            )
        count = len(_statements(text))
        if count > SQS_STATEMENT_LIMIT:
            raise refusal(
                "InvalidAttributeValue",
                400,
                f"Invalid value for the parameter Policy. Reason: {count} statements, over the maximum of "
                f"{SQS_STATEMENT_LIMIT}.",
            )

    def sns_set_topic_attributes(params: dict[str, Any]) -> None:
        if params.get("AttributeName") != "Policy":
            return
        text = params.get("AttributeValue") or ""
        if len(text.encode("utf-8")) > SNS_POLICY_LIMIT:
            raise refusal("InvalidParameter", 400, "Invalid parameter: Policy Error: policy size exceeds 30 KB")
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise refusal("InvalidParameter", 400, "Invalid parameter: Policy Error: not a JSON object")
        if len(_statements(text)) > SNS_STATEMENT_LIMIT:
            raise refusal("InvalidParameter", 400, "Invalid parameter: Policy Error: too many statements")

    def events_put_permission(params: dict[str, Any]) -> None:
        text = params.get("Policy")
        if text and len(text) > EVENTS_POLICY_LIMIT:
            raise refusal(
                "PolicyLengthExceededException",
                400,
                f"The event bus policy is {len(text)} characters; the limit is {EVENTS_POLICY_LIMIT}.",
            )

    def ecr_set_repository_policy(params: dict[str, Any]) -> None:
        if len(params.get("policyText") or "") > ECR_POLICY_LIMIT:
            raise refusal("InvalidParameterException", 400, "Invalid parameter at 'policyText': too long")

    def secrets_put_resource_policy(params: dict[str, Any]) -> None:
        text = params.get("ResourcePolicy") or ""
        if len(text) > SECRETS_POLICY_LIMIT:
            raise refusal("InvalidParameterException", 400, "Invalid parameter at 'ResourcePolicy': too long")
        if params.get("BlockPublicPolicy") and any(_public(s) for s in _statements(text)):
            raise refusal("PublicPolicyException", 400, "This resource policy contains a public policy.")

    return {
        "sqs.SetQueueAttributes": sqs_set_queue_attributes,
        "sns.SetTopicAttributes": sns_set_topic_attributes,
        "events.PutPermission": events_put_permission,
        "ecr.SetRepositoryPolicy": ecr_set_repository_policy,
        "secretsmanager.PutResourcePolicy": secrets_put_resource_policy,
    }


def _statements(text: str) -> list[Any]:
    try:
        document = json.loads(text)
    except ValueError:
        return []
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    return statements if isinstance(statements, list) else [statements]


def _public(statement: Any) -> bool:
    if not isinstance(statement, dict) or statement.get("Effect") != "Allow" or statement.get("Condition"):
        return False
    principal = statement.get("Principal")
    if principal == "*":
        return True
    if isinstance(principal, dict):
        values = principal.get("AWS", [])
        return "*" in (values if isinstance(values, list) else [values])
    return False
