"""The owner layer's decisions (pure): who may remove which ownership, and when a grant goes."""

from __future__ import annotations

from deploy_helper.execution.owners import LEGACY, Acting, OwnerBook, pipeline_owner, stack_owner
from deploy_helper.grants import LambdaInvokeGrant
from deploy_helper.grants.base import ItemPlan

SPEC = LambdaInvokeGrant.model_validate(
    {
        "kind": "lambda-invoke",
        "function": "arn:aws:lambda:us-east-1:222222222222:function:token-authorizer",
        "principal": "apigateway.amazonaws.com",
        "source_arn": "arn:aws:execute-api:us-east-1:333333333333:a1b2c3d4e5/authorizers/*",
        "source_account": "333333333333",
    }
)
GID = "DeployHelperabc"
STACK = stack_owner("arn:aws:cloudformation:us-east-1:333333333333:stack/s/1", "Grant", GID)
PIPE = pipeline_owner("ci-tooling", "service-a-deploy")


def test_owner_names_carry_their_authenticated_prefix() -> None:
    assert pipeline_owner("ci-tooling", None) == "pipeline:ci-tooling/default"
    assert f"stack:arn:aws:cloudformation:us-east-1:333333333333:stack/s/1/Grant/{GID}" == STACK


def test_apply_adds_the_owner_and_an_unowned_grant_in_force_keeps_its_old_owner() -> None:
    book = OwnerBook({}, Acting(PIPE))
    book.settle(ItemPlan(SPEC, "apply", "applied"), GID)
    assert book.result() == {GID: [PIPE]}

    legacy = OwnerBook({}, Acting(STACK))
    legacy.settle(ItemPlan(SPEC, "apply", "unchanged"), GID)
    assert legacy.result() == {GID: sorted([LEGACY, STACK])}

    failed = OwnerBook({}, Acting(PIPE))
    failed.settle(ItemPlan(SPEC, "apply", "failed", "too large"), GID)
    assert failed.result() is None


def test_revoke_keeps_the_grant_for_other_owners_and_passes_the_last_to_the_kind() -> None:
    book = OwnerBook({GID: [PIPE, STACK]}, Acting(STACK))
    kept = book.screen(SPEC, GID, "revoke")
    assert kept is not None and kept.outcome == "kept"
    assert book.result() == {GID: [PIPE]}

    last = OwnerBook({GID: [PIPE]}, Acting(PIPE))
    assert last.screen(SPEC, GID, "revoke") is None  # the kind revokes
    last.settle(ItemPlan(SPEC, "revoke", "revoked"), GID)
    assert last.result() == {}


def test_a_non_owner_is_denied_unless_it_takes_the_unrecorded_old_owners_share() -> None:
    other = pipeline_owner("ci-service-b", None)
    denied = OwnerBook({GID: [STACK]}, Acting(other)).screen(SPEC, GID, "revoke")
    assert denied is not None and denied.outcome == "denied"
    assert denied.reason.startswith("not an owner")

    book = OwnerBook({GID: [LEGACY, STACK]}, Acting(other))
    kept = book.screen(SPEC, GID, "revoke")
    assert kept is not None and kept.outcome == "kept"
    assert book.result() == {GID: [STACK]}


def test_an_unconfirmed_cleanup_delete_cannot_revoke_an_unowned_grant_or_take_the_old_share() -> None:
    acting = Acting(STACK, unrecorded_refused="CloudFormation does not show it")
    refused = OwnerBook({}, acting).screen(SPEC, GID, "revoke")
    assert refused is not None and refused.outcome == "denied"
    assert "CloudFormation does not show it" in refused.reason
    shared = OwnerBook({GID: [LEGACY, PIPE]}, acting).screen(SPEC, GID, "revoke")
    assert shared is not None and shared.outcome == "denied"


def test_without_a_reference_table_no_owners_are_kept() -> None:
    book = OwnerBook(None, Acting(PIPE))
    assert book.screen(SPEC, GID, "revoke") is None
    book.settle(ItemPlan(SPEC, "apply", "applied"), GID)
    assert book.result() is None and book.after(SPEC, GID) is None
