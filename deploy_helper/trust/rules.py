"""Authorization: which caller may make which grant (``policies/rules.yaml``).

Deny by default. A grant is allowed when one rule of its kind names the
caller and every check of that rule passes: target, principal, access. Before
any rule is consulted, guardrails that no rule can lift are applied:

- every account a grant touches (target, principal, source) is registered in
  ``organization.accounts``;
- a ``*`` principal only with ``principal_org_id`` equal to the organization's id;
- a service principal only when bound to a registered source account or ARN;
- actions are never free-form: each kind maps named access levels/operations
  to a fixed set of actions.

Example::

    version: 1
    organization:
      id: o-a1b2c3d4e5
      accounts: {tooling: "111111111111", token-service: "222222222222", service-a: "333333333333"}
    rules:
      - id: authorizer-invoke
        callers: [ci-tooling]
        kind: lambda-invoke
        targets: ["arn:aws:lambda:*:222222222222:function:token-authorizer"]
        principals:
          services:
            - service: apigateway.amazonaws.com
              source_accounts: [service-a]
              source_arns: ["arn:aws:execute-api:*:*:*/authorizers/*"]

A refusal names the rule and the check that failed.
"""

from __future__ import annotations

import functools
import re
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from deploy_helper.exceptions import DeniedError
from deploy_helper.grants import REGISTRY, kind_of
from deploy_helper.grants.base import WIDEN_SOURCE_ARN, Allowed, Compaction, Duration, SourceScope, duration_seconds
from deploy_helper.trust.identifiers import (
    ACCOUNT_RE,
    SOURCE_ARN_RE,
    AccountId,
    Name,
    OrgId,
    ServicePrincipal,
    account_of_principal,
)
from deploy_helper.trust.patterns import arn_witness, has_wildcards
from deploy_helper.trust.policyfiles import parse_file

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.grants import GrantSpec

_PATTERN_RE = re.compile(r"arn:[a-z*-]+:[a-z0-9*-]+:[a-z0-9*-]*:[0-9*]*:[A-Za-z0-9_./*:+=,@?$-]+")
ORGANIZATION = "organization"


def _arn_pattern(value: str) -> str:
    if not _PATTERN_RE.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an ARN pattern (arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE, "
            "'*' and '?' allowed within a part)"
        )
    return value


ArnPattern = Annotated[str, AfterValidator(_arn_pattern)]
#: Every access level and operation some registered kind has (each rule is then checked
#: against its own kind's); an unknown name is refused where it is written.
if TYPE_CHECKING:
    AccessName = str
    OperationName = str
else:
    AccessName = Literal[tuple(sorted({level for k in REGISTRY.values() for level in k.access_levels}))]
    OperationName = Literal[tuple(sorted({op for k in REGISTRY.values() for op in k.operation_names}))]
AccountRef = Annotated[str, Field(pattern=r"^(\d{12}|[a-z0-9][a-z0-9-]{0,62})$")]


def arn_matches(pattern: str, arn: str) -> bool:
    """Whether the rule's ``pattern`` admits ``arn``, part by part (a wildcard never crosses a ``:`` between parts).

    ``arn`` may itself be an ``ArnLike`` pattern (a grant's ``SourceArn``): it is admitted
    only when every ARN it matches, ``pattern`` matches too — its ``*`` and ``?`` are
    wildcards, never characters a rule's ``?`` or ``*`` could stand for. Only ``*`` and
    ``?`` are special; ``[`` is a plain character (see ``deploy_helper.trust.patterns``).
    """
    return arn_witness(pattern, arn) is None


def _unmatched(what: str, value: str, patterns: list[str]) -> str:
    """Why ``value`` is admitted by none of ``patterns``; for a wildcard value, an ARN it would reach beyond them."""
    reason = f"{what} {value} matches none of {patterns}"
    if has_wildcards(value) and patterns:
        beyond = arn_witness(patterns[0], value)
        reason += f" (as an ArnLike pattern it also matches {beyond}, which {patterns[0]} does not)"
    return reason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Organization(_Strict):
    """The organization and the accounts the broker may ever touch."""

    id: OrgId | None = None
    accounts: Annotated[dict[Name, AccountId], Field(min_length=1)]


class ServiceRule(_Strict):
    service: ServicePrincipal
    source_accounts: Annotated[list[AccountRef], Field(min_length=1)]
    source_arns: list[ArnPattern] = []


class PrincipalRules(_Strict):
    services: list[ServiceRule] = []
    roles: list[ArnPattern] = []
    role_accounts: list[AccountRef] = []
    accounts: list[AccountRef] = []
    organization: bool = False

    @model_validator(mode="after")
    def _roles_need_accounts(self) -> PrincipalRules:
        if self.roles and not self.role_accounts:
            raise ValueError("roles need role_accounts: the accounts (or 'organization') the roles may be in")
        return self


class Rule(_Strict):
    """What one set of callers may grant."""

    id: Name
    description: str = ""
    callers: Annotated[list[Name], Field(min_length=1)]
    kind: str
    targets: Annotated[list[ArnPattern], Field(min_length=1)]
    target_accounts: list[AccountRef] = []
    principals: PrincipalRules
    #: The named access levels grants of this rule may have (kinds with ``access_levels``).
    access: list[AccessName] = []
    #: The operations grants of this rule may list (kinds with ``operation_names``).
    operations: list[OperationName] = []
    #: How the broker may fit this rule's grants into a policy's size limit. Empty (the
    #: default): each grant keeps its own statement, and one that does not fit is refused.
    #: ``merge-principals``: grants with equal actions and resources may share one statement
    #: whose principal list holds each grant's principal (never wider than the grants).
    #: ``widen-source-arn`` (lambda-invoke, service principals): grants from one source
    #: account may share one permission whose SourceArn is this rule's ``source_arns``
    #: pattern narrowed to that account (or, with no ``source_arns``, SourceAccount only).
    compaction: list[Compaction] = []
    #: The longest lifetime this rule allows (``8h``); a grant without an expiry is then refused.
    max_ttl: Duration | None = None
    #: Lifecycle fields a grant must carry under this rule (``expiry`` = ``expires_at`` or ``ttl``).
    requires: list[Literal["reason", "ticket", "expiry"]] = []

    @model_validator(mode="after")
    def _fits_kind(self) -> Rule:
        if self.kind not in REGISTRY:
            raise ValueError(f"unknown kind {self.kind!r}; one of {', '.join(sorted(REGISTRY))}")
        unsupported = sorted(set(self.compaction) - set(REGISTRY[self.kind].compactions))
        if unsupported:
            raise ValueError(
                f"compaction {unsupported} is not available for {self.kind} "
                f"(available: {list(REGISTRY[self.kind].compactions)})"
            )
        kind = REGISTRY[self.kind]
        for target in self.targets:
            if target.split(":")[2] != kind.service:
                raise ValueError(f"target {target!r} is not a {kind.service} ARN pattern (kind {self.kind})")
        levels = sorted(kind.access_levels)
        if levels and not self.access:
            raise ValueError(f"a {self.kind} rule must list the access levels it allows ({', '.join(levels)})")
        if not levels and self.access:
            raise ValueError(f"access applies to kinds with access levels; {self.kind} has none: remove access")
        unknown = sorted(set(self.access) - set(levels))
        if unknown:
            raise ValueError(f"access {unknown} is not a level of {self.kind} (levels: {', '.join(levels)})")
        if not kind.resource_names_account and not self.target_accounts:
            raise ValueError(f"a {self.kind} rule must list target_accounts ({self.kind} ARNs carry no account)")
        if kind.operation_names and not self.operations:
            raise ValueError(f"a {self.kind} rule must list the operations it allows")
        if not kind.operation_names and self.operations:
            raise ValueError(f"operations apply to kinds whose grants name operations, not {self.kind}")
        unknown = sorted(set(self.operations) - set(kind.operation_names))
        if unknown:
            raise ValueError(f"operations {unknown} are not operations of {self.kind}")
        forms = {"services": bool(self.principals.services), "organization": self.principals.organization}
        for form, used in forms.items():
            if used and form not in kind.principal_forms:
                allowed = ", ".join(sorted(kind.principal_forms))
                raise ValueError(f"{form} principals do not apply to {self.kind} rules (allowed: {allowed})")
        return self


class RuleSet(_Strict):
    """The whole ``rules.yaml``."""

    version: Literal[1]
    organization: Organization
    rules: list[Rule]

    @model_validator(mode="after")
    def _consistent(self) -> RuleSet:
        ids = [r.id for r in self.rules]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"rule ids must be unique; repeated: {', '.join(sorted(dupes))}")
        for rule in self.rules:
            refs = [*rule.target_accounts, *rule.principals.role_accounts, *rule.principals.accounts]
            refs += [a for s in rule.principals.services for a in s.source_accounts]
            for ref in refs:
                self.resolve(ref)  # raises on an unknown name
            if rule.principals.organization and not self.organization.id:
                raise ValueError(f"rule {rule.id}: organization principals need organization.id")
        return self

    @classmethod
    def load(cls, path: Path) -> RuleSet:
        return parse_file(path, cls)[0]

    # -- account references -------------------------------------------------
    @functools.cached_property
    def registered(self) -> frozenset[str]:
        return frozenset(self.organization.accounts.values())

    @functools.cached_property
    def _resolved(self) -> dict[tuple[str, ...], frozenset[str]]:
        """``resolve_all`` answers by list (the rules do not change once loaded)."""
        return {}

    def resolve(self, ref: str) -> frozenset[str]:
        if ref == ORGANIZATION:
            return self.registered
        if ACCOUNT_RE.fullmatch(ref):
            if ref not in self.registered:
                raise ValueError(f"account {ref} is not registered in organization.accounts")
            return frozenset([ref])
        if ref not in self.organization.accounts:
            raise ValueError(f"unknown account name {ref!r}; add it to organization.accounts")
        return frozenset([self.organization.accounts[ref]])

    def resolve_all(self, refs: list[str]) -> frozenset[str]:
        key = tuple(refs)
        known = self._resolved.get(key)
        if known is None:
            out: set[str] = set()
            for ref in refs:
                out |= self.resolve(ref)
            known = self._resolved[key] = frozenset(out)
        return known

    # -- authorization ------------------------------------------------------
    def authorize(self, caller: str, spec: GrantSpec, *, now: float | None = None) -> Allowed:
        """The rule that allows ``spec`` for ``caller``; raises ``DeniedError`` naming the failed check.

        ``now`` (default: the clock) is the request's time, against which a grant's
        expiry and a rule's ``max_ttl`` are measured.
        """
        now = time.time() if now is None else now
        self._guardrails(spec)
        expiry = spec.expiry(now)
        if expiry is not None and expiry <= now:
            raise DeniedError(
                f"guardrail: the grant's expiry ({spec.expires_at or spec.ttl}) is already past; send a later one",
                check="guardrail-expired",
            )
        candidates = [r for r in self.rules if r.kind == spec.kind and caller in r.callers]
        if not candidates:
            raise DeniedError(
                f"no rule lets caller {caller!r} make {spec.kind} grants (deny by default)",
                check="no-rule",
            )
        best: tuple[int, Rule, str, str] | None = None
        for rule in candidates:
            stage, check, detail = self._evaluate(rule, spec)
            if check == "":
                stage, check, detail = _lifecycle(rule, spec, expiry, now)
            if check == "":
                scope = self._source_scope(rule, spec) if WIDEN_SOURCE_ARN in rule.compaction else None
                return Allowed(rule.id, frozenset(rule.compaction), scope)
            if best is None or stage > best[0]:
                best = (stage, rule, check, detail)
        assert best is not None
        _, rule, check, detail = best
        raise DeniedError(f"rule {rule.id!r} refused the grant: {check}: {detail}", rule_id=rule.id, check=check)

    def _guardrails(self, spec: GrantSpec) -> None:
        kind = kind_of(spec)
        registered = self.registered
        target = kind.target_account(spec)
        if target not in registered:
            raise DeniedError(
                f"guardrail: target account {target} is not registered in organization.accounts",
                check="guardrail-target-account",
            )
        principal = kind.principal(spec)
        if principal == "*":
            org = getattr(spec, "principal_org_id", None)
            if not self.organization.id or org != self.organization.id:
                raise DeniedError(
                    "guardrail: a '*' principal is allowed only with principal_org_id equal to "
                    f"the registered organization ({self.organization.id or 'none registered'})",
                    check="guardrail-wildcard-principal",
                )
            return
        account = account_of_principal(principal)
        if account is not None:
            if account not in registered:
                raise DeniedError(
                    f"guardrail: principal {principal} is outside the registered accounts",
                    check="guardrail-foreign-principal",
                )
            return
        # a service principal: its binding must stay inside the registered accounts
        bound = getattr(spec, "source_account", None)
        source_arn = getattr(spec, "source_arn", None)
        source_account = None
        if source_arn:
            m = SOURCE_ARN_RE.fullmatch(source_arn)
            source_account = m.group("account") if m else None
        for acct in (bound, source_account):
            if acct is not None and acct not in registered:
                raise DeniedError(
                    f"guardrail: service principal {principal} is bound to account {acct}, which is not registered",
                    check="guardrail-foreign-source",
                )
        if bound is None and source_account is None:
            raise DeniedError(
                f"guardrail: service principal {principal} must be bound to a registered account "
                "(source_account, or a source_arn that names its account)",
                check="guardrail-unbound-service",
            )

    def _evaluate(self, rule: Rule, spec: GrantSpec) -> tuple[int, str, str]:
        kind = kind_of(spec)
        resource = kind.resource(spec)
        if not any(arn_matches(p, resource) for p in rule.targets):
            return 1, "target", f"{resource} matches none of {rule.targets}"
        target_account = kind.target_account(spec)
        if rule.target_accounts and target_account not in self.resolve_all(rule.target_accounts):
            return 1, "target-account", f"account {target_account} is not among {rule.target_accounts}"
        failure = self._principal_check(rule, spec)
        if failure:
            return 2, "principal", failure
        access = getattr(spec, "access", None)
        if access is not None and access not in rule.access:
            return 3, "access", f"access {access!r} is not among {rule.access}"
        operations = getattr(spec, "operations", None)
        if operations is not None:
            extra = sorted(set(operations) - set(rule.operations))
            if extra:
                return 3, "operations", f"{extra} not among {rule.operations}"
        return 4, "", ""

    def _principal_check(self, rule: Rule, spec: GrantSpec) -> str:
        principals = rule.principals
        principal = kind_of(spec).principal(spec)
        if principal == "*":
            return "" if principals.organization else "organization-wide principals are not allowed by this rule"
        account = account_of_principal(principal)
        if account is not None and ACCOUNT_RE.fullmatch(principal):
            allowed = self.resolve_all(principals.accounts)
            return "" if account in allowed else f"account principal {account} is not among {principals.accounts}"
        if account is not None:
            if not any(arn_matches(p, principal) for p in principals.roles):
                return f"role {principal} matches none of {principals.roles}"
            if account not in self.resolve_all(principals.role_accounts):
                return f"role account {account} is not among {principals.role_accounts}"
            return ""
        services = [s for s in principals.services if s.service == principal]
        if not services:
            return f"service principal {principal} is not allowed by this rule"
        reasons = [reason for svc in services if (reason := self._service_check(svc, spec))]
        return "" if len(reasons) < len(services) else "; ".join(reasons)

    def _service_check(self, svc: ServiceRule, spec: GrantSpec) -> str:
        """Why ``svc`` does not allow the grant's source, or "" when it does."""
        source_account = getattr(spec, "source_account", None)
        source_arn = getattr(spec, "source_arn", None)
        allowed = self.resolve_all(svc.source_accounts)
        if source_account is not None and source_account not in allowed:
            return f"source_account {source_account} is not among {svc.source_accounts}"
        if source_arn is not None:
            m = SOURCE_ARN_RE.fullmatch(source_arn)
            arn_account = m.group("account") if m else None
            if arn_account and arn_account not in allowed:
                return f"source_arn account {arn_account} is not among {svc.source_accounts}"
            if svc.source_arns and not any(arn_matches(p, source_arn) for p in svc.source_arns):
                return _unmatched("source_arn", source_arn, svc.source_arns)
        elif svc.source_arns:
            return "this rule requires a source_arn"
        return ""

    def _source_scope(self, rule: Rule, spec: GrantSpec) -> SourceScope | None:
        """How far ``widen-source-arn`` may widen the grant's SourceArn: to its account, within the rule.

        The widened ARN keeps the grant's partition, service, region and account and takes
        the resource part of the rule's pattern that matched the grant, so every ARN it
        matches is one the rule would allow in that account. None when the grant has no
        ``source_arn`` (it is bound to its account already).
        """
        source_arn = getattr(spec, "source_arn", None)
        if source_arn is None:
            return None
        m = SOURCE_ARN_RE.fullmatch(source_arn)
        account = getattr(spec, "source_account", None) or (m.group("account") if m else None)
        if not account:
            return None
        principal = kind_of(spec).principal(spec)
        for svc in rule.principals.services:
            if svc.service != principal or self._service_check(svc, spec):
                continue
            if not svc.source_arns:
                return SourceScope(account, None)
            pattern = next(p for p in svc.source_arns if arn_matches(p, source_arn))
            parts = source_arn.split(":", 5)
            if parts[4] != account:  # a source ARN without an account part: keep it exact
                return None
            return SourceScope(account, ":".join([*parts[:5], pattern.split(":", 5)[5]]))
        return None


def _lifecycle(rule: Rule, spec: GrantSpec, expiry: float | None, now: float) -> tuple[int, str, str]:
    """The rule's lifecycle checks (stage 4): a maximum lifetime, required reason/ticket/expiry."""
    if rule.max_ttl is not None:
        limit = duration_seconds(rule.max_ttl)
        if expiry is None:
            return 4, "max-ttl", f"grants under this rule must expire within {rule.max_ttl}; add ttl or expires_at"
        if expiry - now > limit:
            return 4, "max-ttl", f"the grant would live {int(expiry - now)}s, longer than max_ttl {rule.max_ttl}"
    for field in rule.requires:
        missing = expiry is None if field == "expiry" else getattr(spec, field) is None
        if missing:
            hint = "ttl or expires_at" if field == "expiry" else field
            return 4, f"requires-{field}", f"grants under this rule must carry {hint}"
    return 5, "", ""


def describe(rules: RuleSet) -> list[dict[str, Any]]:
    """A short summary of the rules, for people."""
    return [{"id": r.id, "kind": r.kind, "callers": r.callers, "targets": r.targets} for r in rules.rules]
