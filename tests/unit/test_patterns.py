"""Pattern containment (``deploy_helper.trust.patterns``) against brute force, and where rules use it.

The brute force is independent of the code under test: a pattern becomes a regular
expression (``*`` → ``.*``, ``?`` → ``.``, everything else escaped), and every string
over the patterns' characters plus one more is tried up to a length bound. Each
answer is checked both ways: "covered" must survive the enumeration, and "not
covered" must come with a witness the regular expressions confirm.
"""

from __future__ import annotations

import itertools
import re
from fnmatch import fnmatchcase
from functools import cache

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from deploy_helper.trust import patterns
from deploy_helper.trust.patterns import PatternTooComplexError, arn_witness, covers, matches, normalize, witness
from deploy_helper.trust.rules import arn_matches

#: Strings up to this long are tried; a counterexample of two patterns of up to 5 (one
#: literal character: 7) characters is far shorter when there is one.
MAX_LEN = 7
MAX_LEN_ONE_LETTER = 10


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.DOTALL)


def _matches(pattern: str, value: str) -> bool:
    return _regex(pattern).fullmatch(value) is not None


def _strings(alphabet: str, max_len: int) -> list[str]:
    return ["".join(t) for n in range(max_len + 1) for t in itertools.product(alphabet, repeat=n)]


def _brute_counterexample(rule: str, grant: str, max_len: int) -> str | None:
    # the patterns' literal characters and one that appears in neither (a '*' or '?' in a
    # string is such a character too: only wildcards match it)
    alphabet = "".join(sorted((set(rule + grant) - {"*", "?"}) | {"c"}))
    return next((s for s in _strings(alphabet, max_len) if _matches(grant, s) and not _matches(rule, s)), None)


_pattern = st.text(alphabet="ab*?", max_size=5)
_one_letter_pattern = st.text(alphabet="a*?", max_size=7)
_pattern_with_bracket = st.text(alphabet="a[]*?", max_size=4)


def _check(rule: str, grant: str, max_len: int = MAX_LEN) -> None:
    found = witness(rule, grant)
    if found is None:
        assert _brute_counterexample(rule, grant, max_len) is None, (rule, grant)
    else:
        assert _matches(grant, found), (rule, grant, found)
        assert not _matches(rule, found), (rule, grant, found)
    assert covers(rule, grant) is (found is None)


@settings(max_examples=1500, deadline=None)
@given(rule=_pattern, grant=_pattern)
@example(rule="abce?/authorizers/*", grant="abce*/authorizers/*")  # the reported case: '?' does not admit '*'
@example(rule="*a?*", grant="*a*a*")  # covered, though no star-to-star alignment shows it
@example(rule="*?", grant="?*")
@example(rule="?*", grant="*?")
@example(rule="a?", grant="a*")
@example(rule="*", grant="")
def test_containment_agrees_with_brute_force(rule: str, grant: str) -> None:
    _check(rule, grant)


@settings(max_examples=1000, deadline=None)
@given(rule=_one_letter_pattern, grant=_one_letter_pattern)
@example(rule="*a*a?", grant="*aaa*")  # the grant's '*' must be able to read several characters
def test_longer_patterns_over_one_letter_agree_with_brute_force(rule: str, grant: str) -> None:
    _check(rule, grant, MAX_LEN_ONE_LETTER)


@settings(max_examples=300, deadline=None)
@given(rule=_pattern_with_bracket, grant=_pattern_with_bracket)
def test_brackets_are_characters_not_classes(rule: str, grant: str) -> None:
    _check(rule, grant)


@settings(max_examples=500, deadline=None)
@given(rule=_pattern, value=st.text(alphabet="ab*?[c", max_size=6))
def test_a_literal_value_is_matched_as_text(rule: str, value: str) -> None:
    assert matches(rule, value) is _matches(rule, value)


@given(pattern=st.text(alphabet="ab*?", max_size=6))
def test_normalizing_keeps_the_language(pattern: str) -> None:
    shape = normalize(pattern)
    assert "*?" not in shape and "**" not in shape
    assert all(_matches(shape, s) is _matches(pattern, s) for s in _strings("abc", 6))


def test_fnmatch_would_have_admitted_the_wider_grant() -> None:
    """The control: the old matching took a grant's '*' as a character a rule's '?' matches."""
    rule, grant = "abce?/authorizers/*", "abce*/authorizers/*"
    assert fnmatchcase(grant, rule)
    assert not covers(rule, grant)
    assert fnmatchcase("[", "[[]") and not matches("[[]", "[")


RULE = "arn:aws:execute-api:*:*:*/authorizers/*"
API = "arn:aws:execute-api:us-east-1:333333333333:a1b2c3d4e5"


@pytest.mark.parametrize(
    ("pattern", "arn", "expected"),
    [
        (RULE, f"{API}/authorizers/*", True),
        (RULE, f"{API}/authorizers/tok", True),
        (RULE, "arn:aws:execute-api:us-east-1:333333333333:*/authorizers/*", True),
        (RULE, f"{API}/*", False),  # reaches methods as well as authorizers
        (RULE, f"{API}/author*", False),
        (RULE, f"{API}/authorizers*", False),
        ("arn:aws:execute-api:*:*:a1b2c3d4e?/authorizers/*", f"{API[:-1]}*/authorizers/*", False),
        ("arn:aws:execute-api:*:*:a1b2c3d4e?/authorizers/*", f"{API}/authorizers/*", True),
        ("arn:aws:execute-api:*:*:*:x", f"{API}:x", True),  # the resource part keeps its ':'
        ("arn:aws:execute-api:*:*:*/authorizers/*", f"{API}/*:authorizers/x", False),
        ("arn:aws:execute-api:us-east-?:*:*", "arn:aws:execute-api:us-east-1:333333333333:x", True),
        ("arn:aws:execute-api:*:*:x", "arn:aws:execute-api:*:*:x", True),
        ("arn:aws:execute-api:us-*:*:x", "arn:aws:execute-api:*:333333333333:x", False),
    ],
)
def test_arn_patterns_cover_part_by_part(pattern: str, arn: str, expected: bool) -> None:
    assert arn_matches(pattern, arn) is expected
    beyond = arn_witness(pattern, arn)
    assert (beyond is None) is expected
    if beyond is not None:  # a real ARN the grant's pattern admits and the rule's does not
        assert len(beyond.split(":", 5)) == 6
        parts = list(zip(pattern.split(":", 5), arn.split(":", 5), beyond.split(":", 5), strict=True))
        assert all(_matches(a, b) for _, a, b in parts)
        assert not all(_matches(p, b) for p, _, b in parts)


def test_a_long_hostile_value_is_decided_exactly() -> None:
    """The longest value a source ARN may carry, full of wildcards and distinct characters."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789/._-"
    value = "".join(f"*{chars[i % len(chars)]}?" for i in range(300))[:900]
    assert not covers("*/authorizers/*", value)
    assert covers("*", value)
    assert covers("?" * 50 + "*", value)


def test_a_comparison_beyond_the_bound_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patterns, "MAX_STATES", 50)
    with pytest.raises(PatternTooComplexError) as caught:
        witness("*a??????*", "*" + "ab*" * 20)
    assert caught.value.check == "pattern-too-complex"


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("ArnPattern", "arn:aws:execute-api:*:*:[a-z]*/authorizers/*"),
        ("ArnPattern", "arn:aws:iam::*:role/[!x]*"),
        ("SourceArn", "arn:aws:execute-api:us-east-1:333333333333:[a-z]*/authorizers/*"),
        ("SourceArn", "arn:aws:execute-api:us-east-1:333333333333:abc?/authorizers/*"),
        ("RoleArn", "arn:aws:iam::333333333333:role/deploy[1]"),
        ("LambdaFunctionArn", "arn:aws:lambda:us-east-1:222222222222:function:token-[a]"),
    ],
)
def test_no_rule_or_grant_can_carry_a_character_class(annotation: str, value: str) -> None:
    """'[' never reaches matching: rule patterns and grant ARNs refuse it (and a grant's '?') when parsed."""
    from pydantic import TypeAdapter, ValidationError

    from deploy_helper.trust import identifiers, rules

    with pytest.raises(ValidationError):
        TypeAdapter(getattr(rules, annotation, None) or getattr(identifiers, annotation)).validate_python(value)


def test_widen_source_arn_scope_holds_every_arn_the_grant_admits() -> None:
    """``widen-source-arn``: a wildcard grant joins a shared permission only within its rule, and inside it."""
    from test_rules import SVC_A, _authorizer, _widening

    from deploy_helper.exceptions import DeniedError

    grant = _authorizer(f"arn:aws:execute-api:us-east-1:{SVC_A}:a1b2c3d4e*/authorizers/*")
    with pytest.raises(DeniedError) as caught:
        _widening(["arn:aws:execute-api:*:*:a1b2c3d4e?/authorizers/*"]).authorize("ci-tooling", grant)
    assert caught.value.check == "principal"
    scope = _widening(["arn:aws:execute-api:*:*:*/authorizers/*"]).authorize("ci-tooling", grant).source_scope
    assert scope is not None and scope.source_arn is not None
    assert arn_matches(scope.source_arn, grant.source_arn)
    assert arn_matches("arn:aws:execute-api:*:*:*/authorizers/*", scope.source_arn)


def test_a_comparison_too_large_is_a_denial_of_the_grant(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_rules import SVC_A, _authorizer, _widening

    from deploy_helper.exceptions import DeniedError

    monkeypatch.setattr(patterns, "MAX_STATES", 20)
    grant = _authorizer(f"arn:aws:execute-api:us-east-1:{SVC_A}:{'a*' * 30}/authorizers/*")
    with pytest.raises(DeniedError) as caught:
        _widening(["arn:aws:execute-api:*:*:*a??????*/authorizers/*"]).authorize("ci-tooling", grant)
    assert caught.value.check == "pattern-too-complex"
    assert "use a simpler pattern" in caught.value.message
