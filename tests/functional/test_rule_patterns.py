"""A rule's pattern admits a grant's ``SourceArn`` pattern only when it covers it, through the real handler.

A Lambda permission's ``SourceArn`` is matched by AWS with ``ArnLike``, so a ``*`` in
a grant's ``source_arn`` is a wildcard. The rule below lets service-a's API use the
authorizer with the last character of its id free (``?``); a grant whose
``source_arn`` puts ``*`` there would let every API whose id merely starts the same
way (or is one character shorter) invoke the authorizer. Matching with ``fnmatch``
took that ``*`` as one character the rule's ``?`` matches, and admitted it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import yaml
from test_attacks import Attack, case, payload, signed

from deploy_helper import handler
from deploy_helper.local.server import LOCAL_REGION

if TYPE_CHECKING:
    from collections.abc import Iterator

    import boto3

    from deploy_helper.local.scenario import Scenario

RULE_ID = "authorizer-invoke"


@pytest.fixture
def rule_pattern(scenario: Scenario) -> str:
    """``authorizer-invoke`` narrowed to service-a's API, its id's last character free."""
    path = scenario.policies_dir / "rules.yaml"
    rules = yaml.safe_load(path.read_text())
    api = scenario.api_ids["service-a"]
    pattern = f"arn:aws:execute-api:*:*:{api[:-1]}?/authorizers/*"
    (rule,) = [r for r in rules["rules"] if r["id"] == RULE_ID]
    rule["principals"]["services"][0]["source_arns"] = [pattern]
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return pattern


@pytest.fixture
def attack(scenario: Scenario, rule_pattern: str, strict_session: boto3.Session, aws_calls: Any) -> Iterator[Attack]:
    """The broker reads the narrowed rule; the handler is left without a broker afterwards."""
    yield Attack(scenario, scenario.broker(session=strict_session), aws_calls)
    handler.set_broker(None)


def _source(scenario: Scenario, resource: str) -> dict[str, Any]:
    account = scenario.accounts["service-a"]
    return {
        **scenario.authorizer_grant("service-a"),
        "source_arn": f"arn:aws:execute-api:{LOCAL_REGION}:{account}:{resource}",
    }


def test_a_wider_source_arn_pattern_is_denied(scenario: Scenario, attack: Attack, rule_pattern: str) -> None:
    """'*' where the rule has '?', or anywhere the rule is narrower: denied, naming the rule and check."""
    api = scenario.api_ids["service-a"]
    wider = [
        f"{api[:-1]}*/authorizers/*",  # the reported case: the rule's '?' took the grant's '*'
        f"{api}*/authorizers/*",
        "*/authorizers/*",
        f"{api[:-1]}*/authorizers/tok",  # narrower at the end, wider in the id
        f"{api}/*",  # methods as well as authorizers
    ]
    for resource in wider:
        grant = _source(scenario, resource)
        with case(resource):
            response = attack.denied(
                signed(scenario.signer, payload([grant])),
                RULE_ID,
                "principal",
                f"source_arn {grant['source_arn']} matches none of ['{rule_pattern}']",
                f"which {rule_pattern} does not",
            )
            beyond = response["results"][0]["reason"].split("it also matches ")[1].split(",")[0]
            assert beyond.startswith(f"arn:aws:execute-api:{LOCAL_REGION}:")
    policy = scenario.function_policy() or {"Statement": []}
    assert not any("*/authorizers" in str(s.get("Condition")) for s in policy["Statement"])


def test_a_source_arn_pattern_inside_the_rule_is_applied(scenario: Scenario, attack: Attack) -> None:
    """The control: wildcards that stay inside the rule's pattern are allowed, and the grant is made."""
    api = scenario.api_ids["service-a"]
    for resource in (f"{api}/authorizers/*", f"{api}/authorizers/tok*"):
        grant = _source(scenario, resource)
        with case(resource):
            response = attack.send(signed(scenario.signer, payload([grant])))
            assert [r["decision"] for r in response["results"]] == ["applied"], response
            policy = scenario.function_policy() or {"Statement": []}
            conditions = [s.get("Condition", {}).get("ArnLike", {}) for s in policy["Statement"]]
            assert {"AWS:SourceArn": grant["source_arn"]} in conditions
