"""Writing a function policy one permission at a time, each call pinned to a revision.

Lambda's ``AddPermission`` and ``RemovePermission`` take a ``RevisionId``: AWS refuses
the call (``PreconditionFailedException``) when the function's policy is no longer at
that revision. The broker plans on the policy it read (``GetPolicy`` returns its
``RevisionId``) and sends the planned calls one after another: the first pinned to
the revision it read, each later one to the revision read back right after the call
before it, and only once the policy read back is exactly what the plan expects at
that point. So a writer that lost its lease while it waited cannot undo a newer
request's change even if its lease check were wrong: its next call names a revision
that is gone and AWS refuses it (``StaleWriteError``).

A function with no policy at all has no revision to pin (``GetPolicy`` answers
``ResourceNotFoundException``): its first permission is guarded by the lease alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from deploy_helper.exceptions import StaleWriteError
from deploy_helper.execution.policydoc import empty_policy, load_policy

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.grants.base import ResourcePlan

#: One planned call: ("add" | "remove", StatementId, AddPermission arguments or None).
Write = tuple[str, str, "dict[str, Any] | None"]


class PolicyState(dict[str, Any]):
    """A function policy as read, with the ``RevisionId`` it was read at (None: no policy yet)."""

    def __init__(self, policy: dict[str, Any], revision_id: str | None) -> None:
        super().__init__(policy)
        self.revision_id = revision_id


def read_policy(client: Any, name: str, qualifier: str | None) -> PolicyState:
    """``GetPolicy``: the function's policy and its revision (an empty policy when it has none)."""
    kwargs: dict[str, Any] = {"FunctionName": name}
    if qualifier:
        kwargs["Qualifier"] = qualifier
    try:
        response = client.get_policy(**kwargs)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
        # Lambda answers ResourceNotFoundException both for "no policy yet" and for
        # "no such function"; only the function's own existence tells them apart.
        # GetFunctionConfiguration raises ResourceNotFoundException (with AWS's reason)
        # when the function or qualifier does not exist.
        client.get_function_configuration(**kwargs)
        return PolicyState(empty_policy(), None)
    return PolicyState(load_policy(response.get("Policy")), response.get("RevisionId"))


def write_pinned(
    client: Any,
    plan: ResourcePlan,
    name: str,
    qualifier: str | None,
    same: Callable[[dict[str, Any], dict[str, Any]], bool],
) -> None:
    """Send ``plan.writes`` in order, each pinned to the revision it was planned on.

    ``same(current, expected)`` says whether two statements of one Sid grant the same.
    """
    revision = getattr(plan.state, "revision_id", None)
    expected = {s.get("Sid"): s for s in plan.before.get("Statement", [])}
    final = {s.get("Sid"): s for s in plan.after.get("Statement", [])}
    for n, (op, sid, kwargs) in enumerate(plan.writes):
        _send(client, plan.resource, name, qualifier, op, sid, kwargs, revision)
        if op == "remove":
            expected.pop(sid, None)
        else:
            expected[sid] = final[sid]
        if n + 1 < len(plan.writes):
            current = read_policy(client, name, qualifier)
            found = {s.get("Sid"): s for s in current.get("Statement", [])}
            if found.keys() != expected.keys() or not all(same(found[k], expected[k]) for k in found):
                raise StaleWriteError(
                    f"the function policy of {plan.resource} changed while this request wrote it (another "
                    "writer); nothing more was sent — re-send the request"
                )
            revision = current.revision_id


def _send(
    client: Any,
    resource: str,
    name: str,
    qualifier: str | None,
    op: str,
    sid: str,
    kwargs: dict[str, Any] | None,
    revision: str | None,
) -> None:
    base: dict[str, Any] = {"FunctionName": name, "StatementId": sid}
    if qualifier:
        base["Qualifier"] = qualifier
    if revision:
        base["RevisionId"] = revision
    try:
        if op == "remove":
            client.remove_permission(**base)
        else:
            client.add_permission(**base, **(kwargs or {}))
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code == "PreconditionFailedException":
            raise StaleWriteError(
                f"the function policy of {resource} changed after this request read it, so Lambda refused "
                "the write (RevisionId precondition); the newer change stands — re-send the request"
            ) from exc
        if op == "remove" and code == "ResourceNotFoundException":
            return  # already gone
        if op == "add" and code == "ResourceConflictException":
            return  # a concurrent request added the same statement first: same Sid, same content
        raise
