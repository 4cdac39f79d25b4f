"""Writing a function policy: the first call pinned to the revision read, the rest in parallel.

Lambda's ``AddPermission`` and ``RemovePermission`` take a ``RevisionId``: AWS refuses
the call (``PreconditionFailedException``) when the function's policy is no longer at
that revision. The broker plans on the policy it read (``GetPolicy`` returns its
``RevisionId``) and pins the plan's first call to it: a request whose read is stale --
another request changed the policy since, or took over a lease this one lost -- cannot
change the policy at all (``StaleWriteError``). Once that call is made, the policy is at
a revision this request made, under its lease; the plan's other calls (each atomic in
Lambda, one permission each) go out together, every attempt checked against the lease
first (``deploy_helper.execution.fencing``). Reading the revision back after every call
would double the calls and make a plan of n permissions 2n-1 round trips long.

A function with no policy at all has no revision to pin (``GetPolicy`` answers
``ResourceNotFoundException``): its first permission is guarded by the lease alone.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from deploy_helper.exceptions import StaleWriteError
from deploy_helper.execution.policydoc import empty_policy, load_policy

if TYPE_CHECKING:
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


def write_pinned(client: Any, plan: ResourcePlan, name: str, qualifier: str | None) -> None:
    """Send ``plan.writes``: the first pinned to the revision planned on, then the rest at once."""
    from deploy_helper.grants.base import in_parallel

    if not plan.writes:
        return
    revision = getattr(plan.state, "revision_id", None)
    (op, sid, kwargs), rest = plan.writes[0], plan.writes[1:]
    _send(client, plan.resource, name, qualifier, op, sid, kwargs, revision)
    in_parallel(
        [
            functools.partial(_send, client, plan.resource, name, qualifier, op, sid, kwargs, None)
            for op, sid, kwargs in rest
        ]
    )


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
