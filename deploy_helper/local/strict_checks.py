"""The per-service checks of strict AWS (see :mod:`deploy_helper.local.strict_aws`).

Each check gets one intercepted call and raises ``AwsRefusal`` where AWS would refuse
it (or returns the answer AWS would give instead of moto's); ``install`` registers them.
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

Trust-policy evaluation: see :mod:`deploy_helper.local.strict_statements`.
"""

from __future__ import annotations

import fnmatch
import json
import re
import secrets
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from deploy_helper.local.server import ADMIN_ROLE
from deploy_helper.local.strict_plumbing import AwsRefusal, _as_list, _LocalReads, _success_response
from deploy_helper.local.strict_statements import (
    _ACCOUNT_ID,
    _IAM_PRINCIPAL_ARN,
    _aws_principals,
    _aws_statement_shape,
    lambda_statement,
    trust_allows,
)

if TYPE_CHECKING:
    from botocore.awsrequest import AWSResponse
    from botocore.model import OperationModel

    from deploy_helper.local.strict_plumbing import _Call

#: Lambda function policy size quota (bytes, not adjustable).
LAMBDA_POLICY_LIMIT = 20_480
#: S3 bucket policy size quota (bytes, counted without whitespace).
S3_POLICY_LIMIT = 20_480
#: KMS key policy document size quota (bytes).
KMS_POLICY_LIMIT = 32_768
#: Longest session for a role assumed with role-chaining credentials (seconds).
CHAINED_SESSION_LIMIT = 3_600

_LAMBDA_FUNCTION = re.compile(
    r"(?:arn:aws[a-zA-Z-]*:lambda:(?P<region>[a-z0-9-]+):)?"
    r"(?:(?P<account>\d{12}):)?(?:function:)?(?P<name>[a-zA-Z0-9-_.]+)"
    r"(?::(?P<qualifier>[a-zA-Z0-9-_$.]+))?"
)
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(?P<account>\d{12}):role/(?:.*/)?(?P<name>[\w+=,.@-]+)")
_KMS_ARN = re.compile(r"arn:aws[a-z-]*:kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):(?P<res>.+)")
_ACCESS_DENIED = "User: {caller} is not authorized to perform: {action} on resource: {resource}"


class _ServiceChecks(_LocalReads):
    """The checks, one method per operation, reading state through ``_LocalReads``."""

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


def _malformed(message: str) -> AwsRefusal:
    return AwsRefusal("MalformedPolicy", 400, message)


def _compact(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
