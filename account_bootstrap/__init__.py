"""The broker's roles in every target account, and how they get there.

``broker-role.yaml`` is the CloudFormation template of the two roles the broker
assumes in a target account (``deploy-helper-broker`` makes grants,
``deploy-helper-reader`` reads stacks). :mod:`account_bootstrap.rollout`
deploys it with StackSets or account by account; :mod:`account_bootstrap.evaluator`
evaluates its policies offline so tests can prove what the roles may do.

This module holds what the rest share: the bootstrap version, the template's
text and a small renderer that resolves the template's intrinsic functions for
given parameters, so the policies CloudFormation would create can be read and
evaluated without deploying anything.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Mapping

#: The version of ``broker-role.yaml``. Raise it with every change to the roles;
#: the template's trust policies, role tags and ``BootstrapVersion`` output carry it.
BOOTSTRAP_VERSION = 1
#: Tag on both roles that tells the broker (and ``bootstrap status``) the version.
VERSION_TAG = "deploy-helper:bootstrap-version"
#: Tag a resource carries to opt in (its value is the ``OptInTagValue`` parameter).
OPT_IN_TAG = "deploy-helper:managed"
#: Session tag the broker sends: the oldest bootstrap version it supports.
MIN_BOOTSTRAP_SESSION_TAG = "DeployHelperMinBootstrap"
TEMPLATE_NAME = "broker-role.yaml"
DEFAULT_BROKER_ROLE_NAME = "deploy-helper-broker"
DEFAULT_READER_ROLE_NAME = "deploy-helper-reader"


class TemplateError(Exception):
    """The template uses something the renderer does not resolve, or a value is missing."""


@cache
def template_body() -> str:
    """The text of ``broker-role.yaml`` exactly as it is sent to CloudFormation."""
    return resources.files(__package__).joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that turns CloudFormation's short tags (``!Ref``...) into long form."""


def _short_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix == "Ref" or suffix == "Condition" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _short_tag)


def load_template(text: str | None = None) -> dict[str, Any]:
    """Parse a CloudFormation YAML template (default: ``broker-role.yaml``) into long form."""
    loaded = yaml.load(text if text is not None else template_body(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(loaded, dict):
        raise TemplateError("the template is not a YAML mapping")
    return loaded


def template_version(template: Mapping[str, Any]) -> int:
    """The ``BootstrapVersion`` output of a parsed template."""
    try:
        return int(template["Outputs"]["BootstrapVersion"]["Value"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TemplateError("the template has no literal BootstrapVersion output") from exc


_NO_VALUE = object()
_SUB_VAR = re.compile(r"\$\{([^}!][^}]*)\}")


class _Renderer:
    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, str], pseudo: Mapping[str, str]) -> None:
        self.template = template
        self.values: dict[str, Any] = dict(pseudo)
        declared: Mapping[str, Any] = template.get("Parameters", {})
        unknown = set(parameters) - set(declared)
        if unknown:
            raise TemplateError(f"unknown template parameters: {', '.join(sorted(unknown))}")
        for name, spec in declared.items():
            if name in parameters:
                raw: Any = parameters[name]
            elif "Default" in spec:
                raw = spec["Default"]
            else:
                raise TemplateError(f"template parameter {name} has no value and no default")
            raw = str(raw)
            self.values[name] = raw.split(",") if spec.get("Type") == "CommaDelimitedList" else raw
        self.conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            try:
                expression = self.template["Conditions"][name]
            except KeyError as exc:
                raise TemplateError(f"unknown condition {name}") from exc
            self.conditions[name] = bool(self.resolve(expression))
        return self.conditions[name]

    def resolve(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref" or key == "Condition" or key.startswith("Fn::"):
                return self._intrinsic(key, arg)
        resolved = {key: self.resolve(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not _NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name not in self.values:
            if name in self.template.get("Resources", {}):
                return f"<{name}>"
            raise TemplateError(f"!Ref {name}: no such parameter or pseudo parameter")
        return self.values[name]

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            logical, dot, _ = name.partition(".")
            if dot and logical in self.template.get("Resources", {}):
                return f"<{name}>"  # ${Resource.Attribute}, as !GetAtt renders it
            value = self._ref(name)
            if not isinstance(value, str):
                raise TemplateError(f"!Sub ${{{name}}} is not a string")
            return value

        return _SUB_VAR.sub(replace, text)

    def _intrinsic(self, key: str, arg: Any) -> Any:
        if key == "Ref":
            return self._ref(arg)
        if key == "Condition":
            return self.condition(arg)
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::If":
            name, when_true, when_false = arg
            return self.resolve(when_true if self.condition(name) else when_false)
        if key == "Fn::GetAtt":
            logical, attribute = arg
            return f"<{logical}.{attribute}>"
        args = self.resolve(arg)
        if key == "Fn::Join":
            delimiter, items = args
            return str(delimiter).join(str(item) for item in items)
        if key == "Fn::Split":
            delimiter, text = args
            return str(text).split(delimiter)
        if key == "Fn::Select":
            index, items = args
            return items[int(index)]
        if key == "Fn::Equals":
            left, right = args
            return left == right
        if key == "Fn::Not":
            return not args[0]
        if key == "Fn::And":
            return all(args)
        if key == "Fn::Or":
            return any(args)
        raise TemplateError(f"{key} is not supported by the template renderer")


def render_resources(
    parameters: Mapping[str, str],
    *,
    account: str,
    region: str = "us-east-1",
    partition: str = "aws",
    template: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The template's ``Resources`` with every intrinsic function resolved.

    ``parameters`` are the stack parameters as CloudFormation receives them
    (lists comma-separated); parameters not given take their defaults. This is
    what CloudFormation would create in ``account``: tests evaluate the rendered
    policies with :mod:`account_bootstrap.evaluator`.
    """
    parsed = template if template is not None else load_template()
    pseudo = {
        "AWS::AccountId": account,
        "AWS::Region": region,
        "AWS::Partition": partition,
        "AWS::URLSuffix": "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com",
        "AWS::StackName": "deploy-helper-bootstrap",
    }
    renderer = _Renderer(parsed, parameters, pseudo)
    resolved: dict[str, Any] = {}
    for logical, resource in parsed.get("Resources", {}).items():
        condition = resource.get("Condition")
        if condition is not None and not renderer.condition(condition):
            continue
        resolved[logical] = renderer.resolve(resource)
    return resolved
