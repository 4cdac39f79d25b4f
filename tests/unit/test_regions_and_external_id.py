"""Regions in ARNs are AWS's (botocore's own data); the ExternalId has one rule everywhere."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from account_bootstrap.rollout import BootstrapParameters
from deploy_helper.grants import AnyGrant
from deploy_helper.trust.identifiers import (
    EXTERNAL_ID_CHARS,
    EXTERNAL_ID_MAX,
    EXTERNAL_ID_MIN,
    KmsKeyArn,
    LambdaFunctionArn,
    Region,
    SourceArn,
    known_regions,
)

ROOT = Path(__file__).resolve().parents[2]
KEY = "arn:aws:kms:{region}:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"
GRANTS = TypeAdapter(AnyGrant)


def test_regions_come_from_botocore() -> None:
    regions = known_regions()
    assert {"us-east-1", "eu-west-1"} <= regions["aws"]
    assert "cn-north-1" in regions["aws-cn"] and "us-gov-west-1" in regions["aws-us-gov"]


@pytest.mark.parametrize(
    ("adapter", "value"),
    [
        (LambdaFunctionArn, "arn:aws:lambda:us-eest-1:222222222222:function:token-authorizer"),
        (KmsKeyArn, KEY.format(region="eu-wset-1")),
        (SourceArn, "arn:aws:execute-api:us-east-9:333333333333:abc123/authorizers/*"),
        (Region, "us-eest-1"),
        (LambdaFunctionArn, "arn:aws-cn:lambda:us-east-1:222222222222:function:f"),  # region of another partition
    ],
)
def test_a_region_typo_is_refused_before_anything_reaches_aws(adapter: Any, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(adapter).validate_python(value)
    assert "region" in str(caught.value)


def test_the_typo_is_named_with_the_region_meant() -> None:
    grant = {
        "kind": "lambda-invoke",
        "function": "arn:aws:lambda:us-eest-1:222222222222:function:token-authorizer",
        "principal": "apigateway.amazonaws.com",
        "source_account": "333333333333",
    }
    with pytest.raises(ValidationError) as caught:
        GRANTS.validate_python(grant)
    assert "'us-eest-1' is not an AWS region (did you mean us-east-1" in str(caught.value)
    grant["function"] = grant["function"].replace("us-eest-1", "us-east-1")
    GRANTS.validate_python(grant)


def _external_id(path: Path) -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return dict(yaml.load(path.read_text(), Loader=Loader)["Parameters"]["ExternalId"])  # noqa: S506


@pytest.mark.parametrize("template", ["template.yaml", "account_bootstrap/broker-role.yaml"])
def test_the_templates_take_the_same_external_ids_as_the_cli(template: str) -> None:
    parameter = _external_id(ROOT / template)
    assert (parameter["MinLength"], parameter["MaxLength"]) == (EXTERNAL_ID_MIN, EXTERNAL_ID_MAX)
    assert parameter["AllowedPattern"] == f"^{EXTERNAL_ID_CHARS}+$"
    assert str(EXTERNAL_ID_MIN) in parameter["ConstraintDescription"]


@pytest.mark.parametrize("length", [EXTERNAL_ID_MIN - 1, EXTERNAL_ID_MAX + 1])
def test_the_cli_refuses_external_ids_the_templates_refuse(length: int) -> None:
    with pytest.raises(ValidationError):
        BootstrapParameters(broker_role_arn="arn:aws:iam::123456789012:role/fn", external_id="x" * length)
    ok = "x" * (length - 1 if length > EXTERNAL_ID_MAX else length + 1)
    assert re.fullmatch(f"{EXTERNAL_ID_CHARS}+", ok)
    BootstrapParameters(broker_role_arn="arn:aws:iam::123456789012:role/fn", external_id=ok)
