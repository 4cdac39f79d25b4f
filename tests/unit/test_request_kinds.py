"""A request is validated by a union of the kinds it names: same values and same errors as ``RequestPayload``."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from deploy_helper.exceptions import RequestError
from deploy_helper.request import RequestPayload, parse_payload
from deploy_helper.trust.auth import short_errors

BUCKET = {
    "kind": "bucket-access",
    "bucket": "tooling-artifacts-111111111111",
    "account": "111111111111",
    "principal": "arn:aws:iam::333333333333:role/deploy",
    "access": "read",
}
KEY = {
    "kind": "kms-grant",
    "key": "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "grantee": "arn:aws:iam::333333333333:role/deploy",
    "operations": ["Decrypt"],
}


def request(*grants: Any) -> dict[str, Any]:
    return {"request_id": "deploy-7f3a2c91", "action": "apply", "grants": list(grants)}


@pytest.mark.parametrize("grants", [[BUCKET], [BUCKET, KEY], [KEY, BUCKET, KEY]], ids=["one", "two", "mixed"])
def test_the_same_request_as_the_full_model(grants: list[dict[str, Any]]) -> None:
    parsed = parse_payload(request(*grants))
    full = RequestPayload.model_validate(request(*grants))
    assert isinstance(parsed, RequestPayload)
    assert parsed.model_dump(mode="json") == full.model_dump(mode="json")
    assert [type(g) for g in parsed.grants] == [type(g) for g in full.grants]


@pytest.mark.parametrize(
    "grants",
    [
        [{**BUCKET, "account": 111111111111}],
        [{**BUCKET, "access": None}],
        [BUCKET, {**KEY, "operations": ["Everything"]}],
        [{**BUCKET, "kind": "iam-admin"}],
        [{**BUCKET, "extra": 1}],
        ["bucket-access"],
        [],
    ],
)
def test_the_same_errors_as_the_full_model(grants: list[Any]) -> None:
    with pytest.raises(ValidationError) as full:
        RequestPayload.model_validate(request(*grants))
    with pytest.raises(RequestError) as parsed:
        parse_payload(request(*grants))
    assert parsed.value.message == f"invalid request: {short_errors(full.value)}"
