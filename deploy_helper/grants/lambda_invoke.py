"""``lambda-invoke``: a statement in a Lambda function's resource policy.

Typical use: a cross-account API Gateway authorizer. The token-service
account owns the function; each service account's API needs permission to
invoke it, bound to that API with ``SourceArn``/``SourceAccount``.

Made with ``AddPermission``/``RemovePermission`` — each call changes one
statement atomically on the service side, so concurrent writers cannot lose
each other's statements; a racing duplicate surfaces as
``ResourceConflictException`` and is resolved by reading again.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from botocore.exceptions import ClientError
from pydantic import model_validator

from deploy_helper.exceptions import PolicySizeError
from deploy_helper.grants.base import Allowed, GrantKind, GrantSpec, ItemPlan, Operation, ResourcePlan, in_parallel
from deploy_helper.identifiers import (
    ACCOUNT_RE,
    LAMBDA_ARN_RE,
    AccountId,
    LambdaFunctionArn,
    OrgId,
    RoleArn,
    ServicePrincipal,
    SourceArn,
)
from deploy_helper.policydoc import compact_size, empty_policy, find_statement, load_policy, normalize_principal

if TYPE_CHECKING:
    from collections.abc import Sequence

INVOKE_ACTION = "lambda:InvokeFunction"
LAMBDA_POLICY_LIMIT = 20 * 1024


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
        "lambda:AddPermission",
        "lambda:RemovePermission",
    )
    size_limit: ClassVar[int | None] = LAMBDA_POLICY_LIMIT
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
    def read(self, client: Any, resource: str) -> dict[str, Any]:
        name, qualifier = _name_and_qualifier(resource)
        kwargs: dict[str, Any] = {"FunctionName": name}
        if qualifier:
            kwargs["Qualifier"] = qualifier
        try:
            response = client.get_policy(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceNotFoundException" and "policy" in str(exc).lower():
                return empty_policy()
            raise
        return load_policy(response.get("Policy"))

    def plan(
        self,
        state: dict[str, Any],
        resource: str,
        items: Sequence[tuple[LambdaInvokeGrant, Operation]],
        allowed: Sequence[Allowed] | None = None,
    ) -> ResourcePlan:
        before = json.loads(json.dumps(state))
        after = json.loads(json.dumps(state))
        plans: list[ItemPlan] = []
        writes: list[tuple[str, LambdaInvokeGrant]] = []
        for spec, operation in items:
            sid = self.grant_id(spec)
            current = find_statement(after, sid)
            if operation == "apply":
                if current is not None and self._same(current, spec):
                    plans.append(ItemPlan(spec, operation, "unchanged", "permission already present"))
                    continue
                candidate = [s for s in after["Statement"] if s.get("Sid") != sid] + [self.statement(spec)]
                size = compact_size({**after, "Statement": [_as_lambda_stores(s) for s in candidate]})
                if size > LAMBDA_POLICY_LIMIT:
                    plans.append(
                        ItemPlan(
                            spec,
                            operation,
                            "failed",
                            PolicySizeError(
                                f"the function policy of {resource} would grow to {size} bytes, over Lambda's "
                                f"{LAMBDA_POLICY_LIMIT}-byte limit; bind principals by organization "
                                "(principal_org_id) or remove unused permissions"
                            ).message,
                        )
                    )
                    continue
                if current is not None:
                    writes.append(("remove", spec))
                writes.append(("add", spec))
                after["Statement"] = candidate
                plans.append(ItemPlan(spec, operation, "applied"))
            else:
                if current is None:
                    plans.append(ItemPlan(spec, operation, "absent", "permission not present"))
                    continue
                writes.append(("remove", spec))
                after["Statement"] = [s for s in after["Statement"] if s.get("Sid") != sid]
                plans.append(ItemPlan(spec, operation, "revoked"))
        return ResourcePlan(resource, before, after, plans, writes, state)

    def write(self, client: Any, plan: ResourcePlan) -> None:
        """One call per permission; permissions with different ids are sent concurrently.

        Each AddPermission/RemovePermission is atomic in Lambda, so concurrent calls
        cannot lose a statement; the calls for one statement id (remove, then add)
        stay in order.
        """
        name, qualifier = _name_and_qualifier(plan.resource)
        by_sid: dict[str, list[tuple[str, LambdaInvokeGrant]]] = {}
        for op, spec in plan.writes:
            by_sid.setdefault(self.grant_id(spec), []).append((op, spec))

        def send(ops: list[tuple[str, LambdaInvokeGrant]]) -> None:
            for op, spec in ops:
                self._send(client, name, qualifier, op, spec)

        in_parallel([functools.partial(send, ops) for ops in by_sid.values()])

    def _send(self, client: Any, name: str, qualifier: str | None, op: str, spec: LambdaInvokeGrant) -> None:
        base: dict[str, Any] = {"FunctionName": name, "StatementId": self.grant_id(spec)}
        if qualifier:
            base["Qualifier"] = qualifier
        if op == "remove":
            try:
                client.remove_permission(**base)
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                    raise
            return
        kwargs = {**base, "Action": INVOKE_ACTION, "Principal": spec.principal}
        if spec.source_arn:
            kwargs["SourceArn"] = spec.source_arn
        if spec.source_account:
            kwargs["SourceAccount"] = spec.source_account
        if spec.principal_org_id:
            kwargs["PrincipalOrgID"] = spec.principal_org_id
        try:
            client.add_permission(**kwargs)
        except ClientError as exc:
            # A concurrent request added the same statement first: same Sid, same content.
            if exc.response["Error"]["Code"] != "ResourceConflictException":
                raise

    def present(self, state: dict[str, Any], spec: LambdaInvokeGrant) -> bool:
        current = find_statement(state, self.grant_id(spec))
        return current is not None and self._same(current, spec)

    def _same(self, current: dict[str, Any], spec: LambdaInvokeGrant) -> bool:
        desired = self.statement(spec)
        return normalize_principal(current.get("Principal")) == normalize_principal(
            desired["Principal"]
        ) and _conditions(current) == _conditions(desired)


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
