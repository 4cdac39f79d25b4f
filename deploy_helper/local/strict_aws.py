"""AWS's documented refusals, added on top of moto through botocore event hooks.

moto accepts many requests that AWS refuses (see ``AWS-NOTES.md``). Code that must
cope with those refusals would pass its tests falsely against plain moto, so
``install(session, local)`` registers hooks on a boto3 Session: every client created
*afterwards* from that session (also one built with explicit assumed-role
credentials) checks the request against the current state of the local server and,
where AWS would refuse it, fails with the error AWS returns -- same error code, HTTP
status and a message in AWS's words -- without sending anything to moto. Requests
that pass the checks go to moto unchanged.

How: a ``before-parameter-build`` hook keeps a copy of the call's parameters in the
request context; a ``before-call`` hook runs the check. A refusal uses botocore's
``before-call`` short-circuit: a handler that returns ``(http_response, parsed)``
replaces the HTTP exchange, and botocore then raises ``client.exceptions.<Code>``
(the modeled class where the service models the code) exactly as for a real response.
The checks read state through separate plain clients acting as the harness's
administrator (``OrganizationAccountAccessRole``, as ``LocalAws.admin_session`` does)
of the right account, and find the caller's account with ``sts:GetCallerIdentity`` on
a plain client with the caller's credentials (cached by access key id), so they never
pass through these hooks themselves.

The pieces, each in its own module:

* :mod:`deploy_helper.local.strict_checks`: the per-service checks (Lambda, S3, KMS,
  STS) and the AWS behaviour each reproduces;
* :mod:`deploy_helper.local.strict_statements`: policy statements in the shape AWS
  stores them, and the small trust-policy evaluation the STS checks use;
* :mod:`deploy_helper.local.strict_plumbing`: what the checks share -- the
  intercepted call, the caller, the refusal, the plain clients that read the local
  server's state, and the synthetic responses;
* this module: ``install`` and the botocore hooks that connect the checks to a session.

Resource policies of ECR, SQS, SNS, Secrets Manager and EventBridge: see
:mod:`deploy_helper.local.strict_policies` (their size limits and Secrets Manager's
``BlockPublicPolicy``).

Reads that fail (the function, key or role is missing, moto answers 500) never
produce a refusal: the request then goes to moto, which gives its own answer.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

from deploy_helper.local import strict_policies
from deploy_helper.local.strict_checks import (
    CHAINED_SESSION_LIMIT,
    KMS_POLICY_LIMIT,
    LAMBDA_POLICY_LIMIT,
    S3_POLICY_LIMIT,
    _ServiceChecks,
)
from deploy_helper.local.strict_plumbing import AwsRefusal, Caller, _Call, _error_response
from deploy_helper.local.strict_statements import lambda_principal, lambda_statement, trust_allows

if TYPE_CHECKING:
    from collections.abc import Callable

    import boto3
    from botocore.awsrequest import AWSResponse
    from botocore.model import OperationModel

    from deploy_helper.local.server import LocalAws

__all__ = [
    "CHAINED_SESSION_LIMIT",
    "KMS_POLICY_LIMIT",
    "LAMBDA_POLICY_LIMIT",
    "S3_POLICY_LIMIT",
    "AwsRefusal",
    "Caller",
    "install",
    "lambda_principal",
    "lambda_statement",
    "trust_allows",
]

_PARAMS_KEY = "deploy_helper.strict_aws.params"
_HOOK_ID = "deploy-helper-strict-aws"


def install(session: boto3.Session, local: LocalAws) -> None:
    """Make clients created from ``session`` from now on refuse what AWS refuses.

    ``local`` is the running local AWS whose state the checks read. Installing twice
    on one session has no further effect.
    """
    _StrictAws(local).register(session)


class _StrictAws(_ServiceChecks):
    """The checks and the plumbing that connects them to botocore's events."""

    # -- registration --------------------------------------------------------
    def register(self, session: boto3.Session) -> None:
        checks: dict[str, Callable[[_Call], tuple[AWSResponse, dict[str, Any]] | None]] = {
            "lambda.AddPermission": self._lambda_add_permission,
            "lambda.RemovePermission": self._lambda_remove_permission,
            "s3.GetBucketPolicy": self._s3_expected_owner,
            "s3.PutBucketPolicy": self._s3_put_bucket_policy,
            "s3.DeleteBucketPolicy": self._s3_expected_owner,
            "kms.CreateGrant": self._kms_create_grant,
            "kms.PutKeyPolicy": self._kms_put_key_policy,
            "kms.CreateKey": self._kms_put_key_policy,
            "kms.RetireGrant": self._kms_retire_grant,
            "sts.AssumeRole": self._sts_assume_role,
        }
        for operation, policy_check in strict_policies.checks(AwsRefusal).items():
            checks[operation] = _params_only(policy_check)
        for operation, check in checks.items():
            session.events.register(
                f"before-parameter-build.{operation}",
                _remember_params,
                unique_id=f"{_HOOK_ID}-params-{operation}",
            )
            # A before-call handler may return a response (botocore's short-circuit);
            # the stubs type every handler as returning None.
            handler = cast("Callable[..., None]", self._hook(check))
            session.events.register(f"before-call.{operation}", handler, unique_id=f"{_HOOK_ID}-check-{operation}")

    def _hook(
        self, check: Callable[[_Call], tuple[AWSResponse, dict[str, Any]] | None]
    ) -> Callable[..., tuple[AWSResponse, dict[str, Any]] | None]:
        def before_call(
            model: OperationModel,
            params: dict[str, Any],
            request_signer: Any,
            context: dict[str, Any],
            **_: Any,
        ) -> tuple[AWSResponse, dict[str, Any]] | None:
            api_params = context.get(_PARAMS_KEY)
            if api_params is None or getattr(self._busy, "active", False):
                return None
            call = _Call(
                model=model,
                params=api_params,
                region=context.get("client_region") or "us-east-1",
                url=params.get("url", ""),
                _identify=lambda: self._identify(request_signer),
            )
            self._busy.active = True
            try:
                return check(call)
            except AwsRefusal as refusal:
                return _error_response(call, refusal)
            finally:
                self._busy.active = False

        return before_call


# -- small helpers ------------------------------------------------------------
def _params_only(check: Callable[[dict[str, Any]], None]) -> Callable[[_Call], None]:
    """A check that needs only the call's parameters (``strict_policies``)."""

    def run(call: _Call) -> None:
        check(call.params)

    return run


def _remember_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    context[_PARAMS_KEY] = copy.deepcopy(params)
