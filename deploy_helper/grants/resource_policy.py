"""The shared shape of every kind that keeps one managed statement in a JSON resource policy.

ECR repository policies, SQS queue and SNS topic policies, Secrets Manager resource
policies, EventBridge bus policies and KMS key policies are all one document per
resource that the broker must read, change and write back as a whole. A kind built
on :class:`ResourcePolicyKind` says only what is its own: the statement a grant
stands for (``statement``), how to get, put and remove the document
(``get_policy_text``/``put_policy_text``/``delete_policy``), and its size limit.
This module does the rest the same way for all of them:

- a grant's statement carries a managed ``Sid`` (``DeployHelper`` + digest); every
  other statement is written back exactly as AWS returned it;
- apply/re-apply/revoke/revoke-again report ``applied``/``unchanged``/``revoked``/
  ``absent``; a managed statement changed by hand is rewritten to the designed one;
- the size limit (and, where AWS has one, the statement-count limit) is checked on
  the whole document as AWS counts it (compact JSON) before anything is sent;
- ``merge-principals`` compaction: grants whose statements differ only in their AWS
  principal may share one statement listing each grant's principal, when the rule
  allows it and only if exact statements would not fit (never wider than the grants).

Writes rewrite a whole document, so ``serialize_writes`` makes the broker hold the
resource's lock around read → plan → write.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.exceptions import PolicySizeError
from deploy_helper.execution.policydoc import (
    compact_size,
    empty_policy,
    find_statement,
    load_policy,
    normalize_principal,
)
from deploy_helper.grants.base import (
    MERGE_PRINCIPALS,
    Allowed,
    GrantKind,
    ItemPlan,
    Operation,
    ResourcePlan,
    SpecT,
    managed_id,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Sid prefix of a statement shared by several grants (``merge-principals``).
SHARED_PREFIX = f"{PRODUCT_PREFIX}Shared"
_EMPTY: dict[str, Any] = {"Version": "2012-10-17", "Statement": []}


def aws_principal(principal: str) -> str:
    """An account id as the ``:root`` ARN AWS stores; a role ARN as it is."""
    return f"arn:aws:iam::{principal}:root" if principal.isdigit() else principal


def principal_block(principal: str) -> dict[str, str] | str:
    """The ``Principal`` of a statement for a grant's principal (service, account, role or ``*``)."""
    if principal == "*":
        return "*"
    if principal.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return {"Service": principal}
    return {"AWS": aws_principal(principal)}


def source_condition(source_arn: str | None, source_account: str | None) -> dict[str, dict[str, str]]:
    """The condition binding a service principal to its source (the confused-deputy guard)."""
    condition: dict[str, dict[str, str]] = {}
    if source_arn:
        condition["ArnLike"] = {"aws:SourceArn": source_arn}
    if source_account:
        condition["StringEquals"] = {"aws:SourceAccount": source_account}
    return condition


def _values(value: Any) -> frozenset[str]:
    items = value if isinstance(value, list) else [value]
    return frozenset(str(v) for v in items if v is not None)


def meaning(statement: dict[str, Any]) -> tuple[Any, ...]:
    """A statement in a form that compares equal however AWS re-serialised it.

    Lists and single strings, list order, account principals as ids or ``:root`` ARNs
    and the case of condition keys (case-insensitive in AWS) do not change a statement.
    """
    condition = statement.get("Condition") or {}
    conditions = frozenset(
        (str(op), str(key).lower(), _values(value))
        for op, block in (condition.items() if isinstance(condition, dict) else [])
        for key, value in (block.items() if isinstance(block, dict) else [])
    )
    known = ("Sid", "Effect", "Principal", "Action", "Resource", "Condition")
    others = json.dumps({k: v for k, v in statement.items() if k not in known}, sort_keys=True)
    return (
        statement.get("Effect"),
        normalize_principal(statement.get("Principal")),
        _values(statement.get("Action")),
        _values(statement.get("Resource")),
        conditions,
        others,  # NotPrincipal, NotAction, NotResource ...: a managed statement never has them
    )


class ResourcePolicyKind(GrantKind[SpecT]):
    """A kind whose grant is one managed statement in a resource's JSON policy document."""

    serialize_writes: ClassVar[bool] = True
    compactions: ClassVar[tuple[str, ...]] = (MERGE_PRINCIPALS,)
    #: The document's name in messages, e.g. "repository policy".
    policy_name: ClassVar[str]
    #: Who sets the limit, in messages, e.g. "ECR".
    limit_owner: ClassVar[str]
    #: AWS's limit on the number of statements, where it has one.
    statement_limit: ClassVar[int | None] = None

    # -- what each kind says for itself ------------------------------------
    @abstractmethod
    def statement(self, spec: SpecT) -> dict[str, Any]:
        """The grant's statement exactly as the broker writes it (``Sid`` = ``grant_id``)."""

    @abstractmethod
    def get_policy_text(self, client: Any, resource: str) -> str | None:
        """The resource's policy as AWS returns it, or None when it has none."""

    @abstractmethod
    def put_policy_text(self, client: Any, resource: str, text: str) -> None:
        """Replace the resource's policy with ``text`` (compact JSON)."""

    @abstractmethod
    def delete_policy(self, client: Any, resource: str) -> None:
        """Remove the resource's policy (the last statement went)."""

    def resource_label(self, resource: str) -> str:
        """The resource as people name it, in messages."""
        return resource.rsplit(":", 1)[-1]

    # -- the interface ------------------------------------------------------
    def read(self, client: Any, resource: str) -> dict[str, Any] | None:
        text = self.get_policy_text(client, resource)
        return load_policy(text) if text else None

    def write(self, client: Any, plan: ResourcePlan) -> None:
        for document in plan.writes:
            if document is None:
                self.delete_policy(client, plan.resource)
            else:
                self.put_policy_text(client, plan.resource, json.dumps(document, separators=(",", ":")))

    def present(self, state: dict[str, Any] | None, spec: SpecT) -> bool:
        """In force as its own statement or as a principal of its shared statement."""
        return state is not None and self._where(state, spec) is not None

    def plan(
        self,
        state: dict[str, Any] | None,
        resource: str,
        items: Sequence[tuple[SpecT, Operation]],
        allowed: Sequence[Allowed] | None = None,
    ) -> ResourcePlan:
        """Apply or revoke ``items``; merge principals only if exact statements would not fit.

        Applying: a grant already in force (its own statement, or its principal in the
        shared statement of its shape) is ``unchanged``. A grant whose rule allows
        ``merge-principals`` joins an existing shared statement of its shape. The rest get
        their own statements if the whole policy then fits; if it does not, grants whose
        rule allows merging go into the shared statement of their shape (also those of the
        request that have their own statement now), and each other grant gets its own
        statement while it fits and is refused, naming the limit and the remedy, when it
        does not. Revoking removes the grant's own statement, or its principal from the
        shared statement (the statement goes with its last principal).
        """
        allowances = list(allowed) if allowed is not None else [None] * len(items)
        before = json.loads(json.dumps(state)) if state is not None else None
        after: dict[str, Any] = json.loads(json.dumps(state)) if state is not None else empty_policy()
        plans: list[ItemPlan | None] = [None] * len(items)
        merged: dict[int, str] = {}
        changed = False

        def may_merge(i: int) -> bool:
            a = allowances[i]
            return a is not None and MERGE_PRINCIPALS in a.compaction and self._mergeable(items[i][0])

        pending: list[int] = []
        convertible: list[int] = []
        for i, (spec, operation) in enumerate(items):
            where = self._where(after, spec)
            if operation == "apply":
                if where is None:
                    pending.append(i)
                    continue
                plans[i] = ItemPlan(spec, operation, "unchanged", "statement already present")
                if where == "shared":
                    merged[i] = self.shared_sid(spec)
                elif may_merge(i):
                    convertible.append(i)
            elif where is None:
                plans[i] = ItemPlan(spec, operation, "absent", "statement not present")
            else:
                if where == "exact":
                    after = self._with_statements(after, [], drop=self.grant_id(spec))
                else:
                    after = self._leave_shared(after, spec)
                    merged[i] = self.shared_sid(spec)
                plans[i] = ItemPlan(spec, "revoke", "revoked")
                changed = True

        rest: list[int] = []
        for i in pending:
            spec = items[i][0]
            if may_merge(i) and find_statement(after, self.shared_sid(spec)) is not None:
                candidate = self._join_shared(after, spec)
                if self._overflow(candidate) is None:
                    after = candidate
                    merged[i] = self.shared_sid(spec)
                    plans[i] = ItemPlan(spec, "apply", "applied")
                    changed = True
                    continue
            rest.append(i)
        exact = self._with_statements(after, [items[i][0] for i in rest])
        if self._overflow(exact) is None:
            after = exact
            for i in rest:
                plans[i] = ItemPlan(items[i][0], "apply", "applied")
            changed = changed or bool(rest)
        else:
            for i in convertible:
                spec = items[i][0]
                candidate = self._join_shared(self._with_statements(after, [], drop=self.grant_id(spec)), spec)
                if compact_size(candidate) <= compact_size(after):
                    after = candidate
                    merged[i] = self.shared_sid(spec)
                    plans[i] = ItemPlan(spec, "apply", "applied", "moved from its own statement into a shared one")
                    changed = True
            for i in rest:
                spec = items[i][0]
                candidate = self._join_shared(after, spec) if may_merge(i) else self._with_statements(after, [spec])
                overflow = self._overflow(candidate)
                if overflow is not None:
                    plans[i] = ItemPlan(spec, "apply", "failed", self._too_large(resource, overflow, allowances[i]))
                    continue
                after = candidate
                if may_merge(i):
                    merged[i] = self.shared_sid(spec)
                plans[i] = ItemPlan(spec, "apply", "applied")
                changed = True
        for i, sid in merged.items():
            plan = plans[i]
            assert plan is not None
            shared = find_statement(after, sid)
            members = len(normalize_principal(shared.get("Principal"))) if shared is not None else 0
            if plan.outcome in ("applied", "unchanged"):
                plan.compaction = f"merged into {sid} with {members} principals"
            elif plan.outcome == "revoked":
                plan.compaction = f"removed from {sid}, {members} principals remain"
        final: dict[str, Any] | None = after if after["Statement"] else None
        done = [p for p in plans if p is not None]
        assert len(done) == len(items)
        return ResourcePlan(resource, before, final if changed else before, done, [final] if changed else [], state)

    # -- drift (pure; see deploy_helper.audit.drift) -----------------------------
    def accounts_for(self, state: Any, spec: SpecT, references: dict[str, list[str]] | None = None) -> set[str]:
        """The grant's own statement, and its shared statement if its principal is in it."""
        explained = {self.grant_id(spec)}
        if self._mergeable(spec):
            # whatever its shape: a shared statement changed by hand still stands for its grants (altered)
            shared = find_statement(state or _EMPTY, self.shared_sid(spec))
            if shared is not None and aws_principal(self._member(spec)) in normalize_principal(shared.get("Principal")):
                explained.add(self.shared_sid(spec))
        return explained

    def excess(
        self, state: Any, specs: Sequence[SpecT], references: dict[str, list[str]] | None = None
    ) -> dict[str, str]:
        """A shared statement with other actions/resources/condition, or principals no member grant explains."""
        doc = state or _EMPTY
        by_sid: dict[str, list[SpecT]] = {}
        for spec in specs:
            if self._mergeable(spec):
                by_sid.setdefault(self.shared_sid(spec), []).append(spec)
        out: dict[str, str] = {}
        for sid, members in by_sid.items():
            shared = find_statement(doc, sid)
            if shared is None:
                continue
            listed = set(normalize_principal(shared.get("Principal")))
            own = {aws_principal(self._member(s)) for s in members}
            if not listed & own:
                continue
            if not all(self._same_shape(shared, s) for s in members):
                out[sid] = "the shared statement's actions, resources or condition differ from its grants'"
                continue
            extra = sorted(listed - own)
            if extra:
                out[sid] = f"the shared statement also grants to {', '.join(extra)}, which no active grant explains"
        return out

    def plan_removal(self, state: Any, resource: str, ids: Sequence[str]) -> ResourcePlan:
        """Remove the managed statements ``ids`` (unknown-managed); every other statement stays as it is."""
        gone = set(ids)
        current = state or {"Version": "2012-10-17", "Statement": []}
        kept = [s for s in current.get("Statement", []) if s.get("Sid") not in gone]
        after = {**current, "Statement": kept} if kept else None
        changed = len(kept) != len(current.get("Statement", []))
        return ResourcePlan(resource, state, after if changed else state, [], [after] if changed else [], state)

    # -- helpers (pure) -------------------------------------------------------
    def shared_sid(self, spec: SpecT) -> str:
        """The Sid of the statement shared by the grants whose statements differ only in principal."""
        shape = {k: v for k, v in self.statement(spec).items() if k not in ("Sid", "Principal")}
        return managed_id({"resource": self.resource(spec), "shape": shape}).replace(PRODUCT_PREFIX, SHARED_PREFIX, 1)

    def _mergeable(self, spec: SpecT) -> bool:
        principal = self.statement(spec).get("Principal")
        return isinstance(principal, dict) and list(principal) == ["AWS"] and isinstance(principal["AWS"], str)

    def _member(self, spec: SpecT) -> str:
        return str(self.statement(spec)["Principal"]["AWS"])

    def shared_statement(self, spec: SpecT, members: Sequence[str]) -> dict[str, Any]:
        """The shared statement: the grant's own statement, with each member's principal."""
        return self._shared_statement(spec, members)

    def _shared_statement(self, spec: SpecT, members: Sequence[str]) -> dict[str, Any]:
        values = sorted(set(members))
        return {
            **self.statement(spec),
            "Sid": self.shared_sid(spec),
            "Principal": {"AWS": values[0] if len(values) == 1 else values},
        }

    def _where(self, doc: dict[str, Any], spec: SpecT) -> Literal["exact", "shared"] | None:
        desired = self.statement(spec)
        current = find_statement(doc, self.grant_id(spec))
        if current is not None and meaning(current) == meaning(desired):
            return "exact"
        if not self._mergeable(spec):
            return None
        shared = find_statement(doc, self.shared_sid(spec))
        member = aws_principal(self._member(spec))
        if (
            shared is not None
            and self._same_shape(shared, spec)
            and member in normalize_principal(shared.get("Principal"))
        ):
            return "shared"
        return None

    def _same_shape(self, current: dict[str, Any], spec: SpecT) -> bool:
        """Equal to the grant's statement in everything but the principal."""
        return meaning({**current, "Principal": None}) == meaning({**self.statement(spec), "Principal": None})

    def _members(self, doc: dict[str, Any], spec: SpecT) -> set[str]:
        shared = find_statement(doc, self.shared_sid(spec))
        if shared is None or not self._same_shape(shared, spec):
            return set()
        return set(normalize_principal(shared.get("Principal")))

    def _join_shared(self, doc: dict[str, Any], spec: SpecT) -> dict[str, Any]:
        sid = self.shared_sid(spec)
        statement = self._shared_statement(spec, [*self._members(doc, spec), aws_principal(self._member(spec))])
        if find_statement(doc, sid) is None:
            return {**doc, "Statement": [*doc["Statement"], statement]}
        return {**doc, "Statement": [statement if s.get("Sid") == sid else s for s in doc["Statement"]]}

    def _leave_shared(self, doc: dict[str, Any], spec: SpecT) -> dict[str, Any]:
        sid = self.shared_sid(spec)
        members = self._members(doc, spec) - {aws_principal(self._member(spec))}
        replacement = [self._shared_statement(spec, sorted(members))] if members else []
        out: list[dict[str, Any]] = []
        for s in doc["Statement"]:
            out.extend(replacement if s.get("Sid") == sid else [s])
        return {**doc, "Statement": out}

    def _with_statements(self, doc: dict[str, Any], specs: Sequence[SpecT], drop: str | None = None) -> dict[str, Any]:
        sids = {self.grant_id(spec) for spec in specs} | ({drop} if drop else set())
        kept = [s for s in doc["Statement"] if s.get("Sid") not in sids]
        return {**doc, "Statement": kept + [self.statement(spec) for spec in specs]}

    def _overflow(self, doc: dict[str, Any]) -> str | None:
        """Why ``doc`` is over AWS's limits, or None when it fits."""
        size = compact_size(doc)
        if self.size_limit is not None and size > self.size_limit:
            return f"would grow to {size} bytes, over {self.limit_owner}'s {self.size_limit}-byte limit"
        count = len(doc["Statement"])
        if self.statement_limit is not None and count > self.statement_limit:
            return f"would hold {count} statements, over {self.limit_owner}'s limit of {self.statement_limit}"
        return None

    def _too_large(self, resource: str, overflow: str, allowed: Allowed | None) -> str:
        rule = f"rule {allowed.rule_id}" if allowed is not None else "the rule that allows the grant"
        can_merge = allowed is not None and MERGE_PRINCIPALS in allowed.compaction
        remedy = (
            "grant to fewer, broader principals (an account instead of each role) or remove unused statements"
            if can_merge or MERGE_PRINCIPALS not in self.compactions
            else f"allow compaction: [{MERGE_PRINCIPALS}] in {rule}, or grant to fewer, broader principals "
            "(an account instead of each role), or remove unused statements"
        )
        return PolicySizeError(
            f"the {self.policy_name} of {self.resource_label(resource)} {overflow} for a {self.policy_name}; {remedy}"
        ).message


def is_service_principal(principal: str) -> bool:
    return principal.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def check_binding(principal: str, source_arn: str | None, source_account: str | None) -> None:
    """A service principal must be bound to its source; other principals take no source.

    Unbound, a service principal lets that service act for any account's resources
    (the confused-deputy problem).
    """
    if is_service_principal(principal):
        if not (source_arn or source_account):
            raise ValueError(
                f"service principal {principal} must be bound to a source_arn or source_account "
                "(otherwise any account's resources could use it: the confused-deputy problem)"
            )
    elif source_arn or source_account:
        raise ValueError("source_arn/source_account apply only to service principals")
