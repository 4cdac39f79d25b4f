"""Who owns a grant: the one kind-agnostic layer between the broker and the grant kinds.

A grant's identity depends only on its content, so two stacks (an API moving
between stacks) or a stack and a pipeline can declare the very same grant. Each
grant therefore records its *owners*, and revoking removes one owner: the
statement / permission / KMS grant goes only with its last owner.

Owners, each a string that no request can choose for another:

- a ``Custom::DeployHelperGrant`` resource: ``stack:<StackId>/<LogicalResourceId>/<PhysicalResourceId>``,
  taken from the event only after it was confirmed against the stack;
- a pipeline: ``pipeline:<caller>/<owner name>``, the caller from authentication
  and the name from the signed payload's ``owner`` (default: the context's
  ``pipeline``, else ``default``), so re-runs of one pipeline are one owner and
  one caller can never add or remove another caller's ownership.

Storage: in the reference table (``deploy_helper.execution.references``), on the item
that already exists per resource, as ``owners: {grant id: [owner, …]}``; the
references and the owners of a resource change in one version-conditional
write made under the resource's lease. Order (as for references): on apply
the owners are written before AWS is changed, on revoke after, so a crash
leaves at worst an owner without a grant (re-sending the request repairs it),
never a grant that nobody owns. Without a reference table the broker keeps
no owners and behaves as before (the first revoke removes the grant). One
item holds a resource's owners, so DynamoDB's 400 KB item limit bounds them
(some 2,000 owners of a stack's length per function, bucket or key).

Decisions (pure, in ``OwnerBook``), for an acting owner O:

- apply: the kind plans it as always; if the grant ends in force (``applied``
  or ``unchanged``), O is added to its owners;
- revoke by an owner, with other owners left: ``kept`` — O is removed, AWS is
  not touched; by the last owner: the kind revokes and the owners go with it;
- revoke by someone who is not an owner of a grant with recorded owners:
  ``denied`` (not an owner), nothing changes.

Migration: a grant applied before owners existed is in force with no owners
recorded. It is treated as having one unrecorded owner, ``LEGACY``. A revoke of
such a grant behaves as before (it revokes) — unless the acting owner may not
revoke unrecorded grants (``Acting.unrecorded_refused``: a custom-resource
Delete in an update's clean-up that CloudFormation does not confirm), which is
``denied``. Applying it by O records ``{LEGACY, O}``; a later revoke by someone
who is not an owner takes the legacy share (old behaviour for the unknown old
owner) and the grant stays while O owns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deploy_helper.grants.base import ItemPlan

if TYPE_CHECKING:
    from deploy_helper.grants.base import GrantSpec, Operation

#: ``{grant id: [owner, …]}`` for the grants of one resource.
Owners = dict[str, list[str]]
#: The unrecorded owner of a grant applied before owners were kept.
LEGACY = "legacy:unrecorded"
#: The owner name of a pipeline request that names neither ``owner`` nor a context pipeline.
DEFAULT_OWNER_NAME = "default"


def stack_owner(stack_id: str, logical_resource_id: str, physical_resource_id: str) -> str:
    """The owner of a custom resource's grant (from a confirmed event only)."""
    return f"stack:{stack_id}/{logical_resource_id}/{physical_resource_id}"


def pipeline_owner(caller: str, name: str | None) -> str:
    """The owner of a pipeline's grant: the authenticated caller and the request's owner name."""
    return f"pipeline:{caller}/{name or DEFAULT_OWNER_NAME}"


@dataclass(frozen=True)
class Acting:
    """The owner a request acts for."""

    owner: str
    #: None: may revoke a grant whose owners were never recorded (as before owners existed);
    #: otherwise why it may not (a clean-up Delete that CloudFormation does not confirm).
    unrecorded_refused: str | None = None


@dataclass(frozen=True)
class OwnerChange:
    """The owners of one grant before and after a request's change."""

    before: tuple[str, ...]
    after: tuple[str, ...]


def _described(owners: list[str] | tuple[str, ...], limit: int = 3) -> str:
    shown = ", ".join(owners[:limit])
    more = f" and {len(owners) - limit} more" if len(owners) > limit else ""
    return f"{shown}{more}"


@dataclass
class OwnerBook:
    """The owners of one resource's grants and what a request does to them (pure).

    ``screen`` settles a revoke that must not reach the grant kind (``kept``,
    ``denied``); ``settle`` records what the kind's outcome means for the owners.
    ``owners`` is None when the broker keeps no owners (no reference table).
    """

    owners: Owners | None
    acting: Acting
    changes: dict[int, OwnerChange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.owners is not None:
            self.owners = {gid: list(members) for gid, members in self.owners.items() if members}
        self._dirty = False

    @property
    def kept(self) -> bool:
        """Whether owners are kept at all."""
        return self.owners is not None

    def of(self, grant_id: str) -> list[str] | None:
        """The recorded owners of a grant, or None when none are recorded."""
        return None if self.owners is None else self.owners.get(grant_id)

    def screen(self, spec: GrantSpec, grant_id: str, operation: Operation) -> ItemPlan | None:
        """The plan of a revoke settled here, or None to let the kind plan it."""
        if operation != "revoke":
            return None
        owner, refused = self.acting.owner, self.acting.unrecorded_refused
        recorded = self.of(grant_id)
        if recorded is None:
            if refused is not None:
                return ItemPlan(spec, operation, "denied", f"no owner of this grant is recorded and {refused}")
            return None
        if owner in recorded:
            rest = [o for o in recorded if o != owner]
        elif LEGACY in recorded and refused is None:
            rest = [o for o in recorded if o != LEGACY]  # the unrecorded old owner's share
        else:
            return ItemPlan(
                spec,
                operation,
                "denied",
                f"not an owner: the grant is owned by {_described(recorded)}, not by {owner}; nothing was changed",
            )
        if not rest:
            return None  # the last owner: the kind revokes
        self._set(spec, grant_id, rest)
        return ItemPlan(
            spec,
            operation,
            "kept",
            f"owner {owner if owner in recorded else LEGACY} removed; still owned by {len(rest)} other "
            f"owner{'s' if len(rest) > 1 else ''} ({_described(rest)})",
        )

    def settle(self, plan: ItemPlan, grant_id: str) -> None:
        """Record the owners implied by the kind's outcome for ``plan`` (adds to its reason)."""
        if self.owners is None:
            return
        recorded = self.of(grant_id)
        if plan.operation == "apply" and plan.outcome in ("applied", "unchanged"):
            base = recorded if recorded is not None else ([LEGACY] if plan.outcome == "unchanged" else [])
            if self.acting.owner not in base:
                after = [*base, self.acting.owner]
                self._set(plan.spec, grant_id, after)
                counted = f"{len(after)} owner{'s' if len(after) > 1 else ''}"
                plan.reason = _joined(plan.reason, f"owner {self.acting.owner} added ({counted})")
        elif plan.operation == "revoke" and plan.outcome in ("revoked", "absent") and recorded is not None:
            self._set(plan.spec, grant_id, [])
            plan.reason = _joined(plan.reason, f"last owner {self.acting.owner} removed")

    def after(self, spec: GrantSpec, grant_id: str) -> list[str] | None:
        """The owners of the grant after the request (None when owners are not kept)."""
        if self.owners is None:
            return None
        return list(self.owners.get(grant_id, []))

    def before(self, spec: GrantSpec, grant_id: str) -> list[str] | None:
        """The owners of the grant before the request (for a change that failed)."""
        change = self.changes.get(id(spec))
        return list(change.before) if change is not None else self.after(spec, grant_id)

    def changed(self, spec: GrantSpec) -> bool:
        return id(spec) in self.changes

    def result(self) -> Owners | None:
        """The resource's owners to write, or None when they do not change."""
        if self.owners is None or not self._dirty:
            return None
        return {gid: sorted(members) for gid, members in self.owners.items() if members}

    def _set(self, spec: GrantSpec, grant_id: str, after: list[str]) -> None:
        assert self.owners is not None
        before = tuple(self.owners.get(grant_id, []))
        if after:
            self.owners[grant_id] = list(after)
        else:
            self.owners.pop(grant_id, None)
        first = self.changes.get(id(spec))
        self.changes[id(spec)] = OwnerChange(first.before if first else before, tuple(after))
        self._dirty = True


def _joined(reason: str, more: str) -> str:
    return f"{reason}; {more}" if reason else more
