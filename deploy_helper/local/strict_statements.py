"""Policy statements for the strict-AWS checks (see :mod:`deploy_helper.local.strict_aws`).

The statement Lambda stores for an ``AddPermission`` (principals normalised as Lambda
stores them), and the trust-policy evaluation the STS ``AssumeRole`` checks use.

Trust-policy evaluation is deliberately small and explicit. It evaluates ``Allow`` and
``Deny`` statements whose ``Action`` (string or list; ``*`` and ``sts:*`` included)
names the needed action; ``Principal`` ``*`` or ``{"AWS": string | list}`` where an
entry is ``*``, an account id, an account root ARN (any principal of that account), a
role ARN (sessions of that role) or a user ARN; and ``StringEquals`` / ``StringLike``
conditions on ``sts:ExternalId``. It does NOT evaluate: ``NotPrincipal``,
``NotAction``, service / federated / canonical-user principals (they never match a
caller here), any other condition key or operator (ignored, i.e. treated as
satisfied), the caller's identity-based policies, permission boundaries, SCPs or
session policies.
"""

from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING, Any

from deploy_helper.local.strict_plumbing import _as_list

if TYPE_CHECKING:
    from deploy_helper.local.strict_plumbing import Caller

_ACCOUNT_ID = re.compile(r"\d{12}")
_IAM_PRINCIPAL_ARN = re.compile(r"arn:aws[a-z-]*:(iam|sts)::(\d{12}):(.+)")


def lambda_principal(principal: str) -> str | dict[str, str]:
    """The ``Principal`` element Lambda stores for an AddPermission ``Principal``."""
    if principal == "*":
        return "*"
    if _ACCOUNT_ID.fullmatch(principal):
        return {"AWS": f"arn:aws:iam::{principal}:root"}
    if principal.startswith("arn:"):
        return {"AWS": principal}
    return {"Service": principal}


def lambda_statement(params: dict[str, Any], resource: str) -> dict[str, Any]:
    """The statement Lambda stores for AddPermission ``params`` on ``resource``."""
    statement: dict[str, Any] = {
        "Sid": params["StatementId"],
        "Effect": "Allow",
        "Principal": lambda_principal(params["Principal"]),
        "Action": params["Action"],
        "Resource": resource,
    }
    condition: dict[str, dict[str, str]] = {}
    if params.get("SourceArn"):
        condition.setdefault("ArnLike", {})["AWS:SourceArn"] = params["SourceArn"]
    equals = {
        "AWS:SourceAccount": params.get("SourceAccount"),
        "aws:PrincipalOrgID": params.get("PrincipalOrgID"),
        "lambda:EventSourceToken": params.get("EventSourceToken"),
        "lambda:FunctionUrlAuthType": params.get("FunctionUrlAuthType"),
    }
    for key, value in equals.items():
        if value:
            condition.setdefault("StringEquals", {})[key] = value
    if params.get("InvokedViaFunctionUrl"):
        condition.setdefault("Bool", {})["lambda:InvokedViaFunctionUrl"] = "true"
    if condition:
        statement["Condition"] = condition
    return statement


def _aws_statement_shape(statement: dict[str, Any]) -> dict[str, Any]:
    """A stored statement with its principal in AWS's shape (moto keeps bare ids)."""
    principal = statement.get("Principal")
    if isinstance(principal, str):
        return {**statement, "Principal": lambda_principal(principal)}
    if isinstance(principal, dict) and "AWS" in principal:
        values = [
            f"arn:aws:iam::{v}:root" if isinstance(v, str) and _ACCOUNT_ID.fullmatch(v) else v
            for v in _as_list(principal["AWS"])
        ]
        aws = values[0] if len(values) == 1 else values
        return {**statement, "Principal": {**principal, "AWS": aws}}
    return statement


def trust_allows(trust: dict[str, Any], action: str, caller: Caller, external_id: str | None) -> bool:
    """Whether the trust policy lets ``caller`` perform ``action`` (see module docstring)."""
    allowed = False
    for statement in _as_list(trust.get("Statement")):
        if not isinstance(statement, dict) or not _names_action(statement.get("Action"), action):
            continue
        if not _principal_matches(statement.get("Principal"), caller):
            continue
        if not _external_id_matches(statement.get("Condition") or {}, external_id):
            continue
        if statement.get("Effect") == "Deny":
            return False
        allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def _names_action(actions: Any, action: str) -> bool:
    wanted = action.lower()
    return any(isinstance(a, str) and fnmatch.fnmatchcase(wanted, a.lower()) for a in _as_list(actions))


def _principal_matches(principal: Any, caller: Caller) -> bool:
    if principal == "*":
        return True
    for value in _aws_principals(principal):
        if value in ("*", caller.account, f"arn:aws:iam::{caller.account}:root"):
            return True
        match = _IAM_PRINCIPAL_ARN.fullmatch(value) if isinstance(value, str) else None
        if match is None or match[2] != caller.account:
            continue
        kind, _, path_name = match[3].partition("/")
        name = path_name.rsplit("/", 1)[-1]
        session_of = f"arn:aws:sts::{caller.account}:assumed-role/{name}/"
        if kind == "role" and caller.arn.startswith(session_of):
            return True
        if kind == "user" and caller.arn.endswith(f":user/{name}"):
            return True
    return False


def _external_id_matches(condition: dict[str, Any], external_id: str | None) -> bool:
    for operator, clauses in condition.items():
        if operator not in ("StringEquals", "StringLike") or not isinstance(clauses, dict):
            continue  # not evaluated: treated as satisfied
        for key, values in clauses.items():
            if key.lower() != "sts:externalid":
                continue
            if external_id is None:
                return False
            if operator == "StringEquals":
                ok = external_id in _as_list(values)
            else:
                ok = any(fnmatch.fnmatchcase(external_id, str(v)) for v in _as_list(values))
            if not ok:
                return False
    return True


def _aws_principals(principal: Any) -> list[Any]:
    if principal == "*":
        return ["*"]
    if isinstance(principal, dict):
        return _as_list(principal.get("AWS"))
    return []
