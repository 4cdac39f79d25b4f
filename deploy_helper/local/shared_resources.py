"""The seed scenario's resources for the resource-policy kinds, and their rules.

In the tooling account (beside the artifact bucket and key of the seed scenario): a
container image repository, a queue and a topic for deployment events, a deploy
token secret and an event bus -- what a multi-account pipeline shares across
accounts. Each opts in with the bootstrap tag, and each has a rule letting the
CI/CD caller grant the service accounts' deploy roles (or, for the queue, SNS in a
service account) access. The artifact key's policy is the target of the
``kms-key-policy`` rule.

Read-backs here use the harness's administrator and plain AWS calls, never the
broker's own code, so tests compare the broker's work with what AWS holds.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from deploy_helper.local.server import LOCAL_CONFIG, LOCAL_REGION

if TYPE_CHECKING:
    import boto3

    from deploy_helper.local.server import LocalAws

TAG = {"Key": "deploy-helper:managed", "Value": "true"}
REPOSITORY = "service-images"
QUEUE = "deploy-events"
TOPIC = "deployments"
SECRET = "deploy/token"  # noqa: S105 - the secret's name, not its value
BUS = "deployments"
#: The resource-policy kinds of the seed scenario and the rule that allows each.
RULES = {
    "kms-key-policy": "artifact-key-policy",
    "ecr-pull": "image-pull",
    "sqs-send": "deploy-events-send",
    "sns-publish": "deployments-publish",
    "secret-read": "deploy-token-read",
    "events-put": "deployments-bus",
}


def create(local: LocalAws, account: str, key_arn: str) -> dict[str, str]:
    """Create the resources in ``account``; returns each kind's resource ARN."""
    ecr = local.client("ecr", account)
    repository = ecr.create_repository(repositoryName=REPOSITORY, tags=[TAG])["repository"]["repositoryArn"]
    sqs = local.client("sqs", account)
    url = sqs.create_queue(QueueName=QUEUE, tags={TAG["Key"]: TAG["Value"]})["QueueUrl"]
    queue = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topic = local.client("sns", account).create_topic(Name=TOPIC, Tags=[TAG])["TopicArn"]
    secret = local.client("secretsmanager", account).create_secret(
        Name=SECRET, SecretString="local-deploy-token", Tags=[TAG]
    )["ARN"]
    bus = local.client("events", account).create_event_bus(Name=BUS, Tags=[TAG])["EventBusArn"]
    return {
        "kms-key-policy": key_arn,
        "ecr-pull": str(repository),
        "sqs-send": str(queue),
        "sns-publish": str(topic),
        "secret-read": str(secret),
        "events-put": str(bus),
    }


def rules(caller: str, tooling: str, services: list[str]) -> list[dict[str, Any]]:
    """One rule per resource-policy kind: the deploy roles of ``services`` (or SNS / accounts there)."""
    deploy_roles = {"roles": ["arn:aws:iam::*:role/deploy"], "role_accounts": services}

    def rule(
        kind: str,
        description: str,
        targets: list[str],
        access: list[str],
        compaction: list[str] | None = None,
        **principals: Any,
    ) -> dict[str, Any]:
        return {
            "id": RULES[kind],
            "description": description,
            "callers": [caller],
            "kind": kind,
            "targets": targets,
            "principals": {**deploy_roles, **principals},
            "access": access,
            **({"compaction": compaction} if compaction else {}),
        }

    return [
        rule("kms-key-policy", "deploy roles decrypt artifacts", [f"arn:aws:kms:*:{tooling}:key/*"], ["decrypt"]),
        rule(
            "ecr-pull",
            "deploy roles, and Lambda for the service accounts' functions, pull service images",
            [f"arn:aws:ecr:*:{tooling}:repository/service-*"],
            ["pull"],
            services=[
                {
                    "service": "lambda.amazonaws.com",
                    "source_accounts": services,
                    "source_arns": ["arn:aws:lambda:*:*:function:*"],
                }
            ],
        ),
        rule(
            "sqs-send",
            "the service accounts' deployment topics deliver to the tooling queue",
            [f"arn:aws:sqs:*:{tooling}:deploy-*"],
            ["send"],
            services=[
                {"service": "sns.amazonaws.com", "source_accounts": services, "source_arns": ["arn:aws:sns:*:*:*"]}
            ],
            compaction=["merge-principals"],
        ),
        rule("sns-publish", "deploy roles publish deployments", [f"arn:aws:sns:*:{tooling}:deployments"], ["publish"]),
        rule(
            "secret-read",
            "deploy roles read the deploy token",
            [f"arn:aws:secretsmanager:*:{tooling}:secret:deploy/*"],
            ["read"],
        ),
        rule(
            "events-put",
            "service accounts put deployment events on the tooling bus",
            [f"arn:aws:events:*:{tooling}:event-bus/deployments"],
            ["put-events"],
            accounts=services,
        ),
        {
            **rule("events-put", "", [f"arn:aws:events:*:{tooling}:event-bus/deployments"], ["put-events"]),
            "id": "deployments-bus-organization",
            "description": "every account of the organization puts events on the tooling bus",
            "principals": {"organization": True},
        },
    ]


def grant(kind: str, resource: str, account: str, deploy_role: str) -> dict[str, Any]:
    """The seed scenario's grant of ``kind`` for a service account (its id and deploy role)."""
    grants: dict[str, dict[str, Any]] = {
        "kms-key-policy": {"key": resource, "principal": deploy_role, "access": "decrypt"},
        "ecr-pull": {"repository": resource, "principal": deploy_role, "access": "pull"},
        "sqs-send": {
            "queue": resource,
            "principal": "sns.amazonaws.com",
            "source_arn": f"arn:aws:sns:{LOCAL_REGION}:{account}:deployments",
            "access": "send",
        },
        "sns-publish": {"topic": resource, "principal": deploy_role, "access": "publish"},
        "secret-read": {"secret": resource, "principal": deploy_role, "access": "read"},
        "events-put": {"bus": resource, "principal": account, "access": "put-events"},
    }
    return {"kind": kind, **grants[kind]}


def policy_text(local: LocalAws, account: str, kind: str, resource: str) -> str | None:
    """The resource's policy as AWS returns it (None when it has none), read as its administrator."""
    name = resource.rsplit(":", 1)[-1]
    if kind == "kms-key-policy":
        return str(local.client("kms", account).get_key_policy(KeyId=resource, PolicyName="default")["Policy"])
    if kind == "ecr-pull":
        ecr = local.client("ecr", account)
        try:
            return str(ecr.get_repository_policy(repositoryName=name.split("/", 1)[1])["policyText"])
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "RepositoryPolicyNotFoundException":
                return None
            raise
    if kind == "sqs-send":
        sqs = local.client("sqs", account)
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]).get("Attributes", {}).get("Policy")
    if kind == "sns-publish":
        return local.client("sns", account).get_topic_attributes(TopicArn=resource)["Attributes"].get("Policy")
    if kind == "secret-read":
        return local.client("secretsmanager", account).get_resource_policy(SecretId=resource).get("ResourcePolicy")
    if kind == "events-put":
        return local.client("events", account).describe_event_bus(Name=name.split("/", 1)[1]).get("Policy")
    raise ValueError(f"{kind} is not a resource-policy kind of the seed scenario")


def put_policy(
    local: LocalAws,
    account: str,
    kind: str,
    resource: str,
    document: dict[str, Any],
    session: boto3.Session | None = None,
) -> None:
    """Write the resource's whole policy as its owner would by hand.

    Clients come from ``session`` when given (e.g. one with ``strict_aws`` installed),
    else from the harness's administrator of ``account``.
    """
    text = json.dumps(document)
    name = resource.rsplit(":", 1)[-1]

    def client(service: str) -> Any:
        if session is None:
            return local.client(service, account)
        return session.client(  # type: ignore[call-overload]
            service, endpoint_url=local.endpoint, region_name=LOCAL_REGION, config=LOCAL_CONFIG
        )

    if kind == "kms-key-policy":
        client("kms").put_key_policy(KeyId=resource, PolicyName="default", Policy=text)
    elif kind == "ecr-pull":
        client("ecr").set_repository_policy(repositoryName=name.split("/", 1)[1], policyText=text)
    elif kind == "sqs-send":
        sqs = client("sqs")
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": text})
    elif kind == "sns-publish":
        client("sns").set_topic_attributes(TopicArn=resource, AttributeName="Policy", AttributeValue=text)
    elif kind == "secret-read":
        client("secretsmanager").put_resource_policy(SecretId=resource, ResourcePolicy=text, BlockPublicPolicy=True)
    elif kind == "events-put":
        events = client("events")
        bus = name.split("/", 1)[1]
        if document.get("Statement"):  # statements by Sid; callers here only add or change statements
            events.put_permission(EventBusName=bus, Policy=text)
        elif events.describe_event_bus(Name=bus).get("Policy"):
            events.remove_permission(EventBusName=bus, RemoveAllPermissions=True)
    else:
        raise ValueError(f"{kind} is not a resource-policy kind of the seed scenario")


def policy(local: LocalAws, account: str, kind: str, resource: str) -> dict[str, Any] | None:
    text = policy_text(local, account, kind, resource)
    return dict(json.loads(text)) if text else None


def snapshot(local: LocalAws, account: str, resources: dict[str, str]) -> dict[str, Any]:
    """Every resource policy of these resources, for 'nothing changed' checks."""
    return {kind: policy(local, account, kind, arn) for kind, arn in sorted(resources.items())}
