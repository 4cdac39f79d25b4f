"""The closed registry of grant kinds: every kind describes itself fully and consistently.

Loops over ``deploy_helper.grants.REGISTRY`` so a new kind is checked the moment it
is registered. (That the bootstrap role grants each kind's permissions is proved
with the policy evaluator in ``test_bootstrap_templates``.)
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

import botocore.session
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from deploy_helper import PRODUCT_PREFIX
from deploy_helper.grants import REGISTRY, AnyGrant, GrantKind, register
from deploy_helper.grants.base import GrantSpec
from deploy_helper.identifiers import ACCOUNT_RE
from deploy_helper.request import RequestPayload

KINDS = sorted(REGISTRY)
GRANT = TypeAdapter(AnyGrant)
#: AddPermission's StatementId: the strictest of the three identities (Sid, grant Name).
STATEMENT_ID = re.compile(r"[a-zA-Z0-9-_]{1,100}")
#: IAM service prefix of each boto3 service a kind may call.
IAM_PREFIX = {"lambda": "lambda", "s3": "s3", "kms": "kms"}


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
    assert {"lambda-invoke", "bucket-access", "kms-grant"} <= set(REGISTRY)


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
        assert prefix == IAM_PREFIX[kind.service], permission
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
    variants = {
        "lambda-invoke": {
            "source_account": "444444444444",
            "source_arn": base.get("source_arn", "").replace("333333333333", "444444444444"),
        },
        "bucket-access": {"access": "write", "prefix": "x/", "principal": "333333333333"},
        "kms-grant": {"operations": ["Decrypt"], "grantee": "arn:aws:iam::333333333333:role/other"},
    }.get(name, {})
    assert variants, f"add identity variants for {name}"
    for field, value in variants.items():
        other = GRANT.validate_python({**base, field: value})
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
    assert kind.service in IAM_PREFIX
    assert inspect.getdoc(type(kind)), f"{name} needs a docstring"


def test_policy_kinds_declare_their_size_limit() -> None:
    assert REGISTRY["lambda-invoke"].size_limit == 20 * 1024
    assert REGISTRY["bucket-access"].size_limit == 20 * 1024


def test_registry_is_closed_to_duplicates() -> None:
    before = dict(REGISTRY)
    with pytest.raises(RuntimeError, match="registered twice"):
        register(REGISTRY[KINDS[0]])
    assert before == REGISTRY


def test_an_unregistered_kind_is_not_a_grant() -> None:
    with pytest.raises(ValidationError):
        GRANT.validate_python({"kind": "ecr-pull", "repository": "x"})
