"""A small IAM policy evaluator, for proving what the bootstrap roles may do.

It decides one request against a set of policies the way IAM's policy
evaluation logic does for a single account: an explicit ``Deny`` wins, then an
``Allow``, otherwise the request is implicitly denied. It understands what the
bootstrap template uses and a little more:

* ``Action`` / ``NotAction`` with ``*`` and ``?`` wildcards (case-insensitive);
* ``Resource`` / ``NotResource``, matched component by component as ARNs;
* ``Principal`` / ``NotPrincipal`` (``AWS`` ARNs or ``*``, ``Service``) for trust policies;
* condition operators ``String*``, ``Arn*``, ``Numeric*``, ``Bool``, ``Null``, each
  with ``...IfExists`` and the ``ForAnyValue:`` / ``ForAllValues:`` set qualifiers,
  with AWS's rules for a key missing from the request (positive operators fail,
  negated ones pass, ``ForAllValues`` passes, ``IfExists`` passes).

Anything else (policy variables, date, IP or binary operators) raises
:class:`UnsupportedPolicyError` rather than deciding wrongly. No library on PyPI
evaluates conditions against a request context (parliament and cloudsplaining
lint policies, policyuniverse expands actions), hence this module.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

ContextValue = str | bool | int | Sequence[str]


class UnsupportedPolicyError(ValueError):
    """The policy uses an element or operator this evaluator does not implement."""


class Decision(enum.Enum):
    """The outcome of evaluating a request."""

    ALLOW = "allow"
    EXPLICIT_DENY = "explicit-deny"
    IMPLICIT_DENY = "implicit-deny"

    @property
    def allowed(self) -> bool:
        """True only for :attr:`ALLOW`."""
        return self is Decision.ALLOW


@dataclass(frozen=True)
class Request:
    """One API request as IAM sees it.

    ``context`` maps condition keys (case-insensitive) to values; multi-valued
    keys (``aws:TagKeys``, ``kms:ResourceAliases``...) are sequences. ``principal``
    is the caller's ARN, needed only for resource-based policies such as trust
    policies.
    """

    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    principal: str | None = None


@dataclass(frozen=True)
class Explanation:
    """A decision and the ``Sid`` (or index) of the statements that produced it."""

    decision: Decision
    statements: tuple[str, ...]


@lru_cache(maxsize=1024)
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    parts = (".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def glob_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """``*`` matches any run of characters, ``?`` exactly one, everything else itself."""
    return _glob(pattern, ignore_case).fullmatch(value) is not None


def arn_match(pattern: str, arn: str) -> bool:
    """Match an ARN against an ARN pattern the way ``Resource`` and ``ArnLike`` do.

    Both are split into their six colon-separated components (the last one keeps
    any further colons) and each component is matched with wildcards on its own,
    so a wildcard never spans two components. ``*`` alone matches everything.
    """
    if pattern == "*":
        return True
    pattern_parts = pattern.split(":", 5)
    arn_parts = arn.split(":", 5)
    if len(pattern_parts) != 6 or len(arn_parts) != 6:
        return glob_match(pattern, arn)
    return all(glob_match(p, a) for p, a in zip(pattern_parts, arn_parts, strict=True))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _check_no_variables(values: Iterable[Any]) -> None:
    for value in values:
        if isinstance(value, str) and "${" in value:
            raise UnsupportedPolicyError(f"policy variables are not supported: {value!r}")


# -- condition operators -----------------------------------------------------------------

_TRUE = ("true",)


def _string_equals(policy: str, request: str) -> bool:
    return policy == request


def _string_equals_ic(policy: str, request: str) -> bool:
    return policy.lower() == request.lower()


def _string_like(policy: str, request: str) -> bool:
    return glob_match(policy, request)


def _arn_equals(policy: str, request: str) -> bool:
    return policy == request


def _bool_equals(policy: str, request: str) -> bool:
    return policy.lower() == request.lower()


def _numeric(compare: str) -> Any:
    def check(policy: str, request: str) -> bool:
        try:
            left, right = float(request), float(policy)
        except ValueError:
            return False
        return {
            "eq": left == right,
            "lt": left < right,
            "le": left <= right,
            "gt": left > right,
            "ge": left >= right,
        }[compare]

    return check


# operator -> (matcher, negated)
_OPERATORS: dict[str, tuple[Any, bool]] = {
    "StringEquals": (_string_equals, False),
    "StringNotEquals": (_string_equals, True),
    "StringEqualsIgnoreCase": (_string_equals_ic, False),
    "StringNotEqualsIgnoreCase": (_string_equals_ic, True),
    "StringLike": (_string_like, False),
    "StringNotLike": (_string_like, True),
    "ArnEquals": (_arn_equals, False),
    "ArnNotEquals": (_arn_equals, True),
    "ArnLike": (arn_match, False),
    "ArnNotLike": (arn_match, True),
    "NumericEquals": (_numeric("eq"), False),
    "NumericNotEquals": (_numeric("eq"), True),
    "NumericLessThan": (_numeric("lt"), False),
    "NumericLessThanEquals": (_numeric("le"), False),
    "NumericGreaterThan": (_numeric("gt"), False),
    "NumericGreaterThanEquals": (_numeric("ge"), False),
    "Bool": (_bool_equals, False),
}


def _context_values(context: Mapping[str, ContextValue], key: str) -> list[str] | None:
    lowered = key.lower()
    for name, value in context.items():
        if name.lower() == lowered:
            if isinstance(value, bool):
                return ["true" if value else "false"]
            if isinstance(value, str | int):
                return [str(value)]
            return [str(item) for item in value]
    return None


def _condition_key(operator: str, key: str, policy_values: list[str], context: Mapping[str, ContextValue]) -> bool:
    qualifier, _, name = operator.rpartition(":")
    if qualifier not in ("", "ForAnyValue", "ForAllValues"):
        raise UnsupportedPolicyError(f"unknown set qualifier {qualifier!r} in {operator!r}")
    if_exists = name.endswith("IfExists")
    base = name.removesuffix("IfExists")
    request_values = _context_values(context, key)

    if base == "Null":
        if qualifier or if_exists:
            raise UnsupportedPolicyError(f"{operator} is not a valid operator")
        wants_missing = [value.lower() for value in policy_values] == list(_TRUE)
        return (request_values is None) == wants_missing

    if base not in _OPERATORS:
        raise UnsupportedPolicyError(f"condition operator {operator!r} is not supported")
    matcher, negated = _OPERATORS[base]

    if request_values is None:
        if if_exists or qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return negated

    def single(value: str) -> bool:
        hit = any(matcher(policy_value, value) for policy_value in policy_values)
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        return all(single(value) for value in request_values)
    if qualifier == "ForAnyValue":
        return any(single(value) for value in request_values)
    if len(request_values) != 1:
        raise UnsupportedPolicyError(
            f"{key} has several values in the request: use ForAnyValue:/ForAllValues: with {operator}"
        )
    return single(request_values[0])


def conditions_hold(condition: Mapping[str, Any] | None, context: Mapping[str, ContextValue]) -> bool:
    """True when every operator and key of a ``Condition`` block holds for ``context``."""
    for operator, keys in (condition or {}).items():
        if not isinstance(keys, Mapping):
            raise UnsupportedPolicyError(f"condition {operator!r} must map keys to values")
        for key, raw in keys.items():
            values = [str(value).lower() if isinstance(value, bool) else str(value) for value in _as_list(raw)]
            _check_no_variables(values)
            if not _condition_key(operator, key, values, context):
                return False
    return True


# -- statements ------------------------------------------------------------------------


def _action_matches(patterns: list[str], action: str) -> bool:
    return any(glob_match(pattern, action, ignore_case=True) for pattern in patterns)


def _principal_matches(principal: Any, caller: str | None) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        raise UnsupportedPolicyError(f"Principal must be '*' or a mapping, not {principal!r}")
    if caller is None:
        return False
    for kind, values in principal.items():
        for value in _as_list(values):
            if value == "*":
                return True
            if kind == "AWS":
                root = re.fullmatch(r"(?:arn:[\w-]+:iam::)?(\d{12})(?::root)?", value)
                if root and caller.split(":")[4:5] == [root.group(1)]:
                    return True
            if value == caller:
                return True
    return False


def statement_applies(statement: Mapping[str, Any], request: Request) -> bool:
    """True when the statement's action, resource, principal and conditions all match."""
    known = {
        "Sid",
        "Effect",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Principal",
        "NotPrincipal",
        "Condition",
    }
    unknown = set(statement) - known
    if unknown:
        raise UnsupportedPolicyError(f"unknown statement elements: {', '.join(sorted(unknown))}")
    if ("Action" in statement) == ("NotAction" in statement):
        raise UnsupportedPolicyError("a statement needs exactly one of Action and NotAction")

    if "Action" in statement:
        if not _action_matches(_as_list(statement["Action"]), request.action):
            return False
    elif _action_matches(_as_list(statement["NotAction"]), request.action):
        return False

    if "Resource" in statement or "NotResource" in statement:
        patterns = _as_list(statement.get("Resource", statement.get("NotResource")))
        _check_no_variables(patterns)
        hit = any(arn_match(pattern, request.resource) for pattern in patterns)
        if hit != ("Resource" in statement):
            return False

    if "Principal" in statement and not _principal_matches(statement["Principal"], request.principal):
        return False
    if "NotPrincipal" in statement and _principal_matches(statement["NotPrincipal"], request.principal):
        return False

    return conditions_hold(statement.get("Condition"), request.context)


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statements = _as_list(policy.get("Statement"))
    for statement in statements:
        if not isinstance(statement, Mapping):
            raise UnsupportedPolicyError(f"a statement must be a mapping, not {statement!r}")
        if statement.get("Effect") not in ("Allow", "Deny"):
            raise UnsupportedPolicyError(f"Effect must be Allow or Deny, not {statement.get('Effect')!r}")
    return statements


def explain(policies: Sequence[Mapping[str, Any]], request: Request) -> Explanation:
    """Evaluate ``request`` against ``policies`` and name the deciding statements."""
    allows: list[str] = []
    denies: list[str] = []
    for p_index, policy in enumerate(policies):
        for s_index, statement in enumerate(_statements(policy)):
            if statement_applies(statement, request):
                label = str(statement.get("Sid") or f"policy[{p_index}].Statement[{s_index}]")
                (denies if statement["Effect"] == "Deny" else allows).append(label)
    if denies:
        return Explanation(Decision.EXPLICIT_DENY, tuple(denies))
    if allows:
        return Explanation(Decision.ALLOW, tuple(allows))
    return Explanation(Decision.IMPLICIT_DENY, ())


def evaluate(policies: Sequence[Mapping[str, Any]], request: Request) -> Decision:
    """The decision for ``request``: explicit deny, allow, or implicit deny."""
    return explain(policies, request).decision


def is_allowed(policies: Sequence[Mapping[str, Any]], request: Request) -> bool:
    """True when ``policies`` allow ``request``."""
    return evaluate(policies, request).allowed
