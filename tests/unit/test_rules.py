"""Authorization: deny by default, guardrails no rule lifts, refusals naming rule and check."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from deploy_helper.exceptions import DeniedError, PolicyFileError
from deploy_helper.grants import AnyGrant, LambdaInvokeGrant
from deploy_helper.trust.rules import RuleSet, arn_matches

if TYPE_CHECKING:
    from pathlib import Path

ORG = "o-a1b2c3d4e5"
TOOLING, TOKEN, SVC_A, SVC_B, OUTSIDE = (
    "111111111111",
    "222222222222",
    "333333333333",
    "444444444444",
    "999999999999",
)
FUNCTION = f"arn:aws:lambda:us-east-1:{TOKEN}:function:token-authorizer"
KEY = f"arn:aws:kms:us-east-1:{TOOLING}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BUCKET = f"dh-artifacts-{TOOLING}"
SHARED = FUNCTION.replace("token-authorizer", "shared-x")

RULES: dict[str, Any] = {
    "version": 1,
    "organization": {
        "id": ORG,
        "accounts": {
            "tooling": TOOLING,
            "token-service": TOKEN,
            "service-a": SVC_A,
            "service-b": SVC_B,
        },
    },
    "rules": [
        {
            "id": "authorizer-invoke",
            "callers": ["ci-tooling"],
            "kind": "lambda-invoke",
            "targets": [f"arn:aws:lambda:*:{TOKEN}:function:token-authorizer"],
            "principals": {
                "services": [
                    {
                        "service": "apigateway.amazonaws.com",
                        "source_accounts": ["service-a", "service-b"],
                        "source_arns": ["arn:aws:execute-api:*:*:*/authorizers/*"],
                    }
                ]
            },
        },
        {
            "id": "account-invoke",
            "callers": ["ci-tooling"],
            "kind": "lambda-invoke",
            "targets": [f"arn:aws:lambda:*:{TOKEN}:function:shared-*"],
            "principals": {"accounts": ["service-a"], "organization": True},
        },
        {
            "id": "artifact-read",
            "callers": ["ci-tooling"],
            "kind": "bucket-access",
            "targets": ["arn:aws:s3:::dh-artifacts-*"],
            "target_accounts": ["tooling"],
            "principals": {
                "roles": ["arn:aws:iam::*:role/deploy"],
                "role_accounts": ["service-a", "service-b"],
            },
            "access": ["read"],
        },
        {
            "id": "artifact-decrypt",
            "callers": ["ci-tooling"],
            "kind": "kms-grant",
            "targets": [f"arn:aws:kms:*:{TOOLING}:key/*"],
            "principals": {
                "roles": ["arn:aws:iam::*:role/deploy"],
                "role_accounts": ["service-a", "service-b"],
            },
            "operations": ["Decrypt", "DescribeKey"],
        },
    ],
}

GRANT = TypeAdapter(AnyGrant)


@pytest.fixture
def rules() -> RuleSet:
    return RuleSet.model_validate(RULES)


def spec(**fields: Any) -> Any:
    return GRANT.validate_python(fields)


def authorizer(account: str = SVC_A, **overrides: Any) -> Any:
    fields = {
        "kind": "lambda-invoke",
        "function": FUNCTION,
        "principal": "apigateway.amazonaws.com",
        "source_arn": f"arn:aws:execute-api:us-east-1:{account}:abc123/authorizers/*",
        "source_account": account,
    }
    fields.update(overrides)
    return spec(**{k: v for k, v in fields.items() if v is not None})


def bucket(principal: str = f"arn:aws:iam::{SVC_A}:role/deploy", **overrides: Any) -> Any:
    fields = {
        "kind": "bucket-access",
        "bucket": BUCKET,
        "account": TOOLING,
        "principal": principal,
        "access": "read",
    }
    return spec(**{**fields, **overrides})


def key(grantee: str = f"arn:aws:iam::{SVC_A}:role/deploy", **overrides: Any) -> Any:
    fields = {"kind": "kms-grant", "key": KEY, "grantee": grantee, "operations": ["Decrypt"]}
    return spec(**{**fields, **overrides})


def denied(rules: RuleSet, grant: Any, caller: str = "ci-tooling") -> DeniedError:
    with pytest.raises(DeniedError) as info:
        rules.authorize(caller, grant)
    return info.value


# -- allowed -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "rule"),
    [
        (lambda: authorizer(SVC_A), "authorizer-invoke"),
        (lambda: authorizer(SVC_B), "authorizer-invoke"),
        (lambda: bucket(), "artifact-read"),
        (lambda: bucket(f"arn:aws:iam::{SVC_B}:role/deploy", prefix="service-b/"), "artifact-read"),
        (lambda: key(operations=["DescribeKey", "Decrypt"]), "artifact-decrypt"),
        (
            lambda: spec(kind="lambda-invoke", function=SHARED, principal=SVC_A),
            "account-invoke",
        ),
        (
            lambda: spec(
                kind="lambda-invoke",
                function=SHARED,
                principal="*",
                principal_org_id=ORG,
            ),
            "account-invoke",
        ),
    ],
)
def test_a_matching_rule_allows(rules: RuleSet, grant: Any, rule: str) -> None:
    assert rules.authorize("ci-tooling", grant()).rule_id == rule


# -- deny by default, naming rule and check -------------------------------------


def test_unknown_caller_has_no_rule(rules: RuleSet) -> None:
    error = denied(rules, bucket(), caller="ci-service-b")
    assert error.check == "no-rule" and error.rule_id is None
    assert "ci-service-b" in error.message and "deny by default" in error.message


def test_no_rules_at_all_denies_everything() -> None:
    empty = RuleSet.model_validate({**RULES, "rules": []})
    for grant in (authorizer(), bucket(), key()):
        assert denied(empty, grant).check == "no-rule"


@pytest.mark.parametrize(
    ("grant", "rule", "check", "detail"),
    [
        (
            lambda: authorizer(function=FUNCTION.replace("token-authorizer", "other")),
            "authorizer-invoke",
            "target",
            "matches none of",
        ),
        (lambda: bucket(bucket="other-bucket"), "artifact-read", "target", "matches none of"),
        (
            lambda: key(key=KEY.replace(TOOLING, TOKEN)),
            "artifact-decrypt",
            "target",
            "matches none of",
        ),
        (lambda: bucket(account=TOKEN), "artifact-read", "target-account", TOKEN),
        (
            lambda: bucket(f"arn:aws:iam::{SVC_A}:role/admin"),
            "artifact-read",
            "principal",
            "matches none of",
        ),
        (
            lambda: bucket(f"arn:aws:iam::{TOOLING}:role/deploy"),
            "artifact-read",
            "principal",
            f"role account {TOOLING}",
        ),
        (lambda: bucket(SVC_A), "artifact-read", "principal", "account principal"),
        (lambda: key(f"arn:aws:iam::{SVC_A}:role/admin"), "artifact-decrypt", "principal", "role"),
        (lambda: bucket(access="write"), "artifact-read", "access", "'write'"),
        (lambda: bucket(access="read-write"), "artifact-read", "access", "'read-write'"),
        (
            lambda: key(operations=["Decrypt", "Encrypt"]),
            "artifact-decrypt",
            "operations",
            "Encrypt",
        ),
        (
            lambda: key(operations=["GenerateDataKey"]),
            "artifact-decrypt",
            "operations",
            "GenerateDataKey",
        ),
        (
            lambda: authorizer(principal="events.amazonaws.com"),
            "authorizer-invoke",
            "principal",
            "events.amazonaws.com",
        ),
        (
            lambda: authorizer(source_arn=f"arn:aws:execute-api:us-east-1:{SVC_A}:abc123/stages/*"),
            "authorizer-invoke",
            "principal",
            "matches none of",
        ),
        (
            lambda: authorizer(source_arn=None),
            "authorizer-invoke",
            "principal",
            "requires a source_arn",
        ),
        (
            lambda: authorizer(TOOLING),  # a registered account, not one the rule names
            "authorizer-invoke",
            "principal",
            f"source_account {TOOLING}",
        ),
    ],
)
def test_refusal_names_rule_and_check(rules: RuleSet, grant: Any, rule: str, check: str, detail: str) -> None:
    error = denied(rules, grant())
    assert (error.rule_id, error.check) == (rule, check)
    assert error.message.startswith(f"rule {rule!r} refused the grant: {check}: ")
    assert detail in error.message


def test_refusal_names_the_rule_that_got_furthest(rules: RuleSet) -> None:
    """Two lambda rules: the one whose target matched is named, not the first one listed."""
    grant = spec(kind="lambda-invoke", function=SHARED, principal=SVC_B)
    error = denied(rules, grant)
    assert (error.rule_id, error.check) == ("account-invoke", "principal")


def test_organization_principal_needs_a_rule_that_allows_it(rules: RuleSet) -> None:
    grant = authorizer(principal="*", principal_org_id=ORG, source_arn=None, source_account=None)
    error = denied(rules, grant)
    assert (error.rule_id, error.check) == ("authorizer-invoke", "principal")
    assert "organization-wide" in error.message


# -- guardrails ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "check"),
    [
        (lambda: bucket(f"arn:aws:iam::{OUTSIDE}:role/deploy"), "guardrail-foreign-principal"),
        (lambda: bucket(OUTSIDE), "guardrail-foreign-principal"),
        (lambda: key(f"arn:aws:iam::{OUTSIDE}:role/deploy"), "guardrail-foreign-principal"),
        (lambda: key(OUTSIDE), "guardrail-foreign-principal"),
        (lambda: authorizer(OUTSIDE), "guardrail-foreign-source"),
        (
            lambda: authorizer(SVC_A, source_arn=f"arn:aws:execute-api:us-east-1:{OUTSIDE}:abc123/authorizers/*"),
            "guardrail-foreign-source",
        ),
        (lambda: bucket(account=OUTSIDE), "guardrail-target-account"),
        (lambda: key(key=KEY.replace(TOOLING, OUTSIDE)), "guardrail-target-account"),
        (lambda: authorizer(function=FUNCTION.replace(TOKEN, OUTSIDE)), "guardrail-target-account"),
        (
            lambda: spec(
                kind="lambda-invoke",
                function=FUNCTION,
                principal="*",
                principal_org_id="o-zzzzzzzzzz",
            ),
            "guardrail-wildcard-principal",
        ),
        (
            lambda: spec(
                kind="lambda-invoke",
                function=FUNCTION,
                principal="s3.amazonaws.com",
                source_arn="arn:aws:s3:::some-bucket",  # names no account
            ),
            "guardrail-unbound-service",
        ),
    ],
)
def test_guardrails_apply_before_any_rule(rules: RuleSet, grant: Any, check: str) -> None:
    error = denied(rules, grant())
    assert error.check == check
    assert error.rule_id is None
    assert error.message.startswith("guardrail: ")


def test_guardrails_hold_even_for_a_rule_that_allows_everything() -> None:
    """A reviewed rule that names 'organization' everywhere still cannot reach outside it."""
    wide = copy.deepcopy(RULES)
    wide["rules"] = [
        {
            "id": "too-wide",
            "callers": ["ci-tooling"],
            "kind": "bucket-access",
            "targets": ["arn:*:s3:::*"],
            "target_accounts": ["organization"],
            "principals": {
                "roles": ["arn:*:iam::*:role/*"],
                "role_accounts": ["organization"],
                "accounts": ["organization"],
            },
            "access": ["read", "write", "read-write"],
        }
    ]
    ruleset = RuleSet.model_validate(wide)
    assert ruleset.authorize("ci-tooling", bucket(access="read-write")).rule_id == "too-wide"
    assert denied(ruleset, bucket(OUTSIDE)).check == "guardrail-foreign-principal"
    assert denied(ruleset, bucket(account=OUTSIDE)).check == "guardrail-target-account"


def test_wildcard_principal_without_an_organization_is_refused() -> None:
    no_org = copy.deepcopy(RULES)
    del no_org["organization"]["id"]
    no_org["rules"] = [r for r in no_org["rules"] if r["id"] != "account-invoke"]
    ruleset = RuleSet.model_validate(no_org)
    grant = spec(kind="lambda-invoke", function=FUNCTION, principal="*", principal_org_id=ORG)
    error = denied(ruleset, grant)
    assert error.check == "guardrail-wildcard-principal"
    assert "none registered" in error.message


def test_unbound_service_principal_guardrail_backs_up_the_model(rules: RuleSet) -> None:
    """The request model refuses an unbound service principal; the guardrail refuses it too."""
    with pytest.raises(ValidationError, match="confused-deputy"):
        spec(kind="lambda-invoke", function=FUNCTION, principal="apigateway.amazonaws.com")
    unbound = LambdaInvokeGrant.model_construct(
        kind="lambda-invoke", function=FUNCTION, principal="apigateway.amazonaws.com"
    )
    assert denied(rules, unbound).check == "guardrail-unbound-service"


@settings(max_examples=100, deadline=None)
@given(
    account=st.sampled_from([TOOLING, TOKEN, SVC_A, SVC_B]) | st.from_regex(r"\A[0-9]{12}\Z"),
    role=st.from_regex(r"\A[A-Za-z0-9+=,.@_-]{1,20}\Z"),
    which=st.sampled_from(["bucket-role", "bucket-account", "key-role", "key-account", "source"]),
)
def test_a_principal_is_allowed_exactly_when_its_account_is_registered(account: str, role: str, which: str) -> None:
    """Even with rules that allow every principal, the registered accounts are the fence."""
    wide = copy.deepcopy(RULES)
    for rule in wide["rules"]:
        rule["principals"] = (
            {
                "roles": ["arn:*:iam::*:role/*"],
                "role_accounts": ["organization"],
                "accounts": ["organization"],
            }
            if rule["kind"] != "lambda-invoke"
            else {
                "services": [{"service": "apigateway.amazonaws.com", "source_accounts": ["organization"]}],
                "accounts": ["organization"],
            }
        )
    ruleset = RuleSet.model_validate(wide)
    grant = {
        "bucket-role": lambda: bucket(f"arn:aws:iam::{account}:role/{role}"),
        "bucket-account": lambda: bucket(account),
        "key-role": lambda: key(f"arn:aws:iam::{account}:role/{role}"),
        "key-account": lambda: key(account),
        "source": lambda: authorizer(account),
    }[which]()
    if account in ruleset.registered:
        assert ruleset.authorize("ci-tooling", grant).rule_id
    else:
        assert denied(ruleset, grant).check in (
            "guardrail-foreign-principal",
            "guardrail-foreign-source",
        )


# -- ARN patterns --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "arn", "expected"),
    [
        ("arn:aws:iam::*:role/deploy", f"arn:aws:iam::{SVC_A}:role/deploy", True),
        ("arn:aws:iam::*:role/deploy", f"arn:aws:iam::{SVC_A}:role/deployer", False),
        ("arn:aws:iam::*:role/*", f"arn:aws:iam::{SVC_A}:role/path/deploy", True),
        ("arn:aws:s3:::dh-*", "arn:aws:s3:::dh-artifacts", True),
        # a wildcard never crosses a ':' between ARN parts
        ("arn:aws:lambda:*:222222222222:function:*", FUNCTION, True),
        ("arn:aws:lambda:*", FUNCTION, False),
        ("arn:aws:lambda:us-*:*:function:token-authorizer", FUNCTION, True),
        ("arn:aws:lambda:*:*:function:token-*", FUNCTION.replace(TOKEN, "*"), True),
        ("arn:aws:lambda:*:*:function:x?", "arn:aws:lambda:us-east-1:1:function:xy", True),
        ("arn:aws:kms:*:111111111111:key/*", f"arn:aws:kms:us-east-1:{TOKEN}:key/x", False),
    ],
)
def test_arn_matches_part_by_part(pattern: str, arn: str, expected: bool) -> None:
    assert arn_matches(pattern, arn) is expected


def test_resource_part_wildcard_does_not_reach_into_qualifiers(rules: RuleSet) -> None:
    """A function qualifier is part of the resource: 'token-authorizer' does not match ':live'."""
    grant = authorizer(function=FUNCTION + ":live")
    assert denied(rules, grant).check == "target"


# -- the rules file itself --------------------------------------------------------


def _invalid(change: Any) -> str:
    data = copy.deepcopy(RULES)
    change(data)
    with pytest.raises(ValidationError) as info:
        RuleSet.model_validate(data)
    return str(info.value)


def test_rule_file_checks() -> None:
    assert "unique" in _invalid(lambda d: d["rules"].append(copy.deepcopy(d["rules"][0])))
    assert "unknown account name" in _invalid(lambda d: d["rules"][2]["principals"].update(role_accounts=["nobody"]))
    assert "not registered" in _invalid(lambda d: d["rules"][2].update(target_accounts=[OUTSIDE]))
    assert "unknown kind" in _invalid(lambda d: d["rules"][0].update(kind="dynamodb-table"))
    assert "not a lambda ARN pattern" in _invalid(lambda d: d["rules"][0].update(targets=["arn:aws:s3:::x"]))
    assert "access levels" in _invalid(lambda d: d["rules"][2].update(access=[]))
    assert "target_accounts" in _invalid(lambda d: d["rules"][2].update(target_accounts=[]))
    assert "access applies" in _invalid(lambda d: d["rules"][3].update(access=["read"]))
    assert "operations" in _invalid(lambda d: d["rules"][3].update(operations=[]))
    assert "operations apply" in _invalid(lambda d: d["rules"][2].update(operations=["Decrypt"]))
    assert "role_accounts" in _invalid(lambda d: d["rules"][2]["principals"].pop("role_accounts"))
    assert "organization principals do not apply to bucket-access" in _invalid(
        lambda d: d["rules"][2]["principals"].update(organization=True)
    )
    assert "organization.id" in _invalid(lambda d: d["organization"].pop("id"))
    # free-form actions or unknown operations are not expressible
    assert "Extra inputs" in _invalid(lambda d: d["rules"][2].update(actions=["s3:*"]))
    assert "literal_error" in _invalid(lambda d: d["rules"][3].update(operations=["CreateGrant"])) or (
        "Input should be" in _invalid(lambda d: d["rules"][3].update(operations=["CreateGrant"]))
    )
    assert "is not an ARN pattern" in _invalid(
        lambda d: d["rules"][0].update(targets=['arn:aws:lambda:*:*:function:"x"'])
    )


def test_rules_file_errors_name_file_and_line(tmp_path: Path) -> None:
    data = copy.deepcopy(RULES)
    data["rules"][2]["access"] = ["everything"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PolicyFileError) as info:
        RuleSet.load(path)
    text = path.read_text().splitlines()
    location, _, message = info.value.message.partition(": ")
    file, _, line = location.rpartition(":")
    assert file == str(path)
    assert "access" in message
    assert "everything" in text[int(line) - 1]


def test_rules_file_refuses_duplicate_yaml_keys(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(RULES, sort_keys=False) + "version: 1\n")
    with pytest.raises(PolicyFileError, match="duplicate key"):
        RuleSet.load(path)


# -- widen-source-arn: how far a rule lets a service principal's source be widened --------


def _widening(source_arns: list[str] | None) -> RuleSet:
    data = copy.deepcopy(RULES)
    rule = data["rules"][0]
    rule["compaction"] = ["widen-source-arn"]
    if source_arns is None:
        rule["principals"]["services"][0].pop("source_arns")
    else:
        rule["principals"]["services"][0]["source_arns"] = source_arns
    return RuleSet.model_validate(data)


def _authorizer(source_arn: str | None, source_account: str | None = SVC_A) -> LambdaInvokeGrant:
    fields = {"kind": "lambda-invoke", "function": FUNCTION, "principal": "apigateway.amazonaws.com"}
    fields |= {"source_arn": source_arn} if source_arn else {}
    fields |= {"source_account": source_account} if source_account else {}
    return LambdaInvokeGrant.model_validate(fields)


def test_widening_is_offered_only_by_a_rule_that_allows_it(rules: RuleSet) -> None:
    grant = _authorizer(f"arn:aws:execute-api:us-east-1:{SVC_A}:a1b2c3d4e5/authorizers/*")
    assert rules.authorize("ci-tooling", grant).source_scope is None
    allowed = _widening(["arn:aws:execute-api:*:*:*/authorizers/*"]).authorize("ci-tooling", grant)
    assert "widen-source-arn" in allowed.compaction
    assert allowed.source_scope is not None
    assert allowed.source_scope.account == SVC_A
    assert allowed.source_scope.source_arn == f"arn:aws:execute-api:us-east-1:{SVC_A}:*/authorizers/*"


def test_widening_keeps_the_rule_pattern_that_allowed_the_grant() -> None:
    rules = _widening([f"arn:aws:execute-api:us-east-1:{SVC_B}:*/*", "arn:aws:execute-api:*:*:*/authorizers/tok*"])
    grant = _authorizer(f"arn:aws:execute-api:us-east-1:{SVC_A}:a1b2c3d4e5/authorizers/tok1")
    scope = rules.authorize("ci-tooling", grant).source_scope
    assert scope is not None
    assert scope.source_arn == f"arn:aws:execute-api:us-east-1:{SVC_A}:*/authorizers/tok*"


def test_a_rule_without_source_arns_widens_to_the_account() -> None:
    grant = _authorizer(f"arn:aws:execute-api:us-east-1:{SVC_A}:a1b2c3d4e5/authorizers/*", source_account=None)
    scope = _widening(None).authorize("ci-tooling", grant).source_scope
    assert scope is not None and scope.account == SVC_A and scope.source_arn is None


def test_a_grant_bound_by_account_only_has_nothing_to_widen() -> None:
    assert _widening(None).authorize("ci-tooling", _authorizer(None)).source_scope is None


def test_widening_is_not_offered_for_other_kinds() -> None:
    data = copy.deepcopy(RULES)
    data["rules"][2]["compaction"] = ["widen-source-arn"]  # bucket-access
    with pytest.raises(ValidationError, match="widen-source-arn"):
        RuleSet.model_validate(data)


_PART = st.sampled_from(["*", "a*", "ab?d*", "abcd1234ef", "*x*"])


@settings(max_examples=300, deadline=None)
@given(
    region=st.sampled_from(["*", "us-east-1", "us-*"]),
    api=st.from_regex(r"[a-z0-9]{10}", fullmatch=True),
    resource_pattern=st.tuples(_PART, st.sampled_from(["authorizers", "*", "autho*"]), _PART),
    account=st.sampled_from([SVC_A, SVC_B]),
)
def test_a_widened_source_never_leaves_the_rule_or_the_account(
    region: str, api: str, resource_pattern: tuple[str, str, str], account: str
) -> None:
    """Every ARN the widened SourceArn admits is one the rule admits, in the grant's own account."""
    pattern = f"arn:aws:execute-api:{region}:*:{'/'.join(resource_pattern)}"
    source_arn = f"arn:aws:execute-api:us-east-1:{account}:{api}/authorizers/tok"
    grant = _authorizer(source_arn, source_account=account)
    rules = _widening([pattern])
    if not arn_matches(pattern, source_arn):
        with pytest.raises(DeniedError):
            rules.authorize("ci-tooling", grant)
        return
    scope = rules.authorize("ci-tooling", grant).source_scope
    assert scope is not None and scope.source_arn is not None
    assert scope.account == account
    widened = scope.source_arn.split(":", 5)
    assert widened[:5] == ["arn", "aws", "execute-api", "us-east-1", account]
    # the resource part is the rule's own, so whatever it matches the rule matches
    assert widened[5] == pattern.split(":", 5)[5]
    assert arn_matches(pattern, scope.source_arn)
