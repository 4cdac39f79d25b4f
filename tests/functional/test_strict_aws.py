"""AWS's documented refusals on top of moto (deploy_helper.local.strict_aws).

Each check is shown twice: the hooked session refuses the request the way AWS does,
and the same request through a plain client is accepted by moto -- so the hook,
not moto, is what makes the test see AWS's behaviour.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import _aws
import boto3
import pytest
from _aws import admin_creds, keys, plain_client
from botocore.exceptions import ClientError

from deploy_helper.local import strict_aws
from deploy_helper.local.server import DEFAULT_ACCOUNT, LOCAL_CONFIG, LocalAws

TOKEN = "222222222222"  # owns the function, the bucket, the key and the roles
SERVICE = "333333333333"
STRANGER = "444444444444"
FUNCTION = "token-authorizer"
BUCKET = "artifact-bucket-local"


#: The module's LocalAws server, reset for each test (see _aws).
server, base_creds, aws = _aws.server, _aws.base_creds, _aws.aws


@pytest.fixture(scope="module")
def strict(server: LocalAws) -> boto3.Session:
    """A session with the strict checks; its clients act in the default account.

    One per module: the checks follow ``reset`` (they re-read state on every call).
    """
    session = server.base_session()
    strict_aws.install(session, server)
    return session


def plain(aws: LocalAws, service: str, account: str = DEFAULT_ACCOUNT) -> Any:
    """A client without the hooks, acting as administrator of ``account``."""
    return plain_client(aws, service, account, LOCAL_CONFIG)


def hooked(session: boto3.Session, aws: LocalAws, service: str, creds: dict[str, str] | None = None) -> Any:
    """A client of ``session`` (default account unless ``creds`` are given)."""
    extra = keys(creds) if creds is not None else {}
    return session.client(service, endpoint_url=aws.endpoint, config=LOCAL_CONFIG, **extra)


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    response = excinfo.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def make_function(aws: LocalAws) -> None:
    iam = plain(aws, "iam", TOKEN)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName="authorizer-exec", AssumeRolePolicyDocument=json.dumps(trust))
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("index.py", "def handler(event, context):\n    return {}\n")
    plain(aws, "lambda", TOKEN).create_function(
        FunctionName=FUNCTION,
        Runtime="python3.12",
        Role=role["Role"]["Arn"],
        Handler="index.handler",
        Code={"ZipFile": code.getvalue()},
    )


def statements(aws: LocalAws) -> list[dict[str, Any]]:
    try:
        policy = plain(aws, "lambda", TOKEN).get_policy(FunctionName=FUNCTION)["Policy"]
    except ClientError:
        return []
    return list(json.loads(policy)["Statement"])


def compact_size(document: Any) -> int:
    return len(json.dumps(document, separators=(",", ":")).encode())


INVOKE = {"Action": "lambda:InvokeFunction", "Principal": SERVICE}


# -- Lambda AddPermission -----------------------------------------------------
def test_duplicate_statement_id_is_a_conflict(aws: LocalAws, strict: boto3.Session) -> None:
    make_function(aws)
    lam = hooked(strict, aws, "lambda", admin_creds(aws, TOKEN))
    lam.add_permission(FunctionName=FUNCTION, StatementId="dh-authorizer", **INVOKE)

    with pytest.raises(lam.exceptions.ResourceConflictException) as refused:
        lam.add_permission(FunctionName=FUNCTION, StatementId="dh-authorizer", **INVOKE)

    code, status, message = error_of(refused)
    assert (code, status) == ("ResourceConflictException", 409)
    assert "statement id (sid) provided already exists" in message
    assert [s["Sid"] for s in statements(aws)] == ["dh-authorizer"]
    # moto alone takes the duplicate
    plain(aws, "lambda", TOKEN).add_permission(FunctionName=FUNCTION, StatementId="dh-authorizer", **INVOKE)
    assert [s["Sid"] for s in statements(aws)] == ["dh-authorizer", "dh-authorizer"]


@pytest.mark.parametrize(
    ("field", "value", "member"),
    [
        ("StatementId", "bad id!", "statementId"),
        ("StatementId", 'x"}],"Effect":"Allow', "statementId"),
        ("Action", "s3:GetObject", "action"),
        ("SourceAccount", "12345", "sourceAccount"),
    ],
)
def test_parameters_must_match_the_model_patterns(
    aws: LocalAws, strict: boto3.Session, field: str, value: str, member: str
) -> None:
    make_function(aws)
    params = {"FunctionName": FUNCTION, "StatementId": "ok-id", **INVOKE, field: value}
    lam = hooked(strict, aws, "lambda", admin_creds(aws, TOKEN))

    with pytest.raises(ClientError) as refused:
        lam.add_permission(**params)

    code, status, message = error_of(refused)
    assert (code, status) == ("ValidationException", 400)
    assert message.startswith("1 validation error detected: ")
    assert f"at '{member}' failed to satisfy constraint" in message
    assert statements(aws) == []
    plain(aws, "lambda", TOKEN).add_permission(**params)
    assert len(statements(aws)) == 1


def test_remove_permission_statement_id_must_match_the_pattern(aws: LocalAws, strict: boto3.Session) -> None:
    make_function(aws)
    plain(aws, "lambda", TOKEN).add_permission(FunctionName=FUNCTION, StatementId="dh-vé", **INVOKE)
    lam = hooked(strict, aws, "lambda", admin_creds(aws, TOKEN))

    with pytest.raises(ClientError) as refused:
        lam.remove_permission(FunctionName=FUNCTION, StatementId="dh-vé")

    code, status, message = error_of(refused)
    assert (code, status) == ("ValidationException", 400)
    assert "at 'statementId' failed to satisfy constraint" in message
    # moto took the id on AddPermission (see above); the refusal left the policy alone
    assert [s["Sid"] for s in statements(aws)] == ["dh-vé"]


def test_no_policies_on_latest(aws: LocalAws, strict: boto3.Session) -> None:
    make_function(aws)
    lam = hooked(strict, aws, "lambda", admin_creds(aws, TOKEN))
    params = {"FunctionName": FUNCTION, "StatementId": "latest", "Qualifier": "$LATEST", **INVOKE}

    with pytest.raises(lam.exceptions.InvalidParameterValueException) as refused:
        lam.add_permission(**params)

    assert error_of(refused)[:2] == ("InvalidParameterValueException", 400)
    plain(aws, "lambda", TOKEN).add_permission(**params)  # moto accepts it


def test_function_policy_size_counts_account_principals_as_aws_stores_them(
    aws: LocalAws, strict: boto3.Session
) -> None:
    make_function(aws)
    moto = plain(aws, "lambda", TOKEN)
    for n in range(90):
        moto.add_permission(FunctionName=FUNCTION, StatementId=f"filler-{n:03d}-" + "x" * 30, **INVOKE)
    stored = json.loads(moto.get_policy(FunctionName=FUNCTION)["Policy"])
    new_moto_shape = {**stored["Statement"][0], "Sid": "one-more"}
    # In moto's shape (bare account ids) the next statement would still fit ...
    assert compact_size({**stored, "Statement": [*stored["Statement"], new_moto_shape]}) < 20_480
    # ... in AWS's shape the policy is already past the limit.
    aws_shape = [{**s, "Principal": {"AWS": f"arn:aws:iam::{SERVICE}:root"}} for s in stored["Statement"]]
    expected = compact_size({**stored, "Statement": [*aws_shape, {**aws_shape[0], "Sid": "one-more"}]})
    assert expected > 20_480
    lam = hooked(strict, aws, "lambda", admin_creds(aws, TOKEN))

    with pytest.raises(lam.exceptions.PolicyLengthExceededException) as refused:
        lam.add_permission(FunctionName=FUNCTION, StatementId="one-more", **INVOKE)

    code, status, message = error_of(refused)
    assert (code, status) == ("PolicyLengthExceededException", 400)
    assert message == f"The final policy size ({expected}) is bigger than the limit (20480)."
    assert len(statements(aws)) == 90
    moto.add_permission(FunctionName=FUNCTION, StatementId="one-more", **INVOKE)
    assert len(statements(aws)) == 91


def test_function_policy_under_the_limit_is_accepted(aws: LocalAws, strict: boto3.Session) -> None:
    make_function(aws)
    lam = hooked(strict, aws, "lambda", admin_creds(aws, TOKEN))
    for n in range(5):
        lam.add_permission(
            FunctionName=FUNCTION,
            StatementId=f"api-{n}",
            Action="lambda:InvokeFunction",
            Principal="apigateway.amazonaws.com",
            SourceArn=f"arn:aws:execute-api:us-east-1:{SERVICE}:api{n}/authorizers/*",
            SourceAccount=SERVICE,
        )
    assert [s["Sid"] for s in statements(aws)] == [f"api-{n}" for n in range(5)]


def test_lambda_statement_shape_matches_aws() -> None:
    statement = strict_aws.lambda_statement(
        {
            "StatementId": "s1",
            "Action": "lambda:InvokeFunction",
            "Principal": SERVICE,
            "PrincipalOrgID": "o-abcdefghij",
        },
        f"arn:aws:lambda:us-east-1:{TOKEN}:function:{FUNCTION}",
    )
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{SERVICE}:root"}
    assert statement["Condition"] == {"StringEquals": {"aws:PrincipalOrgID": "o-abcdefghij"}}
    assert strict_aws.lambda_principal("apigateway.amazonaws.com") == {"Service": "apigateway.amazonaws.com"}


# -- S3 PutBucketPolicy -------------------------------------------------------
def bucket_policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def read_statement(principal: Any, resource: str = f"arn:aws:s3:::{BUCKET}/*", sid: str = "Read") -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Principal": principal,
        "Action": "s3:GetObject",
        "Resource": resource,
    }


@pytest.fixture
def bucket(aws: LocalAws) -> Any:
    s3 = plain(aws, "s3", TOKEN)
    s3.create_bucket(Bucket=BUCKET)
    return s3


def test_bucket_policy_must_be_json(aws: LocalAws, strict: boto3.Session, bucket: Any) -> None:
    s3 = hooked(strict, aws, "s3", admin_creds(aws, TOKEN))
    with pytest.raises(ClientError) as refused:
        s3.put_bucket_policy(Bucket=BUCKET, Policy="Version: 2012-10-17")
    assert error_of(refused) == (
        "MalformedPolicy",
        400,
        "Policies must be valid JSON and the first byte must be '{'",
    )
    bucket.put_bucket_policy(Bucket=BUCKET, Policy="Version: 2012-10-17")  # moto stores it
    assert bucket.get_bucket_policy(Bucket=BUCKET)["Policy"] == "Version: 2012-10-17"


def test_bucket_policy_size_is_counted_without_whitespace(aws: LocalAws, strict: boto3.Session, bucket: Any) -> None:
    principal = {"AWS": f"arn:aws:iam::{SERVICE}:root"}
    many = bucket_policy(*(read_statement(principal, sid=f"Read{n:04d}") for n in range(120)))
    assert compact_size(many) < 20_480 < len(json.dumps(many, indent=4))
    s3 = hooked(strict, aws, "s3", admin_creds(aws, TOKEN))
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(many, indent=4))  # fits once compacted

    too_many = bucket_policy(*(read_statement(principal, sid=f"Read{n:04d}") for n in range(130)))
    assert compact_size(too_many) > 20_480
    with pytest.raises(ClientError) as refused:
        s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(too_many))
    assert error_of(refused) == (
        "MalformedPolicy",
        400,
        "Policy exceeds the maximum allowed document size.",
    )
    assert len(json.loads(bucket.get_bucket_policy(Bucket=BUCKET)["Policy"])["Statement"]) == 120
    bucket.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(too_many))  # moto takes it


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        (
            read_statement({"AWS": f"arn:aws:iam::{SERVICE}:root"}, resource="arn:aws:s3:::other-bucket/*"),
            "Policy has invalid resource",
        ),
        (
            {**read_statement({"AWS": f"arn:aws:iam::{SERVICE}:root"}), "Action": "kms:Decrypt"},
            "Policy has invalid action",
        ),
        (
            {**read_statement({"AWS": f"arn:aws:iam::{SERVICE}:root"}), "Effect": "Permit"},
            "Invalid effect: Permit",
        ),
        (
            {k: v for k, v in read_statement("*").items() if k != "Principal"},
            "Missing required field Principal",
        ),
        (
            read_statement({"AWS": f"arn:aws:iam::{SERVICE}:role/deploy"}),
            "Invalid principal in policy",
        ),
        (read_statement({"AWS": "not-an-arn"}), "Invalid principal in policy"),
    ],
    ids=[
        "resource",
        "action",
        "effect",
        "principal-missing",
        "role-unknown",
        "principal-malformed",
    ],
)
def test_bucket_policy_statements_are_validated(
    aws: LocalAws, strict: boto3.Session, bucket: Any, statement: dict[str, Any], message: str
) -> None:
    s3 = hooked(strict, aws, "s3", admin_creds(aws, TOKEN))
    policy = json.dumps(bucket_policy(statement))
    with pytest.raises(ClientError) as refused:
        s3.put_bucket_policy(Bucket=BUCKET, Policy=policy)
    assert error_of(refused) == ("MalformedPolicy", 400, message)
    bucket.put_bucket_policy(Bucket=BUCKET, Policy=policy)  # moto accepts every one


def test_bucket_policy_naming_an_existing_role_is_accepted(aws: LocalAws, strict: boto3.Session, bucket: Any) -> None:
    role = plain(aws, "iam", SERVICE).create_role(RoleName="deploy", AssumeRolePolicyDocument="{}")["Role"]
    s3 = hooked(strict, aws, "s3", admin_creds(aws, TOKEN))
    policy = bucket_policy(read_statement({"AWS": role["Arn"]}), read_statement("*", sid="Public"))
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(policy))
    stored = json.loads(bucket.get_bucket_policy(Bucket=BUCKET)["Policy"])
    assert stored["Statement"][0]["Principal"] == {"AWS": role["Arn"]}


# -- KMS ----------------------------------------------------------------------
GRANT = {
    "GranteePrincipal": f"arn:aws:iam::{SERVICE}:role/deploy",
    "Operations": ["Decrypt", "DescribeKey"],
    "Name": "dh-artifacts-service-a",
}


def test_named_grant_with_identical_parameters_returns_the_original_grant_id(
    aws: LocalAws, strict: boto3.Session
) -> None:
    key = plain(aws, "kms", TOKEN).create_key()["KeyMetadata"]
    kms = hooked(strict, aws, "kms", admin_creds(aws, TOKEN))
    first = kms.create_grant(KeyId=key["KeyId"], **GRANT)
    again = kms.create_grant(KeyId=key["Arn"], **{**GRANT, "Operations": ["DescribeKey", "Decrypt"]})

    assert again["GrantId"] == first["GrantId"]
    assert again["GrantToken"] != first["GrantToken"]
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert len(plain(aws, "kms", TOKEN).list_grants(KeyId=key["KeyId"])["Grants"]) == 1
    # different parameters under the same name: a new grant, as in AWS
    other = kms.create_grant(KeyId=key["KeyId"], **{**GRANT, "Operations": ["Decrypt"]})
    assert other["GrantId"] != first["GrantId"]
    # moto alone creates a duplicate for the identical request
    duplicate = plain(aws, "kms", TOKEN).create_grant(KeyId=key["KeyId"], **GRANT)
    assert duplicate["GrantId"] != first["GrantId"]


def test_key_policy_over_32_kb_is_refused(aws: LocalAws, strict: boto3.Session) -> None:
    key = plain(aws, "kms", TOKEN).create_key()["KeyMetadata"]
    kms = hooked(strict, aws, "kms", admin_creds(aws, TOKEN))
    statement = {
        "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{TOKEN}:root"},
        "Action": "kms:*",
        "Resource": "*",
    }
    policy = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{**statement, "Sid": f"S{n:04d}"} for n in range(400)],
        }
    )
    assert len(policy) > 32_768

    with pytest.raises(kms.exceptions.LimitExceededException) as refused:
        kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=policy)
    assert error_of(refused)[:2] == ("LimitExceededException", 400)
    with pytest.raises(kms.exceptions.MalformedPolicyDocumentException):
        kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy="not json")
    keys_before = len(plain(aws, "kms", TOKEN).list_keys()["Keys"])
    with pytest.raises(kms.exceptions.LimitExceededException):
        kms.create_key(Policy=policy)
    assert len(plain(aws, "kms", TOKEN).list_keys()["Keys"]) == keys_before
    moto = plain(aws, "kms", TOKEN)
    moto.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=policy)
    assert moto.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"] == policy


def test_retiring_a_grant_that_is_not_on_the_key_is_not_found(aws: LocalAws, strict: boto3.Session) -> None:
    key = plain(aws, "kms", TOKEN).create_key()["KeyMetadata"]
    kms = hooked(strict, aws, "kms", admin_creds(aws, TOKEN))
    grant = kms.create_grant(KeyId=key["KeyId"], **GRANT)

    with pytest.raises(kms.exceptions.NotFoundException) as refused:
        kms.retire_grant(KeyId=key["Arn"], GrantId="0" * 64)
    assert error_of(refused)[:2] == ("NotFoundException", 400)
    kms.retire_grant(KeyId=key["KeyId"], GrantId=grant["GrantId"])  # a real one retires
    assert plain(aws, "kms", TOKEN).list_grants(KeyId=key["KeyId"])["Grants"] == []
    plain(aws, "kms", TOKEN).retire_grant(KeyId=key["KeyId"], GrantId="0" * 64)  # moto: fine
    # RevokeGrant of a missing grant: moto already refuses, as AWS does.
    with pytest.raises(ClientError) as revoked:
        plain(aws, "kms", TOKEN).revoke_grant(KeyId=key["KeyId"], GrantId="0" * 64)
    assert error_of(revoked)[:2] == ("NotFoundException", 400)


# -- STS AssumeRole -----------------------------------------------------------
def make_role(aws: LocalAws, name: str, *statements: dict[str, Any], max_session: int = 3600) -> str:
    trust = {"Version": "2012-10-17", "Statement": list(statements)}
    role = plain(aws, "iam", TOKEN).create_role(
        RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), MaxSessionDuration=max_session
    )
    return str(role["Role"]["Arn"])


def trust(principal: Any, action: Any = "sts:AssumeRole", condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement = {"Effect": "Allow", "Principal": principal, "Action": action}
    if condition:
        statement["Condition"] = condition
    return statement


BROKER_ROOT = {"AWS": f"arn:aws:iam::{DEFAULT_ACCOUNT}:root"}


def assume(session: boto3.Session, aws: LocalAws, role_arn: str, **kwargs: Any) -> dict[str, Any]:
    creds = kwargs.pop("creds", None)
    sts = hooked(session, aws, "sts", creds)
    return dict(sts.assume_role(RoleArn=role_arn, RoleSessionName="deploy-helper", **kwargs)["Credentials"])


def denied(excinfo: pytest.ExceptionInfo[ClientError], caller_arn: str, role_arn: str) -> bool:
    return error_of(excinfo) == (
        "AccessDenied",
        403,
        f"User: {caller_arn} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
    )


MOTO_USER = f"arn:aws:sts::{DEFAULT_ACCOUNT}:user/moto"


def test_role_must_exist(aws: LocalAws, strict: boto3.Session) -> None:
    missing = f"arn:aws:iam::{TOKEN}:role/deploy-helper-target"
    with pytest.raises(ClientError) as refused:
        assume(strict, aws, missing)
    assert denied(refused, MOTO_USER, missing)
    assert plain(aws, "sts").assume_role(RoleArn=missing, RoleSessionName="x1")["Credentials"]  # moto: fine


def test_the_harness_admin_role_is_exempt(aws: LocalAws, strict: boto3.Session) -> None:
    creds = assume(strict, aws, f"arn:aws:iam::{STRANGER}:role/OrganizationAccountAccessRole")
    identity = hooked(strict, aws, "sts", creds).get_caller_identity()
    assert identity["Account"] == STRANGER


@pytest.mark.parametrize(
    "principal",
    [
        {"AWS": f"arn:aws:iam::{STRANGER}:root"},
        {"AWS": [STRANGER, f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/someone-else"]},
        {"Service": "lambda.amazonaws.com"},
    ],
    ids=["other-account", "list-without-caller", "service"],
)
def test_trust_policy_must_name_the_caller(aws: LocalAws, strict: boto3.Session, principal: Any) -> None:
    role = make_role(aws, "target", trust(principal))
    with pytest.raises(ClientError) as refused:
        assume(strict, aws, role)
    assert denied(refused, MOTO_USER, role)
    assert plain(aws, "sts").assume_role(RoleArn=role, RoleSessionName="x1")["Credentials"]  # moto: fine


@pytest.mark.parametrize(
    "principal", [BROKER_ROOT, {"AWS": DEFAULT_ACCOUNT}, {"AWS": [STRANGER, DEFAULT_ACCOUNT]}, "*"]
)
def test_trust_policy_naming_the_callers_account_allows(aws: LocalAws, strict: boto3.Session, principal: Any) -> None:
    role = make_role(aws, "target", trust(principal))
    creds = assume(strict, aws, role)
    arn = hooked(strict, aws, "sts", creds).get_caller_identity()["Arn"]
    assert arn == f"arn:aws:sts::{TOKEN}:assumed-role/target/deploy-helper"


def test_trust_policy_naming_a_role_allows_only_sessions_of_that_role(aws: LocalAws, strict: boto3.Session) -> None:
    broker = plain(aws, "iam").create_role(
        RoleName="broker-exec",
        AssumeRolePolicyDocument=json.dumps({"Statement": [trust(BROKER_ROOT)]}),
    )["Role"]["Arn"]
    role = make_role(aws, "target", trust({"AWS": broker}))
    with pytest.raises(ClientError) as refused:
        assume(strict, aws, role)
    assert denied(refused, MOTO_USER, role)

    broker_creds = assume(strict, aws, broker)
    creds = assume(strict, aws, role, creds=broker_creds)
    assert hooked(strict, aws, "sts", creds).get_caller_identity()["Account"] == TOKEN


def test_external_id_must_match(aws: LocalAws, strict: boto3.Session) -> None:
    role = make_role(
        aws,
        "target",
        trust(BROKER_ROOT, condition={"StringEquals": {"sts:ExternalId": "dh-ext-1"}}),
    )
    for wrong in ({}, {"ExternalId": "dh-ext-2"}):
        with pytest.raises(ClientError) as refused:
            assume(strict, aws, role, **wrong)
        assert denied(refused, MOTO_USER, role)
        assert plain(aws, "sts").assume_role(RoleArn=role, RoleSessionName="x1", **wrong)  # moto: fine
    assert assume(strict, aws, role, ExternalId="dh-ext-1")["AccessKeyId"]


def test_source_identity_needs_set_source_identity(aws: LocalAws, strict: boto3.Session) -> None:
    plain_role = make_role(aws, "plain", trust(BROKER_ROOT))
    with pytest.raises(ClientError) as refused:
        assume(strict, aws, plain_role, SourceIdentity="ci-tooling")
    assert denied(refused, MOTO_USER, plain_role)
    assert plain(aws, "sts").assume_role(RoleArn=plain_role, RoleSessionName="x1", SourceIdentity="ci-tooling")

    role = make_role(aws, "with-identity", trust(BROKER_ROOT, action=["sts:AssumeRole", "sts:SetSourceIdentity"]))
    assert assume(strict, aws, role, SourceIdentity="ci-tooling")["AccessKeyId"]


def test_session_tags_need_tag_session(aws: LocalAws, strict: boto3.Session) -> None:
    role = make_role(aws, "target", trust(BROKER_ROOT))
    with pytest.raises(ClientError) as refused:
        assume(strict, aws, role, Tags=[{"Key": "caller", "Value": "ci-tooling"}])
    assert denied(refused, MOTO_USER, role)
    tagged = make_role(aws, "tagged", trust(BROKER_ROOT, action="sts:*"))
    assert assume(strict, aws, tagged, Tags=[{"Key": "caller", "Value": "ci-tooling"}])


def test_duration_is_capped_by_the_role(aws: LocalAws, strict: boto3.Session) -> None:
    role = make_role(aws, "target", trust(BROKER_ROOT), max_session=3600)
    with pytest.raises(ClientError) as refused:
        assume(strict, aws, role, DurationSeconds=7200)
    assert error_of(refused) == (
        "ValidationError",
        400,
        "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
    )
    assert plain(aws, "sts").assume_role(RoleArn=role, RoleSessionName="x1", DurationSeconds=7200)  # moto
    assert assume(strict, aws, role, DurationSeconds=3600)


def test_role_chaining_is_capped_at_one_hour(aws: LocalAws, strict: boto3.Session) -> None:
    hop = make_role(aws, "hop", trust(BROKER_ROOT))
    callers = {"AWS": [f"arn:aws:iam::{TOKEN}:root", DEFAULT_ACCOUNT]}
    role = make_role(aws, "target", trust(callers), max_session=43_200)
    hop_creds = assume(strict, aws, hop)
    with pytest.raises(ClientError) as refused:
        assume(strict, aws, role, creds=hop_creds, DurationSeconds=7200)
    code, status, message = error_of(refused)
    assert (code, status) == ("ValidationError", 400)
    assert "role chaining" in message
    assert assume(strict, aws, role, DurationSeconds=7200)  # not chained: the role allows 12 h


def test_assume_role_parameters_must_match_the_model_patterns(aws: LocalAws, strict: boto3.Session) -> None:
    role = make_role(aws, "target", trust(BROKER_ROOT))
    with pytest.raises(ClientError) as refused:
        assume(strict, aws, role, ExternalId="has spaces in it")
    code, status, message = error_of(refused)
    assert (code, status) == ("ValidationError", 400)
    assert re.search(r"at 'externalId' failed to satisfy constraint", message)


def test_trust_policy_evaluation() -> None:
    caller = strict_aws.Caller(account=DEFAULT_ACCOUNT, arn=f"arn:aws:sts::{DEFAULT_ACCOUNT}:assumed-role/b/s")
    allow = trust(BROKER_ROOT, condition={"StringLike": {"sts:ExternalId": "dh-*"}})
    deny = {**trust({"AWS": f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/b"}), "Effect": "Deny"}
    assert strict_aws.trust_allows({"Statement": [allow]}, "sts:AssumeRole", caller, "dh-1")
    assert not strict_aws.trust_allows({"Statement": [allow]}, "sts:AssumeRole", caller, "other")
    assert not strict_aws.trust_allows({"Statement": [allow, deny]}, "sts:AssumeRole", caller, "dh-1")
    assert not strict_aws.trust_allows({"Statement": [allow]}, "sts:TagSession", caller, "dh-1")
    assert caller.chained


def test_clients_created_before_install_are_not_hooked(aws: LocalAws) -> None:
    session = aws.base_session()
    before = hooked(session, aws, "sts")
    strict_aws.install(session, aws)
    strict_aws.install(session, aws)  # a second install changes nothing
    missing = f"arn:aws:iam::{TOKEN}:role/missing"
    assert before.assume_role(RoleArn=missing, RoleSessionName="x1")["Credentials"]
    with pytest.raises(ClientError) as refused:
        hooked(session, aws, "sts").assume_role(RoleArn=missing, RoleSessionName="x1")
    assert denied(refused, MOTO_USER, missing)
