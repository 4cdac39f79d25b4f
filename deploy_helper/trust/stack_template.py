"""Reading a stack's template and resolving the intrinsic functions of one resource.

A custom-resource event carries its properties *resolved* (CloudFormation has
already replaced ``!Ref`` and ``!Sub``), while ``GetTemplate`` returns them as
written. To confirm that an event's properties are the ones in the stack's
template, the broker resolves the template's values with what the stack
itself reports — its parameters, the pseudo parameters of its ARN and the
physical ids of its resources — and compares the results.

Only what can be resolved exactly from those facts is supported:

- ``Ref`` (parameters, pseudo parameters, resources), ``Fn::Sub`` (both
  forms), ``Fn::Join``, ``Fn::Select``, ``Fn::Split``, ``Fn::FindInMap``;
- anything else (``Fn::GetAtt``, ``Fn::ImportValue``, ``Fn::If``, dynamic
  references, ``NoEcho`` parameters) cannot be confirmed: ``Unresolvable``
  names the property and says how to write it instead.

CloudFormation sends every scalar of ``ResourceProperties`` as a string
(``true`` → ``"true"``, ``3`` → ``"3"``); ``normalize`` brings both sides to
that form before they are compared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Callable

#: How many nested intrinsic functions are followed before giving up.
MAX_DEPTH = 32
_SUB_VAR = re.compile(r"\$\{([^}]*)\}")
_NO_VALUE = object()


class Unresolvable(Exception):
    """A template value the broker cannot reproduce from what the stack reports."""


class _TemplateLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (``!Ref``, ``!Sub``, ``!GetAtt`` ...)."""


def _construct_tag(loader: _TemplateLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _construct_tag)


def load_template(body: Any) -> dict[str, Any]:
    """The template as a dict, from ``GetTemplate``'s ``TemplateBody`` (decoded JSON, or YAML)."""
    if isinstance(body, dict):
        return body
    if not isinstance(body, str):
        raise Unresolvable("the stack's template is neither JSON nor YAML text")
    try:
        data = yaml.load(body, Loader=_TemplateLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise Unresolvable(f"the stack's template cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise Unresolvable("the stack's template is not a mapping")
    return data


def normalize(value: Any) -> Any:
    """Scalars as CloudFormation sends them in ``ResourceProperties`` (strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in value.items()}
    return value


@dataclass
class StackFacts:
    """What the stack reports about itself; the only inputs of resolution.

    ``resources`` is called at most once, and only when a ``Ref`` names a
    resource, so the usual template costs no ``DescribeStackResources`` call.
    """

    template: dict[str, Any]
    stack_id: str
    parameters: dict[str, str]
    resources: Callable[[], dict[str, str]]
    _physical: dict[str, str] | None = field(default=None, repr=False)

    @property
    def partition(self) -> str:
        return self.stack_id.split(":")[1]

    @property
    def region(self) -> str:
        return self.stack_id.split(":")[3]

    @property
    def account(self) -> str:
        return self.stack_id.split(":")[4]

    def pseudo(self, name: str) -> Any:
        values = {
            "AWS::AccountId": self.account,
            "AWS::Region": self.region,
            "AWS::Partition": self.partition,
            "AWS::StackId": self.stack_id,
            "AWS::StackName": self.stack_id.split("/")[1],
            "AWS::URLSuffix": "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com",
            "AWS::NoValue": _NO_VALUE,
        }
        if name not in values:
            raise Unresolvable(f"the pseudo parameter {name} cannot be confirmed; use a literal value")
        return values[name]

    def ref(self, name: str) -> Any:
        if name.startswith("AWS::"):
            return self.pseudo(name)
        declared = (self.template.get("Parameters") or {}).get(name)
        if declared is not None:
            if isinstance(declared, dict) and str(declared.get("NoEcho", "")).lower() == "true":
                raise Unresolvable(f"parameter {name} is NoEcho, so the stack does not report its value")
            if name not in self.parameters:
                raise Unresolvable(f"the stack reports no value for parameter {name}")
            value = self.parameters[name]
            kind = str(declared.get("Type", "")) if isinstance(declared, dict) else ""
            if kind == "CommaDelimitedList" or kind.startswith("List<"):
                return [v.strip() for v in value.split(",")]
            return value
        if name in (self.template.get("Resources") or {}):
            if self._physical is None:
                self._physical = self.resources()
            if name not in self._physical:
                raise Unresolvable(f"resource {name} has no physical id yet")
            return self._physical[name]
        raise Unresolvable(f"Ref {name!r} names neither a parameter nor a resource of the template")


def resolve(value: Any, facts: StackFacts, depth: int = 0) -> Any:
    """``value`` with every supported intrinsic function evaluated; raises ``Unresolvable``."""
    if depth > MAX_DEPTH:
        raise Unresolvable("intrinsic functions are nested too deeply")
    if isinstance(value, list):
        items = [resolve(v, facts, depth + 1) for v in value]
        return [v for v in items if v is not _NO_VALUE]
    if not isinstance(value, dict):
        if isinstance(value, str) and "{{resolve:" in value:
            raise Unresolvable("dynamic references ({{resolve:...}}) cannot be confirmed; use a parameter")
        return value
    if len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return facts.ref(_text(arg, "Ref"))
        if key.startswith("Fn::"):
            return _function(key, arg, facts, depth)
    out = {}
    for k, v in value.items():
        resolved = resolve(v, facts, depth + 1)
        if resolved is not _NO_VALUE:
            out[k] = resolved
    return out


def _function(name: str, arg: Any, facts: StackFacts, depth: int) -> Any:
    if name == "Fn::Sub":
        return _sub(arg, facts, depth)
    if name == "Fn::Join":
        delimiter, items = _pair(arg, name)
        parts = resolve(items, facts, depth + 1)
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise Unresolvable("Fn::Join needs a list of strings")
        return _text(delimiter, name).join(parts)
    if name == "Fn::Select":
        index, items = _pair(arg, name)
        chosen = resolve(items, facts, depth + 1)
        position = int(_text(resolve(index, facts, depth + 1), name))
        if not isinstance(chosen, list) or not 0 <= position < len(chosen):
            raise Unresolvable("Fn::Select index is out of range")
        return chosen[position]
    if name == "Fn::Split":
        delimiter, text = _pair(arg, name)
        return _text(resolve(text, facts, depth + 1), name).split(_text(delimiter, name))
    if name == "Fn::FindInMap":
        if not isinstance(arg, list) or len(arg) != 3:
            raise Unresolvable("Fn::FindInMap needs [map, top-level key, second-level key]")
        keys = [_text(resolve(a, facts, depth + 1), name) for a in arg]
        try:
            return (facts.template.get("Mappings") or {})[keys[0]][keys[1]][keys[2]]
        except (KeyError, TypeError) as exc:
            raise Unresolvable(f"Fn::FindInMap {keys} is not in the template's Mappings") from exc
    raise Unresolvable(
        f"{name} cannot be confirmed against the stack; write the value as a literal, "
        "a Ref to a parameter or resource, or Fn::Sub/Fn::Join of those"
    )


def _sub(arg: Any, facts: StackFacts, depth: int) -> str:
    if isinstance(arg, list):
        template, variables = _pair(arg, "Fn::Sub")
        if not isinstance(variables, dict):
            raise Unresolvable("Fn::Sub variables must be a mapping")
        local = {k: resolve(v, facts, depth + 1) for k, v in variables.items()}
    else:
        template, local = arg, {}
    text = _text(template, "Fn::Sub")

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in local:
            return _text(local[name], "Fn::Sub")
        if "." in name and not name.startswith("AWS::"):
            raise Unresolvable(
                f"${{{name}}} is an attribute (Fn::GetAtt), which cannot be confirmed against "
                "the stack; use a Ref (${Name}) or a parameter"
            )
        return _text(facts.ref(name), "Fn::Sub")

    return _SUB_VAR.sub(one, text)


def _pair(arg: Any, name: str) -> tuple[Any, Any]:
    if not isinstance(arg, list) or len(arg) != 2:
        raise Unresolvable(f"{name} needs a list of two items")
    return arg[0], arg[1]


def _text(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Unresolvable(f"{name} needs a string here")
    return str(value)
