"""The strict identifier parsers: exactly AWS's grammar, nothing that can carry policy text.

Every value a request can put into a policy passes through one of these types, so
each is shown to accept real identifiers and to refuse near misses: wrong lengths,
wrong case, wildcards, whitespace, quotes and braces, and characters outside ASCII
that Python's ``\\d``/``\\w`` would otherwise let through.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from deploy_helper.trust import identifiers as ids

ACCOUNT = "333333333333"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/deploy"
FUNCTION = "arn:aws:lambda:us-east-1:222222222222:function:token-authorizer"
KEY = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"
SOURCE = f"arn:aws:execute-api:us-east-1:{ACCOUNT}:a1b2c3d4e5/authorizers/*"
STACK = "arn:aws:cloudformation:eu-west-1:123456789012:stack/service-a/51af3dc0-da77-11e4-872e-1234567db123"

#: Characters that could end a JSON string, open a structure, start a new line or
#: widen a match, plus lookalikes outside ASCII.
HOSTILE = [*"\"'{}[]\\\n\r\t \x00*?", "\u00e9", "\u0661"]

VALID: dict[str, list[str]] = {
    "AccountId": [ACCOUNT, "000000000000"],
    "Region": ["us-east-1", "eu-west-3", "us-gov-west-1", "ap-southeast-2", "cn-north-1"],
    "OrgId": ["o-a1b2c3d4e5", "o-" + "a" * 32],
    "OrgPath": ["o-a1b2c3d4e5/r-ab12/ou-ab12-11111111/", "o-a1b2c3d4e5/r-ab12"],
    "ServicePrincipal": ["apigateway.amazonaws.com", "events.amazonaws.com", "s3.amazonaws.com.cn"],
    "RoleArn": [
        ROLE,
        f"arn:aws:iam::{ACCOUNT}:role/path/to/deploy",
        "arn:aws-cn:iam::111111111111:role/a+b=c,d.e@f-g",
    ],
    "LambdaFunctionArn": [FUNCTION, FUNCTION + ":live", FUNCTION + ":7"],
    "KmsKeyArn": [KEY, "arn:aws:kms:eu-west-1:111111111111:key/mrk-" + "0" * 32],
    "SourceArn": [
        SOURCE,
        "arn:aws:s3:::my-bucket",
        "arn:aws:events:us-east-1:222222222222:rule/nightly",
    ],
    "StackArn": [STACK],
    "BucketName": ["dh-artifacts-111111111111", "a.b-c", "abc"],
    "S3Prefix": ["service-a/", "builds/service-a/v1", "x"],
    "Label": ["service-a-deploy", "0123abc", "refs/heads/main", "run#42"],
    "Name": ["ci-tooling", "a", "x" * 63],
}

INVALID: dict[str, list[Any]] = {
    "AccountId": [
        "33333333333",  # 11 digits
        "3333333333333",  # 13 digits
        "33333333333a",
        " 333333333333",
        "333333333333\n",
        "\u0661" * 12,  # Arabic-Indic digits: \d in a str pattern, not an AWS account id
        "\uff13" * 12,  # fullwidth digits
        333333333333,  # not a string: no coercion
        "*",
        "",
    ],
    "Region": ["US-EAST-1", "us-east", "useast1", "us-east-1 ", "us-east-\u0661", "*", "us-east-*"],
    "OrgId": ["o-short", "O-A1B2C3D4E5", "o-a1b2c3d4e5*", "a1b2c3d4e5"],
    "OrgPath": ["o-a1b2c3d4e5/", "o-a1b2c3d4e5/r-ab12/*"],
    "ServicePrincipal": [
        "apigateway.amazonaws.com.evil.com",
        "*.amazonaws.com",
        "apigateway",
        "APIGATEWAY.amazonaws.com",
        "apigateway.amazonaws.com\n",
        '"apigateway.amazonaws.com"',
    ],
    "RoleArn": [
        f"arn:aws:iam::{ACCOUNT}:role/*",
        f"arn:aws:iam::{ACCOUNT}:role/deploy*",
        f"arn:aws:iam::{ACCOUNT}:role/d\u00e9ploy",  # \w in a str pattern; IAM names are ASCII
        f"arn:aws:iam::{ACCOUNT}:user/deploy",
        f"arn:aws:iam::{ACCOUNT}:root",
        f"arn:aws:iam:us-east-1:{ACCOUNT}:role/deploy",
        "arn:aws:iam::*:role/deploy",
        f"arn:aws:sts::{ACCOUNT}:assumed-role/deploy/x",
        f"arn:aws-xx:iam::{ACCOUNT}:role/deploy",
        f"arn:aws:iam::{ACCOUNT}:role/" + "x" * 65,
        ROLE + '"},{"Effect":"Allow","Principal":"*',
        f"arn:aws:iam::{ACCOUNT}:role/deploy\n",
        f" arn:aws:iam::{ACCOUNT}:role/deploy",
        "arn:aws:iam::\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661:role/deploy",
    ],
    "LambdaFunctionArn": [
        FUNCTION + ":$LATEST",
        FUNCTION + ":*",
        "arn:aws:lambda:us-east-1:222222222222:function:*",
        "arn:aws:lambda:us-east-1:222222222222:function:token.authorizer",
        "arn:aws:lambda:us-east-1:22222222222:function:token-authorizer",
        "arn:aws:lambda::222222222222:function:token-authorizer",
        "arn:aws:lambda:us-east-1:222222222222:token-authorizer",
        "token-authorizer",
        FUNCTION + "\n",
    ],
    "KmsKeyArn": [
        "arn:aws:kms:us-east-1:111111111111:key/*",
        "arn:aws:kms:us-east-1:111111111111:alias/artifacts",
        "arn:aws:kms:us-east-1:111111111111:key/1234ABCD-12ab-34cd-56ef-1234567890ab",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
    ],
    "SourceArn": [
        # a service principal's source must name its account
        "arn:aws:execute-api:us-east-1::a1b2c3d4e5/*",
        "arn:aws:execute-api:us-east-1:*:a1b2c3d4e5/*",
        f'arn:aws:execute-api:us-east-1:{ACCOUNT}:a1"b',
        f"arn:aws:execute-api:us-east-1:{ACCOUNT}:a1 b",
        f"arn:aws:execute-api:us-east-1:{ACCOUNT}:a1" + "}b",
        f"arn:aws:execute-api:us-east-1:{ACCOUNT}:",
        "*",
    ],
    "StackArn": [STACK.replace("stack/service-a", "stack/*"), STACK + "x"],
    "BucketName": [
        "ab",
        "a" * 64,
        "Bucket",
        "my_bucket",
        "192.168.1.1",
        "a..b",
        "a.-b",
        "xn--bucket",
        "bucket-s3alias",
        "bucket*",
        "-bucket",
        "bucket\n",
    ],
    "S3Prefix": ["/rooted", "a//b", "*", "a/*", "a b", "a/../b\n", '"'],
    "Label": ["", "-leading", "with space", "quote'", "new\nline", "x" * 201],
    "Name": ["", "Upper", "-x", "x" * 64, "under_score", "dot.name"],
}


def adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(getattr(ids, name))


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in VALID.items() for v in vs])
def test_accepts_well_formed(name: str, value: str) -> None:
    assert adapter(name).validate_python(value) == value


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, vs in INVALID.items() for v in vs])
def test_refuses_malformed(name: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        adapter(name).validate_python(value)


def test_every_type_is_covered() -> None:
    types = {n for n in dir(ids) if n in VALID}
    assert types == set(VALID) == set(INVALID)


@given(
    name=st.sampled_from(sorted(VALID)),
    data=st.data(),
    bad=st.sampled_from(HOSTILE),
)
def test_no_hostile_character_survives_anywhere(name: str, data: st.DataObject, bad: str) -> None:
    """Inserting a quote, brace, backslash, whitespace or non-ASCII letter anywhere is refused.

    ``*`` and ``?`` are the exception only where the grammar itself allows them
    (a source ARN's resource part, as ``ArnLike`` does).
    """
    if name == "SourceArn" and bad == "*":
        bad = "?"  # '*' is legal ArnLike syntax in a source ARN's resource part
    value = data.draw(st.sampled_from(VALID[name]))
    at = data.draw(st.integers(min_value=0, max_value=len(value)))
    tampered = value[:at] + bad + value[at:]
    with pytest.raises(ValidationError):
        adapter(name).validate_python(tampered)


def test_error_message_names_the_type_and_an_example() -> None:
    with pytest.raises(ValidationError) as info:
        adapter("RoleArn").validate_python("arn:aws:iam::333333333333:role/*")
    message = str(info.value)
    assert "IAM role ARN" in message
    assert "arn:aws:iam::123456789012:role/deploy" in message


def test_error_message_truncates_long_values() -> None:
    with pytest.raises(ValidationError) as info:
        adapter("AccountId").validate_python("9" * 500)
    assert "9" * 100 not in str(info.value)


def test_strings_are_bounded() -> None:
    with pytest.raises(ValidationError):
        adapter("SourceArn").validate_python(SOURCE + "a" * 2000)


@pytest.mark.parametrize(
    ("principal", "account"),
    [
        (ACCOUNT, ACCOUNT),
        (ROLE, ACCOUNT),
        (f"arn:aws:iam::{ACCOUNT}:root", ACCOUNT),
        ("apigateway.amazonaws.com", None),
        ("*", None),
        ("\u0661" * 12, None),
        (f"arn:aws:iam::{ACCOUNT}:user/someone", None),
    ],
)
def test_account_of_principal(principal: str, account: str | None) -> None:
    assert ids.account_of_principal(principal) == account


def test_parsed_arn_parts() -> None:
    parsed = ids.ParsedArn.parse(FUNCTION + ":live")
    assert (parsed.partition, parsed.service, parsed.region, parsed.account) == (
        "aws",
        "lambda",
        "us-east-1",
        "222222222222",
    )
    assert parsed.resource == "function:token-authorizer:live"
    with pytest.raises(ValueError, match="not an ARN"):
        ids.ParsedArn.parse("urn:aws:lambda")


def test_lambda_arn_groups() -> None:
    m = ids.LAMBDA_ARN_RE.fullmatch(FUNCTION + ":live")
    assert m is not None
    assert (m["account"], m["region"], m["name"], m["qualifier"]) == (
        "222222222222",
        "us-east-1",
        "token-authorizer",
        "live",
    )


def test_the_region_checks_read_the_data_the_brokers_clients_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.loaders import JSONFileLoader

    from deploy_helper.execution.clients import BotocoreSession

    session = BotocoreSession()
    assert session.botocore_session.get_component("data_loader") is ids.botocore_loader()
    session.client("lambda", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b")
    read: list[str] = []
    original = JSONFileLoader.load_file
    monkeypatch.setattr(JSONFileLoader, "load_file", lambda self, path: read.append(path) or original(self, path))
    monkeypatch.setattr(ids, "known_regions", ids.known_regions.__wrapped__)  # not the cached answer
    assert "eu-west-1" in ids.known_regions()["aws"]
    assert not any(path.endswith("endpoints") for path in read)  # endpoints.json: parsed once, by the client
