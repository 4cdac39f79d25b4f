"""``lambda-invoke``: a statement in a Lambda function's resource policy.

Typical use: a cross-account API Gateway authorizer. The token-service
account owns the function; each service account's API needs permission to
invoke it, bound to that API with ``SourceArn``/``SourceAccount``.

Made with ``AddPermission``/``RemovePermission`` — each call changes one
statement atomically on the service side, so concurrent writers cannot lose
each other's statements; a racing duplicate surfaces as
``ResourceConflictException`` and is resolved by reading again. Each call also
carries the policy's ``RevisionId`` (``deploy_helper.grants.lambda_write``), so a
writer that fell behind a newer change fails instead of undoing it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import model_validator

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.exceptions import PolicySizeError
from deploy_helper.execution.policydoc import compact_size, find_statement, normalize_principal
from deploy_helper.grants.base import (
    WIDEN_SOURCE_ARN,
    Allowed,
    GrantKind,
    GrantSpec,
    ItemPlan,
    Operation,
    ResourcePlan,
    SourceScope,
    managed_id,
)
from deploy_helper.grants.lambda_write import PolicyState, read_policy, write_pinned
from deploy_helper.trust.identifiers import (
    ACCOUNT_RE,
    LAMBDA_ARN_RE,
    AccountId,
    LambdaFunctionArn,
    OrgId,
    RoleArn,
    ServicePrincipal,
    SourceArn,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from deploy_helper.execution.references import References

INVOKE_ACTION = "lambda:InvokeFunction"
LAMBDA_POLICY_LIMIT = 20 * 1024
#: StatementId prefix of a permission shared by several grants (``widen-source-arn``).
SHARED_PREFIX = f"{PRODUCT_PREFIX}Shared"
#: Whether the bootstrap role (account_bootstrap/broker-role.yaml) lets the broker add a
#: permission for principal '*' with PrincipalOrgID (an organization-wide grant). It does
#: not: AddPermission's lambda:Principal cannot tell that from a public '*', so the role
#: denies both. Remedies suggest only what the role can do; tests/unit/test_evaluator.py
#: keeps this in step with the template.
ORGANIZATION_GRANTS_BOOTSTRAPPED = False


class LambdaInvokeGrant(GrantSpec):
    """Permission for ``principal`` to invoke ``function``.

    Example::

        kind: lambda-invoke
        function: arn:aws:lambda:us-east-1:222222222222:function:token-authorizer
        principal: apigateway.amazonaws.com
        source_arn: arn:aws:execute-api:us-east-1:333333333333:a1b2c3d4e5/authorizers/*
        source_account: "333333333333"
    """

    kind: Literal["lambda-invoke"]
    function: LambdaFunctionArn
    principal: ServicePrincipal | AccountId | RoleArn | Literal["*"]
    source_arn: SourceArn | None = None
    source_account: AccountId | None = None
    principal_org_id: OrgId | None = None

    @model_validator(mode="after")
    def _bound(self) -> LambdaInvokeGrant:
        if self.principal.endswith(".amazonaws.com") or self.principal.endswith(".amazonaws.com.cn"):
            if not (self.source_arn or self.source_account):
                raise ValueError(
                    "a service principal must be bound to a source_arn or source_account "
                    "(otherwise any account's resources could use it: the confused-deputy problem)"
                )
        elif self.source_arn or self.source_account:
            raise ValueError("source_arn/source_account apply only to service principals")
        if self.principal == "*" and not self.principal_org_id:
            raise ValueError("principal '*' requires principal_org_id (your organization's id)")
        return self


class LambdaInvoke(GrantKind[LambdaInvokeGrant]):
    """Invoke permission on a Lambda function (``AddPermission``/``RemovePermission``)."""

    kind: ClassVar[str] = "lambda-invoke"
    spec: ClassVar[type[GrantSpec]] = LambdaInvokeGrant
    service: ClassVar[str] = "lambda"
    permissions: ClassVar[tuple[str, ...]] = (
        "lambda:GetPolicy",
        "lambda:GetFunctionConfiguration",
        "lambda:AddPermission",
        "lambda:RemovePermission",
    )
    size_limit: ClassVar[int | None] = LAMBDA_POLICY_LIMIT
    compactions: ClassVar[tuple[str, ...]] = (WIDEN_SOURCE_ARN,)
    #: Leased per function: a shared permission and its references change together.
    serialize_writes: ClassVar[bool] = True
    uses_references: ClassVar[bool] = True
    principal_forms: ClassVar[frozenset[str]] = frozenset({"roles", "accounts", "services", "organization"})
    variants: ClassVar[dict[str, Any]] = {
        "source_account": "444444444444",
        "source_arn": "arn:aws:execute-api:us-east-1:444444444444:a1b2c3d4e5/authorizers/*",
    }
    example: ClassVar[dict[str, Any]] = {
        "kind": "lambda-invoke",
        "function": "arn:aws:lambda:us-east-1:222222222222:function:token-authorizer",
        "principal": "apigateway.amazonaws.com",
        "source_arn": "arn:aws:execute-api:us-east-1:333333333333:a1b2c3d4e5/authorizers/*",
        "source_account": "333333333333",
    }

    def target_account(self, spec: LambdaInvokeGrant) -> str:
        return _arn(spec.function).group("account")

    def region(self, spec: LambdaInvokeGrant) -> str | None:
        return _arn(spec.function).group("region")

    def resource(self, spec: LambdaInvokeGrant) -> str:
        return spec.function

    def principal(self, spec: LambdaInvokeGrant) -> str:
        return spec.principal

    # -- the statement as AWS stores it ----------------------------------
    def statement(self, spec: LambdaInvokeGrant) -> dict[str, Any]:
        principal: Any
        if spec.principal == "*":
            principal = "*"
        elif spec.principal.endswith((".amazonaws.com", ".amazonaws.com.cn")):
            principal = {"Service": spec.principal}
        elif spec.principal.isdigit():
            principal = {"AWS": f"arn:aws:iam::{spec.principal}:root"}
        else:
            principal = {"AWS": spec.principal}
        statement: dict[str, Any] = {
            "Sid": self.grant_id(spec),
            "Effect": "Allow",
            "Principal": principal,
            "Action": INVOKE_ACTION,
            "Resource": spec.function,
        }
        condition: dict[str, dict[str, str]] = {}
        if spec.source_arn:
            condition.setdefault("ArnLike", {})["AWS:SourceArn"] = spec.source_arn
        if spec.source_account:
            condition.setdefault("StringEquals", {})["AWS:SourceAccount"] = spec.source_account
        if spec.principal_org_id:
            condition.setdefault("StringEquals", {})["aws:PrincipalOrgID"] = spec.principal_org_id
        if condition:
            statement["Condition"] = condition
        return statement

    # -- resource operations ----------------------------------------------
    def read(self, client: Any, resource: str) -> PolicyState:
        """The function policy, with the ``RevisionId`` its writes are pinned to (``lambda_write``)."""
        return read_policy(client, *_name_and_qualifier(resource))

    def plan(
        self,
        state: dict[str, Any],
        resource: str,
        items: Sequence[tuple[LambdaInvokeGrant, Operation]],
        allowed: Sequence[Allowed] | None = None,
        references: References | None = None,
    ) -> ResourcePlan:
        """Apply or revoke ``items``; widen SourceArns (shared permissions) only if exact ones would not fit.

        ``references`` (the broker's reference table for this function, None when it has
        none) says which grants each shared permission stands for. Applying: a grant in
        force (its own permission, or listed in a shared permission that exists) is
        ``unchanged``. A grant whose rule allows ``widen-source-arn`` joins an existing
        shared permission of its account and scope at no cost (no Lambda call). The rest
        get their own permissions if the whole policy then fits; if not, each grant whose
        rule allows widening joins or creates the shared permission of its source
        account, and each other grant gets its own permission while it fits and is
        refused, naming the limit and the remedy, when it does not. Revoking removes the
        grant's own permission, or the grant from its shared permission's references (the
        permission goes with its last grant).
        """
        allowances: list[Allowed | None] = list(allowed) if allowed is not None else [None] * len(items)
        refs = {sid: set(members) for sid, members in (references or {}).items()}
        refs_changed = False
        before = json.loads(json.dumps(state))
        after = json.loads(json.dumps(state))
        plans: list[ItemPlan | None] = [None] * len(items)
        writes: list[tuple[str, str, dict[str, Any] | None]] = []
        shared_in: dict[int, str] = {}  # item -> Sid of the shared permission it is in / left

        def scope_of(i: int) -> SourceScope | None:
            a = allowances[i]
            if references is None or a is None or WIDEN_SOURCE_ARN not in a.compaction:
                return None
            return a.source_scope

        def holder(spec: LambdaInvokeGrant) -> str | None:
            gid = self.grant_id(spec)
            return next((sid for sid, members in refs.items() if gid in members), None)

        def fits(statements: list[dict[str, Any]]) -> tuple[bool, int]:
            size = compact_size({**after, "Statement": [_as_lambda_stores(s) for s in statements]})
            return size <= LAMBDA_POLICY_LIMIT, size

        pending: list[int] = []
        for i, (spec, operation) in enumerate(items):
            gid = self.grant_id(spec)
            exact = find_statement(after, gid)
            exact_ok = exact is not None and self._same(exact, spec)
            wsid = holder(spec)
            if operation == "apply":
                if exact_ok:
                    plans[i] = ItemPlan(spec, operation, "unchanged", "permission already present")
                elif wsid is not None and find_statement(after, wsid) is not None:
                    shared_in[i] = wsid
                    plans[i] = ItemPlan(spec, operation, "unchanged", "in a shared permission already")
                else:
                    if wsid is not None:  # a reference left without its permission (an interrupted apply)
                        refs[wsid].discard(gid)
                        refs_changed = True
                    pending.append(i)
                continue
            if exact is None and wsid is None:
                plans[i] = ItemPlan(spec, operation, "absent", "permission not present")
                continue
            if exact is not None:
                writes.append(("remove", gid, None))
                after["Statement"] = [s for s in after["Statement"] if s.get("Sid") != gid]
            if wsid is not None:
                refs[wsid].discard(gid)
                refs_changed = True
                shared_in[i] = wsid
                if not refs[wsid] and find_statement(after, wsid) is not None:
                    writes.append(("remove", wsid, None))
                    after["Statement"] = [s for s in after["Statement"] if s.get("Sid") != wsid]
            plans[i] = ItemPlan(spec, operation, "revoked")

        def join(i: int, scope: SourceScope) -> None:
            nonlocal refs_changed
            spec = items[i][0]
            wsid = self.shared_sid(spec, scope)
            refs.setdefault(wsid, set()).add(self.grant_id(spec))
            refs_changed = True
            shared_in[i] = wsid
            plans[i] = ItemPlan(spec, "apply", "applied")

        # 1. a grant whose rule allows widening joins an existing shared permission of its scope
        rest: list[int] = []
        for i in pending:
            scope = scope_of(i)
            spec = items[i][0]
            if scope is not None and self._shared_present(after, spec, scope):
                join(i, scope)
            else:
                rest.append(i)
        # 2. the others each with its own permission, if the whole policy then fits
        exact_sids = {self.grant_id(items[i][0]) for i in rest}
        kept = [s for s in after["Statement"] if s.get("Sid") not in exact_sids]
        if fits(kept + [self.statement(items[i][0]) for i in rest])[0]:
            for i in rest:
                self._add_exact(after, writes, items[i][0])
                plans[i] = ItemPlan(items[i][0], "apply", "applied")
        else:
            # 3. compaction: widen what the rules allow, then each other grant while it fits
            for i in rest:
                spec = items[i][0]
                scope = scope_of(i)
                if scope is not None and self._shared_present(after, spec, scope):
                    join(i, scope)
                    continue
                statement = self.shared_statement(spec, scope) if scope is not None else self.statement(spec)
                others = [s for s in after["Statement"] if s.get("Sid") != statement["Sid"]]
                ok, size = fits([*others, statement])
                if not ok:
                    reason = self._too_large(
                        resource, size, allowances[i], spec, widened=scope is not None, shared=references is not None
                    )
                    plans[i] = ItemPlan(spec, "apply", "failed", reason)
                    continue
                if scope is None:
                    self._add_exact(after, writes, spec)
                    plans[i] = ItemPlan(spec, "apply", "applied")
                    continue
                if find_statement(after, statement["Sid"]) is not None:  # same Sid, other content
                    writes.append(("remove", statement["Sid"], None))
                writes.append(("add", statement["Sid"], self._add_kwargs(spec, scope)))
                after["Statement"] = [*others, statement]
                join(i, scope)
        for i, sid in shared_in.items():
            plan = plans[i]
            assert plan is not None
            members = len(refs.get(sid, ()))
            if plan.outcome in ("applied", "unchanged"):
                source = _source_of(find_statement(after, sid))
                plan.compaction = f"widened into {sid} ({source}), shared by {members} grants"
            elif plan.outcome == "revoked":
                plan.compaction = f"removed from {sid}, {members} grants remain"
        done = [p for p in plans if p is not None]
        assert len(done) == len(items)
        new_refs = {sid: sorted(m) for sid, m in refs.items() if m} if refs_changed else None
        return ResourcePlan(resource, before, after, done, writes, state, references=new_refs)

    # -- plan helpers (pure) -------------------------------------------------
    def shared_sid(self, spec: LambdaInvokeGrant, scope: SourceScope) -> str:
        """The StatementId of the permission shared by the grants of one source account and scope."""
        identity = {
            "function": spec.function,
            "principal": spec.principal,
            "source_account": scope.account,
            "source_arn": scope.source_arn or "",
        }
        return managed_id(identity).replace(PRODUCT_PREFIX, SHARED_PREFIX, 1)

    def shared_statement(self, spec: LambdaInvokeGrant, scope: SourceScope) -> dict[str, Any]:
        """The shared permission: the grant's principal and function, its source widened to ``scope``."""
        widened = spec.model_copy(update={"source_arn": scope.source_arn, "source_account": scope.account})
        return {**self.statement(widened), "Sid": self.shared_sid(spec, scope)}

    def _shared_present(self, doc: dict[str, Any], spec: LambdaInvokeGrant, scope: SourceScope) -> bool:
        current = find_statement(doc, self.shared_sid(spec, scope))
        return current is not None and _equivalent(current, self.shared_statement(spec, scope))

    def _add_exact(self, doc: dict[str, Any], writes: list[Any], spec: LambdaInvokeGrant) -> None:
        sid = self.grant_id(spec)
        if find_statement(doc, sid) is not None:  # same Sid, other content: replace it
            writes.append(("remove", sid, None))
        writes.append(("add", sid, self._add_kwargs(spec)))
        doc["Statement"] = [s for s in doc["Statement"] if s.get("Sid") != sid] + [self.statement(spec)]

    @staticmethod
    def _add_kwargs(spec: LambdaInvokeGrant, scope: SourceScope | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Action": INVOKE_ACTION, "Principal": spec.principal}
        source_arn = scope.source_arn if scope is not None else spec.source_arn
        source_account = scope.account if scope is not None else spec.source_account
        if source_arn:
            kwargs["SourceArn"] = source_arn
        if source_account:
            kwargs["SourceAccount"] = source_account
        if spec.principal_org_id:
            kwargs["PrincipalOrgID"] = spec.principal_org_id
        return kwargs

    @staticmethod
    def _too_large(
        resource: str, size: int, allowed: Allowed | None, spec: LambdaInvokeGrant, *, widened: bool, shared: bool
    ) -> str:
        """The refusal: the limit, and the remedy that applies to this grant under its rule."""
        rule = f"rule {allowed.rule_id}" if allowed is not None else "the rule that allows the grant"
        may_widen = allowed is not None and WIDEN_SOURCE_ARN in allowed.compaction
        if widened:
            remedy = (
                "even with one permission per source account (widen-source-arn); spread the accounts over "
                "more than one function, or remove unused permissions"
            )
        elif not spec.principal.endswith((".amazonaws.com", ".amazonaws.com.cn")) and ORGANIZATION_GRANTS_BOOTSTRAPPED:
            remedy = (
                "grant to the organization (principal '*' with principal_org_id) under a rule that allows "
                "organization principals, or remove unused permissions"
            )
        elif not spec.principal.endswith((".amazonaws.com", ".amazonaws.com.cn")):
            remedy = "remove unused permissions, or spread the callers over more than one function"
        elif may_widen and not shared:
            remedy = (
                "the broker has no reference table (DEPLOY_HELPER_REFERENCE_TABLE) to share permissions; "
                "configure it, or remove unused permissions"
            )
        elif may_widen:
            remedy = "this grant is bound to its account already; remove unused permissions or use another function"
        else:
            remedy = (
                f"allow compaction: [{WIDEN_SOURCE_ARN}] in {rule} (one permission per source account), "
                "or remove unused permissions"
            )
        return PolicySizeError(
            f"the function policy of {resource} would grow to {size} bytes, over Lambda's "
            f"{LAMBDA_POLICY_LIMIT}-byte limit for a function policy; {remedy}"
        ).message

    def write(self, client: Any, plan: ResourcePlan) -> None:
        """One call per permission: the first pinned to the revision planned on, the rest at once.

        Each AddPermission/RemovePermission is atomic in Lambda; the ``RevisionId`` on the
        first makes a stale plan fail rather than undo a change made since (``lambda_write``).
        """
        name, qualifier = _name_and_qualifier(plan.resource)
        write_pinned(client, plan, name, qualifier)

    def present(self, state: dict[str, Any], spec: LambdaInvokeGrant, references: References | None = None) -> bool:
        """In force as its own permission, or listed in ``references`` for a shared permission that exists."""
        current = find_statement(state, self.grant_id(spec))
        if current is not None and self._same(current, spec):
            return True
        gid = self.grant_id(spec)
        return any(gid in members and find_statement(state, sid) for sid, members in (references or {}).items())

    def _same(self, current: dict[str, Any], spec: LambdaInvokeGrant) -> bool:
        return _equivalent(current, self.statement(spec))

    # -- drift (pure) -----------------------------------------------------------
    def accounts_for(
        self, state: dict[str, Any], spec: LambdaInvokeGrant, references: dict[str, list[str]] | None = None
    ) -> set[str]:
        gid = self.grant_id(spec)
        return {gid} | {sid for sid, members in (references or {}).items() if gid in members}

    def excess(
        self,
        state: dict[str, Any],
        specs: Sequence[LambdaInvokeGrant],
        references: dict[str, list[str]] | None = None,
    ) -> dict[str, str]:
        """A shared permission whose principal, SourceAccount or SourceArn no longer binds its grants."""
        by_id = {self.grant_id(s): s for s in specs}
        out: dict[str, str] = {}
        for sid, members in (references or {}).items():
            statement = find_statement(state, sid)
            grants = [by_id[g] for g in members if g in by_id]
            if statement is None or not grants:
                continue
            why = next((w for w in (_beyond(statement, self.statement(g), g) for g in grants) if w), "")
            if why:
                out[sid] = why
        return out

    def plan_removal(self, state: dict[str, Any], resource: str, ids: Sequence[str]) -> ResourcePlan:
        gone = set(ids)
        after = {**state, "Statement": [s for s in state.get("Statement", []) if s.get("Sid") not in gone]}
        writes = [("remove", sid, None) for sid in sorted(gone) if find_statement(state, sid) is not None]
        return ResourcePlan(resource, state, after, [], writes, state)


def _equivalent(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """The same principal and conditions, whichever shape AWS (or moto) returned them in."""
    return normalize_principal(current.get("Principal")) == normalize_principal(desired["Principal"]) and _conditions(
        current
    ) == _conditions(desired)


def _beyond(statement: dict[str, Any], desired: dict[str, Any], spec: LambdaInvokeGrant) -> str:
    """Why a shared permission admits more than ``spec`` (its widened source, and nothing else), or ""."""
    if normalize_principal(statement.get("Principal")) != normalize_principal(desired["Principal"]):
        return "the shared permission names another principal"
    conditions = _conditions(statement)
    keys = {(op, key) for op, block in conditions.items() for key in block}
    allowed = {
        ("ArnLike", "aws:sourcearn"),
        ("StringEquals", "aws:sourceaccount"),
        ("StringEquals", "aws:principalorgid"),
    }
    if keys - allowed:
        return f"the shared permission has conditions the broker never writes: {sorted(keys - allowed)}"
    want = _conditions(desired)
    account = want.get("StringEquals", {}).get("aws:sourceaccount") or (spec.source_arn or "::::").split(":")[4]
    if conditions.get("StringEquals", {}).get("aws:sourceaccount") != account:
        return "the shared permission is no longer bound to the grants' source account"
    arn = conditions.get("ArnLike", {}).get("aws:sourcearn")
    if arn is not None and (arn.split(":")[4:5] != [account] or not _admits(arn, spec.source_arn)):
        return f"the shared permission's SourceArn {arn} is not the grants' account scope"
    if want.get("StringEquals", {}).get("aws:principalorgid") != conditions.get("StringEquals", {}).get(
        "aws:principalorgid"
    ):
        return "the shared permission's organization condition differs"
    return ""


def _admits(pattern: str, arn: str | None) -> bool:
    from deploy_helper.trust.rules import arn_matches

    return arn is None or arn_matches(pattern, arn)


def _as_lambda_stores(statement: dict[str, Any]) -> dict[str, Any]:
    """The statement's size-relevant shape in Lambda: an account principal is ``{"AWS": "arn:…:root"}``.

    A policy read back with bare account ids (as moto returns them) would otherwise be
    counted shorter than Lambda counts it, and a change AWS refuses would be sent.
    """
    principal = statement.get("Principal")
    if isinstance(principal, str) and principal != "*":
        principal = {"AWS": principal}
    if not isinstance(principal, dict) or "AWS" not in principal:
        return statement
    values = principal["AWS"] if isinstance(principal["AWS"], list) else [principal["AWS"]]
    values = [f"arn:aws:iam::{v}:root" if isinstance(v, str) and ACCOUNT_RE.fullmatch(v) else v for v in values]
    return {**statement, "Principal": {**principal, "AWS": values[0] if len(values) == 1 else values}}


def _source_of(statement: dict[str, Any] | None) -> str:
    """The source a shared permission admits, in words: "SourceArn …, SourceAccount …"."""
    conditions = _conditions(statement or {})
    arn = conditions.get("ArnLike", {}).get("aws:sourcearn")
    account = conditions.get("StringEquals", {}).get("aws:sourceaccount")
    return ", ".join(part for part in (arn and f"SourceArn {arn}", account and f"SourceAccount {account}") if part)


def _conditions(statement: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Condition keys compared case-insensitively, as IAM does."""
    out: dict[str, dict[str, str]] = {}
    for op, block in (statement.get("Condition") or {}).items():
        for key, value in block.items():
            out.setdefault(op, {})[key.lower()] = value
    return out


def _arn(arn: str) -> Any:
    m = LAMBDA_ARN_RE.fullmatch(arn)
    if m is None:  # specs are validated; a broken invariant is a bug, not a user error
        raise RuntimeError(f"unparsed function ARN reached a grant kind: {arn!r}")
    return m


def _name_and_qualifier(arn: str) -> tuple[str, str | None]:
    m = _arn(arn)
    base = arn if m.group("qualifier") is None else arn.rsplit(":", 1)[0]
    return base, m.group("qualifier")
