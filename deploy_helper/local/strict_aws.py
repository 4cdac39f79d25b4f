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

Checks and the AWS behaviour each reproduces:

Lambda ``AddPermission``
  * every string parameter must match the pattern in Lambda's API model (StatementId
    ``[a-zA-Z0-9-_]+``, Action ``lambda:[a-zA-Z]+``/``lambda:*``/``*``, SourceAccount
    12 digits, PrincipalOrgID ``o-[a-z0-9]{10,32}``, ...) -> ``ValidationException``
    400, "1 validation error detected: Value '...' at 'statementId' failed to satisfy
    constraint: Member must satisfy regular expression pattern: ...". (Length limits
    are already enforced by botocore's own parameter validation.)
  * no policies on the ``$LATEST`` qualifier -> ``InvalidParameterValueException`` 400.
  * a StatementId already in the function's policy -> ``ResourceConflictException``
    409 (AddPermission: "the statement ID must be unique").
  * the policy after the change (current statements, account principals normalised to
    ``{"AWS": "arn:aws:iam::ACCOUNT:root"}`` as Lambda stores them, plus the new
    statement in Lambda's stored shape, serialised compactly) longer than 20,480 bytes
    -> ``PolicyLengthExceededException`` 400, "The final policy size (N) is bigger than
    the limit (20480)." (Lambda quotas: function resource-based policy 20 KB, not
    adjustable). Lambda's own count is of its internal form and can come out somewhat
    larger than this compact JSON, so code near the limit must still handle the error.

Lambda ``RemovePermission``: the same model-pattern validation.

Lambda ``RevisionId`` (a stale revision -> ``PreconditionFailedException`` 412) is not
checked here: the revision is the server's state, so the local server keeps it as
Lambda does in its own process (``deploy_helper.local.lambda_revisions``).

S3 ``GetBucketPolicy`` / ``PutBucketPolicy`` / ``DeleteBucketPolicy`` with
``ExpectedBucketOwner``: a bucket that exists but is not the named account's ->
``AccessDenied`` 403, "Access Denied" (S3 checks the owner before anything else; moto
ignores the parameter).

S3 ``PutBucketPolicy`` (all refusals are ``MalformedPolicy`` 400)
  * not a JSON object -> "Policies must be valid JSON and the first byte must be '{'".
  * larger than 20,480 bytes once whitespace is removed -> "Policy exceeds the maximum
    allowed document size." S3's documentation gives the 20 KB limit but documents no
    error code for it; S3's published error-code list has no size-specific code
    (``PolicyTooLarge`` is MinIO's), and S3 reports every bucket-policy validation
    failure as ``MalformedPolicy``, so that is used here. Code that handles the
    refusal should match on ``MalformedPolicy`` and check the size itself first.
  * no ``Statement`` -> "Missing required field Statement"; a statement without
    ``Effect`` / ``Principal`` / ``Action`` / ``Resource`` (or their ``Not`` forms) ->
    "Missing required field ..."; ``Effect`` other than Allow/Deny -> "Invalid effect:
    X"; an action outside the ``s3:`` namespace -> "Policy has invalid action"; a
    resource that is not this bucket or an object in it -> "Policy has invalid
    resource".
  * an AWS principal that is not ``*``, an account id or an IAM/STS ARN, or the ARN of
    an IAM role or user that does not exist in the local server -> "Invalid principal
    in policy". Account principals are accepted for any account.

KMS
  * ``CreateGrant`` with a ``Name`` when the key already has a grant of that name with
    identical parameters (grantee, retiring principal, operations, constraints)
    returns the original GrantId and a fresh grant token instead of creating another
    grant (CreateGrant: "if the grant already exists, the original GrantId is
    returned without creating a new grant").
  * ``PutKeyPolicy`` / ``CreateKey`` with a policy over 32,768 bytes ->
    ``LimitExceededException`` 400 (key policy document size quota, 32 KB); a policy
    that is not a JSON object -> ``MalformedPolicyDocumentException`` 400.
  * ``RetireGrant`` by ``KeyId`` + ``GrantId`` of a grant not on the key ->
    ``NotFoundException`` 400. (``RevokeGrant`` of a missing grant is already refused
    by moto 5.2; the tests keep that in view.)

STS ``AssumeRole`` (the ``OrganizationAccountAccessRole`` role, through which
``LocalAws.admin_session`` reaches every account, is exempt from all of these)
  * model-pattern validation of the string parameters (ExternalId, RoleSessionName,
    SourceIdentity, ...) -> ``ValidationError`` 400.
  * the role must exist in the target account; the role's trust policy must allow the
    caller; a ``sts:ExternalId`` condition must match the request's ExternalId;
    ``SourceIdentity`` needs ``sts:SetSourceIdentity`` and session tags need
    ``sts:TagSession`` in the trust policy -> ``AccessDenied`` 403, "User: <caller
    ARN> is not authorized to perform: sts:AssumeRole on resource: <role ARN>".
  * ``DurationSeconds`` above the role's MaxSessionDuration -> ``ValidationError``
    400; above one hour when the caller is itself an assumed-role session (role
    chaining) -> ``ValidationError`` 400.

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

Resource policies of ECR, SQS, SNS, Secrets Manager and EventBridge: see
:mod:`deploy_helper.local.strict_policies` (their size limits and Secrets Manager's
``BlockPublicPolicy``).

Reads that fail (the function, key or role is missing, moto answers 500) never
produce a refusal: the request then goes to moto, which gives its own answer.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import boto3
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

from deploy_helper.local import strict_policies
from deploy_helper.local.server import ADMIN_ROLE, DEFAULT_ACCOUNT, LOCAL_CONFIG

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from botocore.model import OperationModel

    from deploy_helper.local.server import LocalAws

#: Lambda function policy size quota (bytes, not adjustable).
LAMBDA_POLICY_LIMIT = 20_480
#: S3 bucket policy size quota (bytes, counted without whitespace).
S3_POLICY_LIMIT = 20_480
#: KMS key policy document size quota (bytes).
KMS_POLICY_LIMIT = 32_768
#: Longest session for a role assumed with role-chaining credentials (seconds).
CHAINED_SESSION_LIMIT = 3_600

_PARAMS_KEY = "deploy_helper.strict_aws.params"
_HOOK_ID = "deploy-helper-strict-aws"
_ACCOUNT_ID = re.compile(r"\d{12}")
_IAM_PRINCIPAL_ARN = re.compile(r"arn:aws[a-z-]*:(iam|sts)::(\d{12}):(.+)")
_LAMBDA_FUNCTION = re.compile(
    r"(?:arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):)?"
    r"(?:(?P<account>\d{12}):)?(?:function:)?(?P<name>[a-zA-Z0-9-_.]+)"
    r"(?::(?P<qualifier>[a-zA-Z0-9-_$.]+))?"
)
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(?P<account>\d{12}):role/(?:.*/)?(?P<name>[\w+=,.@-]+)")
_KMS_ARN = re.compile(r"arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):(?P<res>.+)")
_ACCESS_DENIED = "User: {caller} is not authorized to perform: {action} on resource: {resource}"


class AwsRefusal(Exception):
    """A check's verdict: AWS would answer this request with this error."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Caller:
    """Who sent a request, as ``sts:GetCallerIdentity`` reports it."""

    account: str
    arn: str

    @property
    def chained(self) -> bool:
        """True when the caller is itself an assumed-role session."""
        return ":assumed-role/" in self.arn


@dataclass
class _Call:
    """One intercepted API call, with lazy access to the caller's identity."""

    model: OperationModel
    params: dict[str, Any]
    region: str
    url: str
    _identify: Callable[[], Caller | None]
    _caller: Caller | None = field(default=None, init=False)

    def caller(self) -> Caller | None:
        if self._caller is None:
            self._caller = self._identify()
        return self._caller


class _RawBody:
    """The ``raw`` of a synthetic ``AWSResponse``: yields the body once."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def install(session: boto3.Session, local: LocalAws) -> None:
    """Make clients created from ``session`` from now on refuse what AWS refuses.

    ``local`` is the running local AWS whose state the checks read. Installing twice
    on one session has no further effect.
    """
    _StrictAws(local).register(session)


class _StrictAws:
    """The checks and the plumbing that connects them to botocore's events."""

    def __init__(self, local: LocalAws) -> None:
        self._local = local
        self._lock = threading.RLock()
        # One plain session for every client the checks use: it carries no hooks, and
        # its loader reads each service model once.
        self._plain: Any = boto3.Session(region_name="us-east-1")
        base = local.base_session().get_credentials()
        if base is None:
            raise ValueError("LocalAws.base_session() has no credentials")
        self._base_credentials: ReadOnlyCredentials = base.get_frozen_credentials()
        self._clients: dict[tuple[str, str, str | None], Any] = {}
        self._admin_credentials: dict[str, ReadOnlyCredentials] = {}
        self._callers: dict[str, Caller] = {}
        self._busy = threading.local()

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

    # -- plain clients and identities ----------------------------------------
    def _client(self, service: str, region: str, credentials: ReadOnlyCredentials) -> Any:
        """A plain (unhooked) client with ``credentials``, cached by access key."""
        key = (service, region, credentials.access_key)
        with self._lock:  # a boto3 Session is not safe for concurrent client creation
            client = self._clients.get(key)
            if client is None:
                client = self._plain.client(
                    service,
                    endpoint_url=self._local.endpoint,
                    region_name=region,
                    config=LOCAL_CONFIG,
                    aws_access_key_id=credentials.access_key,
                    aws_secret_access_key=credentials.secret_key,
                    aws_session_token=credentials.token,
                )
                self._clients[key] = client
            return client

    def _admin(self, service: str, account: str, region: str) -> Any:
        """A plain client acting as administrator of ``account``."""
        return self._client(service, region, self._admin_of(account))

    def _admin_of(self, account: str) -> ReadOnlyCredentials:
        """Credentials of the harness's administrator role in ``account``.

        Kept across calls, but checked each time: after ``LocalAws.reset`` moto has
        forgotten the key and would silently route it to its default account.
        """
        if account == DEFAULT_ACCOUNT:
            return self._base_credentials
        with self._lock:
            cached = self._admin_credentials.get(account)
        if cached is not None:
            identity = self._client("sts", "us-east-1", cached).get_caller_identity()
            if identity["Account"] == account:
                return cached
            with self._lock:
                for key in [k for k in self._clients if k[2] == cached.access_key]:
                    del self._clients[key]
        sts = self._client("sts", "us-east-1", self._base_credentials)
        issued = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/{ADMIN_ROLE}", RoleSessionName="strict-aws")[
            "Credentials"
        ]
        fresh = ReadOnlyCredentials(issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"])
        with self._lock:
            self._admin_credentials[account] = fresh
        return fresh

    def _identify(self, request_signer: Any) -> Caller | None:
        auth = request_signer.get_auth_instance(
            request_signer.signing_name, request_signer.region_name, signature_version="v4"
        )
        credentials = getattr(auth, "credentials", None)
        if credentials is None:
            return None
        with self._lock:
            cached = self._callers.get(credentials.access_key)
        if cached is not None:
            return cached
        sts = self._client("sts", request_signer.region_name, credentials)
        identity = sts.get_caller_identity()
        caller = Caller(account=identity["Account"], arn=identity["Arn"])
        with self._lock:
            self._callers[credentials.access_key] = caller
        return caller

    def _account_of(self, call: _Call, explicit: str | None) -> str | None:
        if explicit:
            return explicit
        caller = call.caller()
        return caller.account if caller else None

    # -- Lambda --------------------------------------------------------------
    def _lambda_add_permission(self, call: _Call) -> None:
        p = call.params
        _validate_patterns(call.model, p, code="ValidationException")
        target = _LAMBDA_FUNCTION.fullmatch(p["FunctionName"])
        if target is None:
            return None
        qualifier = p.get("Qualifier") or target["qualifier"]
        if qualifier == "$LATEST":
            raise AwsRefusal(
                "InvalidParameterValueException",
                400,
                "We currently do not support adding policies for $LATEST.",
            )
        account = self._account_of(call, target["account"])
        if account is None:
            return None
        region = target["region"] or call.region
        admin = self._admin("lambda", account, region)
        query = {"FunctionName": target["name"], **({"Qualifier": qualifier} if qualifier else {})}
        try:
            current = json.loads(admin.get_policy(**query)["Policy"])
        except ClientError as error:
            if _code(error) != "ResourceNotFoundException":
                return None
            try:
                admin.get_function(**query)
            except ClientError:
                return None  # no such function: moto gives its own answer
            current = {"Version": "2012-10-17", "Id": "default", "Statement": []}
        statements = list(current.get("Statement") or [])
        if any(s.get("Sid") == p["StatementId"] for s in statements):
            raise AwsRefusal(
                "ResourceConflictException",
                409,
                "The statement id (sid) provided already exists. Please provide a new "
                "statement id, or remove the existing statement.",
            )
        resource = f"arn:aws:lambda:{region}:{account}:function:{target['name']}"
        if qualifier:
            resource += f":{qualifier}"
        stored = {
            "Version": current.get("Version", "2012-10-17"),
            "Id": current.get("Id", "default"),
            "Statement": [*map(_aws_statement_shape, statements), lambda_statement(p, resource)],
        }
        size = len(_compact(stored))
        if size > LAMBDA_POLICY_LIMIT:
            raise AwsRefusal(
                "PolicyLengthExceededException",
                400,
                f"The final policy size ({size}) is bigger than the limit ({LAMBDA_POLICY_LIMIT}).",
            )
        return None

    def _lambda_remove_permission(self, call: _Call) -> None:
        _validate_patterns(call.model, call.params, code="ValidationException")

    # -- S3 ------------------------------------------------------------------
    def _s3_expected_owner(self, call: _Call) -> None:
        owner = call.params.get("ExpectedBucketOwner")
        if not owner:
            return
        bucket = call.params["Bucket"]
        admin = self._admin("s3", owner, call.region)
        if any(b["Name"] == bucket for b in admin.list_buckets().get("Buckets", [])):
            return
        try:
            admin.head_bucket(Bucket=bucket)  # moto: any account sees any bucket
        except ClientError:
            return  # no such bucket: moto gives its own answer
        raise AwsRefusal("AccessDenied", 403, "Access Denied")

    def _s3_put_bucket_policy(self, call: _Call) -> None:
        self._s3_expected_owner(call)
        bucket = call.params["Bucket"]
        text = call.params["Policy"]
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if not isinstance(document, dict) or not text.startswith("{"):
            raise _malformed("Policies must be valid JSON and the first byte must be '{'")
        if len(_compact(document)) > S3_POLICY_LIMIT:
            raise _malformed("Policy exceeds the maximum allowed document size.")
        statements = document.get("Statement")
        if not statements:
            raise _malformed("Missing required field Statement")
        for statement in statements if isinstance(statements, list) else [statements]:
            if not isinstance(statement, dict):
                raise _malformed("Policies must be valid JSON and the first byte must be '{'")
            self._s3_check_statement(statement, bucket)

    def _s3_check_statement(self, statement: dict[str, Any], bucket: str) -> None:
        if "Effect" not in statement:
            raise _malformed("Missing required field Effect")
        for element in ("Principal", "Action", "Resource"):
            if element not in statement and f"Not{element}" not in statement:
                raise _malformed(f"Missing required field {element}")
        if statement["Effect"] not in ("Allow", "Deny"):
            raise _malformed(f"Invalid effect: {statement['Effect']}")
        for action in _as_list(statement.get("Action", statement.get("NotAction"))):
            if not isinstance(action, str) or not (action == "*" or action.lower().startswith("s3:")):
                raise _malformed("Policy has invalid action")
        for resource in _as_list(statement.get("Resource", statement.get("NotResource"))):
            if not _s3_resource_in_bucket(resource, bucket):
                raise _malformed("Policy has invalid resource")
        principal = statement.get("Principal", statement.get("NotPrincipal"))
        if isinstance(principal, str) and principal != "*":
            raise _malformed("Invalid principal in policy")
        for value in _aws_principals(principal):
            if not self._principal_exists(value):
                raise _malformed("Invalid principal in policy")

    def _principal_exists(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if value == "*" or _ACCOUNT_ID.fullmatch(value):
            return True
        match = _IAM_PRINCIPAL_ARN.fullmatch(value)
        if match is None:
            return False
        service, account, resource = match.groups()
        kind, _, path_name = resource.partition("/")
        if service == "iam" and kind == "root":
            return True
        if service == "sts":
            return kind == "assumed-role" and "/" in path_name
        if kind not in ("role", "user") or not path_name:
            return False
        iam = self._admin("iam", account, "us-east-1")
        name = path_name.rsplit("/", 1)[-1]
        try:
            if kind == "role":
                found = iam.get_role(RoleName=name)["Role"]["Arn"]
            else:
                found = iam.get_user(UserName=name)["User"]["Arn"]
        except ClientError:
            return False
        return bool(found == value)

    # -- KMS -----------------------------------------------------------------
    def _kms_key(self, call: _Call) -> tuple[Any, str] | None:
        """The admin client of the key's account and the key id to use with it."""
        key_id = call.params.get("KeyId")
        if not key_id:
            return None
        match = _KMS_ARN.fullmatch(key_id)
        if match:
            account, region = match["account"], match["region"]
            key_id = match["res"].removeprefix("key/")
        else:
            caller = call.caller()
            if caller is None:
                return None
            account, region = caller.account, call.region
        return self._admin("kms", account, region), key_id

    def _kms_grants(self, client: Any, key_id: str) -> list[dict[str, Any]] | None:
        grants: list[dict[str, Any]] = []
        marker: dict[str, str] = {}
        try:
            while True:
                page = client.list_grants(KeyId=key_id, **marker)
                grants.extend(page.get("Grants", []))
                if not page.get("Truncated") or not page.get("NextMarker"):
                    return grants
                marker = {"Marker": page["NextMarker"]}
        except ClientError:
            return None

    def _kms_create_grant(self, call: _Call) -> tuple[AWSResponse, dict[str, Any]] | None:
        p = call.params
        if not p.get("Name") or p.get("DryRun"):
            return None
        key = self._kms_key(call)
        if key is None:
            return None
        grants = self._kms_grants(*key)
        wanted = _grant_identity(p)
        for grant in grants or []:
            if _grant_identity(grant) == wanted:
                body = {"GrantToken": secrets.token_urlsafe(48), "GrantId": grant["GrantId"]}
                return _success_response(call, body)
        return None

    def _kms_put_key_policy(self, call: _Call) -> None:
        text = call.params.get("Policy")
        if text is None:
            return
        size = len(text.encode("utf-8"))
        if size > KMS_POLICY_LIMIT:
            raise AwsRefusal(
                "LimitExceededException",
                400,
                f"The key policy is {size} bytes; a key policy document cannot exceed {KMS_POLICY_LIMIT} bytes.",
            )
        try:
            document = json.loads(text)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise AwsRefusal(
                "MalformedPolicyDocumentException",
                400,
                "The key policy is not a syntactically valid JSON policy document.",
            )

    def _kms_retire_grant(self, call: _Call) -> None:
        grant_id = call.params.get("GrantId")
        if not grant_id or not call.params.get("KeyId"):
            return None  # retiring by grant token: not checked
        key = self._kms_key(call)
        if key is None:
            return None
        grants = self._kms_grants(*key)
        if grants is not None and all(g.get("GrantId") != grant_id for g in grants):
            raise AwsRefusal("NotFoundException", 400, f"Grant ID {grant_id} not found")
        return None

    # -- STS -----------------------------------------------------------------
    def _sts_assume_role(self, call: _Call) -> None:
        p = call.params
        role = _ROLE_ARN.fullmatch(p["RoleArn"])
        if role is None or role["name"] == ADMIN_ROLE:
            return None
        _validate_patterns(call.model, p, code="ValidationError")
        caller = call.caller()
        if caller is None:
            return None
        denied = AwsRefusal(
            "AccessDenied",
            403,
            _ACCESS_DENIED.format(caller=caller.arn, action="sts:AssumeRole", resource=p["RoleArn"]),
        )
        iam = self._admin("iam", role["account"], "us-east-1")
        try:
            found = iam.get_role(RoleName=role["name"])["Role"]
        except ClientError as error:
            if _code(error) == "NoSuchEntity":
                raise denied from None
            return None
        trust = found.get("AssumeRolePolicyDocument") or {}
        if isinstance(trust, str):
            trust = json.loads(trust)
        external_id = p.get("ExternalId")
        if not trust_allows(trust, "sts:AssumeRole", caller, external_id):
            raise denied
        if p.get("SourceIdentity") and not trust_allows(trust, "sts:SetSourceIdentity", caller, external_id):
            raise denied
        if (p.get("Tags") or p.get("TransitiveTagKeys")) and not trust_allows(
            trust, "sts:TagSession", caller, external_id
        ):
            raise denied
        duration = p.get("DurationSeconds")
        if duration is not None:
            if duration > int(found.get("MaxSessionDuration", 3600)):
                raise AwsRefusal(
                    "ValidationError",
                    400,
                    "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
                )
            if caller.chained and duration > CHAINED_SESSION_LIMIT:
                raise AwsRefusal(
                    "ValidationError",
                    400,
                    "The requested DurationSeconds exceeds the 1 hour session limit for roles "
                    "assumed by role chaining.",
                )
        return None


# -- policy shapes and evaluation ---------------------------------------------
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


def _s3_resource_in_bucket(resource: Any, bucket: str) -> bool:
    if not isinstance(resource, str) or not resource.startswith("arn:aws:s3:::"):
        return False
    bucket_part = resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
    return fnmatch.fnmatchcase(bucket, bucket_part)


def _grant_identity(grant: dict[str, Any]) -> tuple[Any, ...]:
    return (
        grant.get("Name"),
        grant.get("GranteePrincipal"),
        grant.get("RetiringPrincipal"),
        tuple(sorted(grant.get("Operations") or [])),
        json.dumps(grant.get("Constraints") or {}, sort_keys=True),
    )


def _validate_patterns(model: OperationModel, params: dict[str, Any], *, code: str) -> None:
    """Refuse string parameters that do not match their pattern in the API model."""
    problems = []
    members = model.input_shape.members if model.input_shape is not None else {}
    for name, shape in members.items():
        value = params.get(name)
        pattern = shape.metadata.get("pattern")
        if not isinstance(value, str) or not pattern:
            continue
        try:
            ok = re.fullmatch(pattern, value) is not None
        except re.error:
            continue  # a Java-only construct: leave it to the service
        if not ok:
            member = name[0].lower() + name[1:]
            problems.append(
                f"Value '{value}' at '{member}' failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: {pattern}"
            )
    if problems:
        count = len(problems)
        noun = "error" if count == 1 else "errors"
        raise AwsRefusal(code, 400, f"{count} validation {noun} detected: " + "; ".join(problems))


# -- responses ----------------------------------------------------------------
def _error_response(call: _Call, refusal: AwsRefusal) -> tuple[AWSResponse, dict[str, Any]]:
    protocol = call.model.service_model.protocol
    error: dict[str, Any] = {"Code": refusal.code, "Message": refusal.message}
    if protocol in ("query", "ec2"):
        error["Type"] = "Sender"
    parsed: dict[str, Any] = {"Error": error}
    if protocol in ("json", "rest-json"):
        parsed["message"] = refusal.message
    return _response(call, refusal.status, parsed, {"__type": refusal.code, **error})


def _success_response(call: _Call, body: dict[str, Any]) -> tuple[AWSResponse, dict[str, Any]]:
    return _response(call, 200, dict(body), body)


def _response(
    call: _Call, status: int, parsed: dict[str, Any], body: dict[str, Any]
) -> tuple[AWSResponse, dict[str, Any]]:
    request_id = str(uuid.uuid4())
    content = json.dumps(body).encode()
    headers = {
        "x-amzn-requestid": request_id,
        "content-type": "application/json",
        "content-length": str(len(content)),
    }
    parsed["ResponseMetadata"] = {
        "RequestId": request_id,
        "HTTPStatusCode": status,
        "HTTPHeaders": dict(headers),
        "RetryAttempts": 0,
    }
    response = AWSResponse(call.url, status, HTTPHeaders.from_dict(headers), _RawBody(content))
    return response, parsed


# -- small helpers ------------------------------------------------------------
def _params_only(check: Callable[[dict[str, Any]], None]) -> Callable[[_Call], None]:
    """A check that needs only the call's parameters (``strict_policies``)."""

    def run(call: _Call) -> None:
        check(call.params)

    return run


def _remember_params(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    context[_PARAMS_KEY] = copy.deepcopy(params)


def _malformed(message: str) -> AwsRefusal:
    return AwsRefusal("MalformedPolicy", 400, message)


def _compact(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
