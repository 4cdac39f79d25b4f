"""Lifecycle fields of a grant: expiry, reason, ticket — never part of its identity."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deploy_helper.audit.drift import parse_spec
from deploy_helper.grants import REGISTRY
from deploy_helper.grants.base import duration_seconds, parse_expiry

KEY = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"
GRANT = {"kind": "kms-grant", "key": KEY, "grantee": "arn:aws:iam::333333333333:role/deploy", "operations": ["Decrypt"]}


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_lifecycle_fields_do_not_change_a_grants_identity(kind: str) -> None:
    base = parse_spec(REGISTRY[kind].example)
    timed = parse_spec({**REGISTRY[kind].example, "ttl": "8h", "reason": "hotfix", "ticket": "CHG-1"})
    assert REGISTRY[kind].grant_id(base) == REGISTRY[kind].grant_id(timed)


def test_expiry_is_the_earlier_of_expires_at_and_ttl() -> None:
    at = parse_expiry("2026-12-02T10:00:00Z")
    assert parse_spec({**GRANT, "ttl": "1h"}).expiry(at) == at + 3600
    assert parse_spec({**GRANT, "expires_at": "2026-12-02T10:30:00Z"}).expiry(at) == at + 1800
    both = parse_spec({**GRANT, "expires_at": "2026-12-02T10:30:00Z", "ttl": "2h"})
    assert both.expiry(at) == at + 1800
    assert parse_spec(GRANT).expiry(at) is None
    assert duration_seconds("7d") == 7 * 86400


@pytest.mark.parametrize(
    "field",
    [
        {"ttl": "8 hours"},
        {"ttl": "0h"},
        {"expires_at": "2026-12-02 10:00"},
        {"reason": "line\nbreak"},
        {"reason": "\x1b[31mred"},
        {"reason": "\u202eevil"},
        {"reason": "\x9bcsi"},
        {"ticket": "CHG 1; rm"},
        {"ttl": 3600},
    ],
)
def test_lifecycle_fields_are_strict(field: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_spec({**GRANT, **field})
