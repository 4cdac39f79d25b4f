"""A plan says what would really happen: missing resources and unreachable accounts fail, with AWS's reason.

Every grant below is allowed by the rules; only AWS's answer makes it fail. The
plan goes through the real handler on the broker's execution-role session with
strict_aws (which enforces the target role's trust policy, as STS does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from deploy_helper import handler
from deploy_helper.local import scenario as seed

if TYPE_CHECKING:
    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario


def plan(scenario: Scenario, broker: Broker, grants: list[dict[str, Any]]) -> list[tuple[str, str]]:
    handler.set_broker(broker)
    try:
        response = scenario.client(broker).request(grants, dry_run=True)
    finally:
        handler.set_broker(None)
    assert response.ok, response
    return [(r.decision, r.reason) for r in response.results]


def grant_on_missing(scenario: Scenario, what: str) -> dict[str, Any]:
    if what == "function":  # the authorizer's name, in a region where it does not exist
        return {
            **scenario.authorizer_grant("service-a"),
            "function": scenario.authorizer_arn.replace("us-east-1", "eu-west-1"),
        }
    if what == "bucket":
        return {**scenario.bucket_grant("service-a"), "bucket": "dh-artifacts-gone"}
    raise AssertionError(what)


@pytest.mark.parametrize(
    ("what", "code"),
    # A missing KMS key is left out: moto answers ListGrants on it with HTTP 500 (AWS: NotFoundException),
    # which the broker also reports as failed, but only after retrying a server error 8 times.
    [("function", "ResourceNotFoundException"), ("bucket", "NoSuchBucket")],
)
def test_a_plan_for_a_missing_resource_fails_with_aws_reason(
    scenario: Scenario, strict_broker: Broker, what: str, code: str
) -> None:
    ((decision, reason),) = plan(scenario, strict_broker, [grant_on_missing(scenario, what)])
    assert decision == "would-fail"
    assert reason.startswith(f"AWS refused the change: {code}: ")


def test_a_function_without_a_policy_yet_is_planned_as_would_apply(scenario: Scenario, strict_broker: Broker) -> None:
    """The control: an existing function with no policy at all is not mistaken for a missing one."""
    lam = scenario.local.client("lambda", seed.ACCOUNTS["token-service"])
    lam.remove_permission(FunctionName="token-authorizer", StatementId=seed.FOREIGN_SID)
    assert scenario.function_policy() is None
    assert plan(scenario, strict_broker, [scenario.authorizer_grant("service-a")])[0][0] == "would-apply"


def test_a_plan_in_an_account_whose_role_cannot_be_assumed_fails(scenario: Scenario, strict_broker: Broker) -> None:
    iam = scenario.local.client("iam", seed.ACCOUNTS["tooling"])
    iam.delete_role(RoleName="deploy-helper-broker")
    ((decision, reason),) = plan(scenario, strict_broker, [scenario.bucket_grant("service-a")])
    assert decision == "would-fail"
    assert "111111111111" in reason
    assert "bootstrap" in reason  # says what the operator must do
