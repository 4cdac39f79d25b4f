"""The closed registry of grant kinds: every kind describes itself fully and consistently.

Loops over ``deploy_helper.grants.REGISTRY`` so a new kind is checked the moment it
is registered. (That the bootstrap role grants each kind's permissions is proved
with the policy evaluator in ``test_bootstrap_templates``.)
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.grants import REGISTRY, AnyGrant, GrantKind, catalog, register
from deploy_helper.grants.base import GrantSpec
from deploy_helper.request import RequestPayload
from deploy_helper.trust.identifiers import ACCOUNT_RE
from deploy_helper.trust.rules import RuleSet
from pipeline_hooks.grants_file import load_grants_file

KINDS = sorted(REGISTRY)
GRANT = TypeAdapter(AnyGrant)
#: AddPermission's StatementId: the strictest of the three identities (Sid, grant Name).
STATEMENT_ID = re.compile(r"[a-zA-Z0-9-_]{1,100}")


def docstring_example(obj: Any) -> Any:
    """The YAML block after ``Example::`` in ``obj``'s docstring."""
    doc = inspect.getdoc(obj) or ""
    assert "Example::" in doc, f"{obj.__name__} has no 'Example::' block"
    block = doc.split("Example::", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith(" "):
            break
        lines.append(line)
    return yaml.safe_load("\n".join(lines))


def test_registry_is_not_empty_and_has_the_designed_kinds() -> None:
    designed = {"lambda-invoke", "bucket-access", "kms-grant", "kms-key-policy", "ecr-pull", "sqs-send"}
    assert designed | {"sns-publish", "secret-read", "events-put"} <= set(REGISTRY)


@pytest.mark.parametrize("name", KINDS)
def test_registry_name_equals_the_model_kind_literal(name: str) -> None:
    kind = REGISTRY[name]
    assert kind.kind == name
    annotation = kind.spec.model_fields["kind"].annotation
    assert typing.get_origin(annotation) is typing.Literal
    assert typing.get_args(annotation) == (name,)


def test_every_registered_spec_is_a_request_grant() -> None:
    """The request's discriminated union and the registry list the same kinds."""
    union = typing.get_args(typing.get_args(AnyGrant)[0])
    assert {m.model_fields["kind"].annotation.__args__[0] for m in union} == set(REGISTRY)
    assert set(union) == {REGISTRY[k].spec for k in KINDS}


@pytest.mark.parametrize("name", KINDS)
def test_example_validates(name: str) -> None:
    kind = REGISTRY[name]
    spec = GRANT.validate_python(kind.example)
    assert isinstance(spec, kind.spec)
    assert spec.kind == name


@pytest.mark.parametrize("name", KINDS)
def test_docstring_example_validates_and_matches_the_example(name: str) -> None:
    kind = REGISTRY[name]
    from_doc = GRANT.validate_python(docstring_example(kind.spec))
    assert isinstance(from_doc, kind.spec)
    assert ACCOUNT_RE.fullmatch(kind.target_account(from_doc))


def test_request_docstring_example_validates() -> None:
    payload = RequestPayload.model_validate(docstring_example(RequestPayload))
    assert payload.grants


@pytest.mark.parametrize("name", KINDS)
def test_permissions_are_real_api_actions_of_the_kinds_service(name: str) -> None:
    kind = REGISTRY[name]
    assert kind.permissions, f"{name} declares no permissions"
    assert len(set(kind.permissions)) == len(kind.permissions)
    operations = set(botocore.session.get_session().get_service_model(kind.service).operation_names)
    for permission in kind.permissions:
        prefix, _, action = permission.partition(":")
        assert prefix == kind.service, permission  # boto3 service name = IAM prefix for every kind
        assert action in operations, f"{permission} is not an API action of {kind.service}"
        assert "*" not in permission


@pytest.mark.parametrize("name", KINDS)
def test_example_identity_is_deterministic_and_safe_as_statement_id(name: str) -> None:
    kind = REGISTRY[name]
    spec = GRANT.validate_python(kind.example)
    again = GRANT.validate_python(dict(kind.example))
    grant_id = kind.grant_id(spec)
    assert grant_id == kind.grant_id(again)
    assert grant_id.startswith(PRODUCT_PREFIX)
    assert STATEMENT_ID.fullmatch(grant_id)


@pytest.mark.parametrize("name", KINDS)
def test_identity_changes_with_every_field(name: str) -> None:
    """Two grants that differ anywhere never share a statement id (no silent overwrite)."""
    kind = REGISTRY[name]
    base = kind.example
    spec = GRANT.validate_python(base)
    variants = kind.variants
    assert variants, f"{name} declares no variants"
    for field, value in variants.items():
        other = GRANT.validate_python({**base, field: value})
        assert isinstance(other, kind.spec)
        assert kind.grant_id(other) != kind.grant_id(spec), field


@pytest.mark.parametrize("name", KINDS)
def test_resource_and_principal_of_the_example(name: str) -> None:
    kind = REGISTRY[name]
    spec = GRANT.validate_python(kind.example)
    resource = kind.resource(spec)
    assert resource.startswith(f"arn:aws:{kind.service}:")
    assert kind.principal(spec) in spec.model_dump().values()


@pytest.mark.parametrize("name", KINDS)
def test_specs_are_frozen_and_forbid_unknown_fields(name: str) -> None:
    kind = REGISTRY[name]
    spec = GRANT.validate_python(kind.example)
    with pytest.raises(ValidationError):
        spec.kind = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        GRANT.validate_python({**kind.example, "actions": ["*"]})


@pytest.mark.parametrize("name", KINDS)
def test_kind_implements_the_whole_interface(name: str) -> None:
    kind = REGISTRY[name]
    assert isinstance(kind, GrantKind)
    assert issubclass(kind.spec, GrantSpec)
    assert not inspect.isabstract(type(kind))
    assert kind.service in botocore.session.get_session().get_available_services()
    assert inspect.getdoc(type(kind)), f"{name} needs a docstring"


@pytest.mark.parametrize("name", KINDS)
def test_policy_kinds_declare_their_size_limit_and_cite_it(name: str) -> None:
    """A kind that writes a policy document names AWS's limit, and its module says where it is documented."""
    kind = REGISTRY[name]
    if kind.size_limit is None:  # grants that are separate objects (KMS grants): no document to outgrow
        assert not kind.serialize_writes
        return
    assert 1024 <= kind.size_limit <= 64 * 1024
    module = inspect.getsource(inspect.getmodule(type(kind)))  # type: ignore[arg-type]
    shown = {f"{kind.size_limit:,}", f"{kind.size_limit:_}", f"{kind.size_limit // 1024} * 1024"}
    assert any(text in module for text in shown), f"{name}: cite the {kind.size_limit}-byte limit in the module"


@pytest.mark.parametrize("name", KINDS)
def test_access_levels_are_named_and_never_wildcards(name: str) -> None:
    """Named access levels map to fixed actions of the kind's own service; specs accept only those names."""
    kind = REGISTRY[name]
    for level, actions in kind.access_levels.items():
        assert re.fullmatch(r"[a-z][a-z-]+", level)
        assert actions and all(a.startswith(f"{kind.service}:") and "*" not in a for a in actions), level
        assert GRANT.validate_python({**kind.example, "access": level})
    if kind.access_levels:
        assert kind.example["access"] in kind.access_levels
        with pytest.raises(ValidationError):
            GRANT.validate_python({**kind.example, "access": "*"})
    else:
        assert "access" not in kind.spec.model_fields


@pytest.mark.parametrize("name", KINDS)
def test_rule_of_the_kind_validates_from_the_registry_alone(name: str) -> None:
    """A rule for every kind can be written from what the kind declares (rules have no per-kind code)."""
    from deploy_helper.trust.rules import Rule

    kind = REGISTRY[name]
    spec = GRANT.validate_python(kind.example)
    rule = Rule.model_validate(
        {
            "id": "r",
            "callers": ["ci"],
            "kind": name,
            "targets": [kind.resource(spec)],
            "target_accounts": [] if kind.resource_names_account else [kind.target_account(spec)],
            "principals": {"accounts": ["333333333333"]},
            "access": sorted(kind.access_levels),
            "operations": list(kind.operation_names),
        }
    )
    assert rule.kind == name
    if "services" not in kind.principal_forms:
        with pytest.raises(ValidationError, match="services principals do not apply"):
            Rule.model_validate(
                {
                    **rule.model_dump(),
                    "principals": {"services": [{"service": "sns.amazonaws.com", "source_accounts": ["x"]}]},
                }
            )


def test_registry_is_closed_to_duplicates() -> None:
    before = dict(REGISTRY)
    with pytest.raises(RuntimeError, match="registered twice"):
        register(REGISTRY[KINDS[0]])
    assert before == REGISTRY


def test_an_unregistered_kind_is_not_a_grant() -> None:
    with pytest.raises(ValidationError):
        GRANT.validate_python({"kind": "ecr-pull", "repository": "x"})


# -- examples and the README, generated or checked from the registry ---------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_has_an_example_file_the_shipped_rules_allow(name: str) -> None:
    """``examples/kinds/<kind>.yaml`` is a grants file of that kind, allowed by ``policies/rules.yaml``."""
    grants_file = load_grants_file(ROOT / "examples" / "kinds" / f"{name}.yaml", {})
    rules = RuleSet.load(ROOT / "policies" / "rules.yaml")
    specs = [GRANT.validate_python(grant) for grant in grants_file.grants]
    assert specs and {spec.kind for spec in specs} == {name}
    assert grants_file.caller is not None
    rule_kinds = {rule.id: rule.kind for rule in rules.rules}
    assert {rule_kinds[rules.authorize(grants_file.caller, spec).rule_id] for spec in specs} == {name}


def test_the_readme_kinds_table_is_the_registrys() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    begin, end = "<!-- kinds: generated by `deploy-helper kinds --markdown` -->", "<!-- /kinds -->"
    assert begin in readme and end in readme, "the README must keep the generated kinds table between its markers"
    table = readme.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == catalog.markdown_table(), "run `deploy-helper kinds --markdown` and paste it into the README"
    for name in KINDS:
        assert f"| `{name}` |" in table


def test_kinds_command_lists_every_kind_from_the_registry() -> None:
    from click.testing import CliRunner

    from deploy_helper.cli import main

    result = CliRunner().invoke(main, ["kinds", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [entry["kind"] for entry in listed] == list(REGISTRY)
    for entry in listed:
        kind = REGISTRY[entry["kind"]]
        assert entry["permissions"] == list(kind.permissions)
        assert entry["size_limit"] == kind.size_limit
        assert entry["access_levels"] == {k: list(v) for k, v in kind.access_levels.items()}
    table = CliRunner().invoke(main, ["kinds"])
    assert table.exit_code == 0
    assert all(name in table.output for name in KINDS)


@pytest.mark.parametrize("name", KINDS)
def test_custom_resource_properties_are_derived_from_the_spec(name: str) -> None:
    """A ``Custom::DeployHelperGrant`` of every kind: PascalCase properties of its fields, nothing per kind."""
    from deploy_helper.entry.custom_resource import grant_from_properties

    def pascal(field: str) -> str:
        return "".join(part[:1].upper() + part[1:] for part in field.split("_"))

    kind = REGISTRY[name]
    properties = {pascal(k): v for k, v in kind.example.items() if k != "kind"}
    spec, plan = grant_from_properties({"ServiceToken": "token", "Kind": name, **properties})
    assert spec == GRANT.validate_python(kind.example)
    assert plan is False
    with pytest.raises(Exception, match="unknown property 'Actions'"):
        grant_from_properties({"Kind": name, **properties, "Actions": ["*"]})
