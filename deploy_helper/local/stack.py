"""The broker's own resources on the local AWS, created from ``template.yaml`` itself.

``deploy_broker_stack`` does locally what ``sam package`` and ``sam deploy`` do:

1. puts a code package in a deployment bucket of the local AWS and points the
   function's ``CodeUri`` at it (``sam package``);
2. transforms the SAM template with the SAM translator library (the
   ``AWS::Serverless-2016-10-31`` transform CloudFormation runs);
3. creates the stack in the local AWS's CloudFormation (moto, over HTTP), which
   creates every resource of a type it supports;
4. stands in for what moto's CloudFormation does not do (``STAND_INS``), through
   the same services' APIs, with the properties *as the stack resolved them*:
   each intrinsic in such a resource is carried through a stack output, so
   moto resolves ``!Ref``/``!GetAtt``/``!Sub``/``!If`` and nothing is
   re-implemented here;
5. reads the functions' environments back from the functions the stack made.

The local environment and the template therefore cannot drift apart: a table, a
variable or an output added to the template is in the local environment too.
A resource type neither moto nor a stand-in handles is reported in
``BrokerStack.not_created`` (``tests/functional/test_local_stack.py`` requires the
shipped template to have none).

What moto's CloudFormation does not do, and how each is stood in for:

- ``AWS::S3::Bucket``: moto keeps only encryption and tags; versioning, Object
  Lock, the public access block and ownership controls are applied with
  ``PutBucketVersioning``, ``PutObjectLockConfiguration``, ``PutPublicAccessBlock``
  and ``PutBucketOwnershipControls``. The default retention (COMPLIANCE for
  CheckpointRetentionDays) is left out on purpose: the ledger tests play whoever
  outlived it and remove checkpoint versions, which AWS refuses during retention
  and the local AWS would too;
- ``AWS::S3::BucketPolicy``: not applied: the local AWS listens on plain HTTP on
  loopback, where the checkpoint bucket's TLS-only statement (``aws:SecureTransport``
  false: deny) refuses every request, as it should;
- ``AWS::CloudWatch::Alarm``: ``PutMetricAlarm``;
- ``AWS::Logs::MetricFilter``: ``PutMetricFilter``;
- ``AWS::Lambda::Url``: ``CreateFunctionUrlConfig``;
- ``AWS::CloudFormation::WaitCondition(Handle)``: a wait that is never signalled
  makes the deploy fail (the template's refusal of more than 16 invoker
  accounts): raised as ``LocalStackError``;
- ``AWS::KMS::Key``: moto makes every key SYMMETRIC_DEFAULT / ENCRYPT_DECRYPT
  whatever its ``KeySpec``, so the checkpoint key cannot sign; the harness signs
  checkpoints with an Ed25519 key file instead (``scenario.build``);
- the function's code: moto cannot invoke Lambda functions, so the package in the
  deployment bucket is a placeholder; the harness runs ``deploy_helper`` in
  process (``tests/functional/test_function_package.py`` runs the real package).
"""

from __future__ import annotations

import copy
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy_helper.exceptions import BrokerError
from deploy_helper.local.server import DEFAULT_ACCOUNT, LOCAL_REGION

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.local.server import LocalAws

    #: A boto3 client of the stack's account for a service name.
    Client = Callable[[str], Any]

#: template.yaml, shipped with the local harness (a link to the repository's file).
TEMPLATE = Path(__file__).with_name("template.yaml")
FUNCTION = "BrokerFunction"
STACK_NAME = "deploy-helper-local"
CODE_KEY = "deploy-helper/placeholder.zip"
_CARRIER = "DhLocalStandIn"
_NO_VALUE = object()


class LocalStackError(BrokerError):
    """The broker's stack could not be created on the local AWS."""


@dataclass(frozen=True)
class BrokerStack:
    """The broker's stack on the local AWS, as created from the template."""

    name: str
    stack_id: str
    #: The stack's outputs (``ServiceToken``, ``FunctionName``, ``LedgerTableName`` …).
    outputs: dict[str, str]
    #: Logical id -> physical id of every resource the stack (or a stand-in) made.
    resources: dict[str, str]
    #: The broker function's environment variables, as the stack set them.
    environment: dict[str, str]
    #: Every function's environment variables (logical id -> variables): the broker's and others'.
    environments: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Logical id -> what was done for it outside moto's CloudFormation.
    stand_ins: dict[str, str] = field(default_factory=dict)
    #: Logical id -> resource type that neither moto nor a stand-in creates.
    not_created: dict[str, str] = field(default_factory=dict)


# -- transform (cached: the template is the same for every deploy of a process) ---------


@lru_cache(maxsize=4)
def _transformed(text: str, code_uri: str) -> str:
    import logging

    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse(text)
    uri_property = {"AWS::Serverless::Function": "CodeUri", "AWS::Serverless::LayerVersion": "ContentUri"}
    for resource in template["Resources"].values():  # every function's and layer's code, as sam package does
        key = uri_property.get(str(resource.get("Type"))) if isinstance(resource, dict) else None
        properties: Any = resource.get("Properties") if key else None
        if key and isinstance(properties, dict) and "InlineCode" not in properties:
            properties[key] = properties[key] if str(properties.get(key, "")).startswith("s3://") else code_uri
    session = boto3.Session(region_name=LOCAL_REGION, aws_access_key_id="local", aws_secret_access_key="local")  # noqa: S106
    translator = Translator(None, Parser(), boto_session=session)
    logging.getLogger("samtranslator.metrics").setLevel(logging.ERROR)  # "unpublished metrics": none are wanted
    transformed = translator.translate(template, parameter_values={}, get_managed_policy_map=dict)
    return json.dumps(transformed)


def transform(template_text: str, code_uri: str) -> dict[str, Any]:
    """The SAM template as CloudFormation, with the function's code at ``code_uri`` (``s3://…``)."""
    return dict(json.loads(_transformed(template_text, code_uri)))


# -- stand-ins ---------------------------------------------------------------------------


def _is_intrinsic(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    name = next(iter(value))
    return name in ("Ref", "Condition") or name.startswith("Fn::")


class _Carriers:
    """Stack outputs that carry intrinsics out of the stack, resolved by CloudFormation."""

    def __init__(self, removed: set[str]) -> None:
        self.outputs: dict[str, dict[str, Any]] = {}
        #: Resources taken out of the stack (stood in for): a ``!Ref`` to one is resolved afterwards.
        self.removed = removed

    def _add(self, output: dict[str, Any]) -> str:
        name = f"{_CARRIER}{len(self.outputs)}"
        self.outputs[name] = output
        return name

    def probe(self, condition: str) -> str:
        """An output that exists only when ``condition`` is true."""
        return self._add({"Condition": condition, "Value": "true"})

    def carry(self, value: Any, condition: str | None = None) -> Any:
        """``value`` with each intrinsic replaced by a placeholder resolved after the stack exists.

        ``condition``: the Condition of the resource ``value`` belongs to; its carriers exist
        only when it holds (an output may not name a resource that is not created).
        """
        if isinstance(value, list):
            return [self.carry(v, condition) for v in value]
        if not isinstance(value, dict):
            return value
        if not _is_intrinsic(value):
            return {k: self.carry(v, condition) for k, v in value.items()}
        ((function, argument),) = value.items()
        if function == "Ref" and argument == "AWS::NoValue":
            return {_CARRIER: "novalue"}
        if function == "Ref" and argument in self.removed:
            return {_CARRIER: "stand-in", "id": argument}
        if function == "Fn::If":
            condition, when_true, when_false = argument
            return {
                _CARRIER: "if",
                "probe": self.probe(condition),
                "then": self.carry(when_true),
                "else": self.carry(when_false),
            }
        output = {"Value": value} if condition is None else {"Condition": condition, "Value": value}
        return {_CARRIER: "output", "name": self._add(output)}


def _resolve_carried(value: Any, outputs: dict[str, str], resources: dict[str, str]) -> Any:
    if isinstance(value, list):
        items = [_resolve_carried(v, outputs, resources) for v in value]
        return [v for v in items if v is not _NO_VALUE]
    if not isinstance(value, dict):
        return value
    kind = value.get(_CARRIER)
    if kind == "novalue":
        return _NO_VALUE
    if kind == "if":
        chosen = value["then"] if value["probe"] in outputs else value["else"]
        return _resolve_carried(chosen, outputs, resources)
    if kind == "output":
        return outputs[value["name"]]
    if kind == "stand-in":
        return resources.get(value["id"], value["id"])
    resolved = {k: _resolve_carried(v, outputs, resources) for k, v in value.items()}
    return {k: v for k, v in resolved.items() if v is not _NO_VALUE}


def _bucket_settings(client: Client, bucket: str, props: dict[str, Any]) -> str:
    s3 = client("s3")
    done = []
    if props.get("VersioningConfiguration"):
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration=props["VersioningConfiguration"])
        done.append("PutBucketVersioning")
    lock = props.get("ObjectLockConfiguration")
    if lock:
        # Object Lock on, without the template's default retention: see the module's docstring.
        configuration = {"ObjectLockEnabled": lock.get("ObjectLockEnabled", "Enabled")}
        s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=configuration)
        done.append("PutObjectLockConfiguration (no default retention)")
    if props.get("PublicAccessBlockConfiguration"):
        block = {k: _bool(v) for k, v in props["PublicAccessBlockConfiguration"].items()}
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=block)
        done.append("PutPublicAccessBlock")
    if props.get("OwnershipControls"):
        s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=props["OwnershipControls"])
        done.append("PutBucketOwnershipControls")
    return "created by CloudFormation; " + (", ".join(done) or "nothing to add")


def _bool(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _alarm(client: Client, logical_id: str, props: dict[str, Any]) -> str:
    name = props.get("AlarmName") or f"{STACK_NAME}-{logical_id}"
    kwargs: dict[str, Any] = {
        "AlarmName": name,
        "ComparisonOperator": props["ComparisonOperator"],
        "EvaluationPeriods": int(props["EvaluationPeriods"]),
        "Threshold": float(props["Threshold"]),
    }
    for key in ("AlarmDescription", "Namespace", "MetricName", "Statistic", "TreatMissingData", "Unit"):
        if key in props:
            kwargs[key] = props[key]
    for key in ("Period", "DatapointsToAlarm"):
        if key in props:
            kwargs[key] = int(props[key])
    for key in ("Dimensions", "AlarmActions", "OKActions", "InsufficientDataActions", "Metrics"):
        if props.get(key):
            kwargs[key] = props[key]
    client("cloudwatch").put_metric_alarm(**kwargs)
    return name


def _metric_filter(client: Client, logical_id: str, props: dict[str, Any]) -> str:
    name = props.get("FilterName") or f"{STACK_NAME}-{logical_id}"
    transformations = [
        {
            "metricName": t["MetricName"],
            "metricNamespace": t["MetricNamespace"],
            "metricValue": str(t["MetricValue"]),
            **({"unit": t["Unit"]} if "Unit" in t else {}),
            **({"dimensions": t["Dimensions"]} if "Dimensions" in t else {}),
        }
        for t in props["MetricTransformations"]
    ]
    client("logs").put_metric_filter(
        logGroupName=props["LogGroupName"],
        filterName=name,
        filterPattern=props["FilterPattern"],
        metricTransformations=transformations,
    )
    return name


def _function_url(client: Client, logical_id: str, props: dict[str, Any]) -> str:
    made = client("lambda").create_function_url_config(
        FunctionName=props["TargetFunctionArn"], AuthType=props["AuthType"]
    )
    return str(made["FunctionUrl"])


def _refuse(client: Client, logical_id: str, props: dict[str, Any]) -> str:
    raise LocalStackError(
        f"the template stops the deploy at {logical_id} (its wait condition {props.get('Handle')} is never"
        " signalled): their names say what to change"
    )


#: Resource type -> (how it is stood in for, what does it). Types moto creates are left to moto.
STAND_INS: dict[str, tuple[str, Any]] = {
    "AWS::S3::BucketPolicy": ("not applied: the local AWS is plain HTTP, which a TLS-only policy refuses", None),
    "AWS::CloudWatch::Alarm": ("PutMetricAlarm", _alarm),
    "AWS::Logs::MetricFilter": ("PutMetricFilter", _metric_filter),
    "AWS::Lambda::Url": ("CreateFunctionUrlConfig", _function_url),
    "AWS::CloudFormation::WaitCondition": ("a deploy that stops", _refuse),
    "AWS::CloudFormation::WaitConditionHandle": ("nothing (its WaitCondition stops the deploy)", None),
}
#: Types moto creates but without some properties, added afterwards through the API.
COMPLETED: dict[str, Any] = {"AWS::S3::Bucket": _bucket_settings}


# -- deploy ------------------------------------------------------------------------------

#: Clients of the default account by (endpoint, service): a deploy per test would otherwise
#: spend more time making boto3 clients than the local AWS spends making the stack. (Other
#: accounts' credentials come from AssumeRole, which a reset of the local AWS forgets.)
_CLIENTS: dict[tuple[str, str], Any] = {}


def _client(local: LocalAws, account: str, service: str) -> Any:
    if account != DEFAULT_ACCOUNT:
        return local.client(service, account)
    key = (local.endpoint, service)
    if key not in _CLIENTS:
        _CLIENTS[key] = local.client(service, account)
    return _CLIENTS[key]


def _placeholder_package() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(
            "README.txt",
            "The local AWS cannot invoke Lambda functions: the harness runs deploy_helper in process.\n",
        )
    return buf.getvalue()


def deploy_broker_stack(
    local: LocalAws,
    parameters: dict[str, str],
    *,
    stack_name: str = STACK_NAME,
    account: str = DEFAULT_ACCOUNT,
    template_text: str | None = None,
) -> BrokerStack:
    """Create the broker's stack from ``template.yaml`` in ``account`` of the local AWS."""
    text = template_text if template_text is not None else TEMPLATE.read_text(encoding="utf-8")

    def client(service: str) -> Any:
        return _client(local, account, service)

    s3 = client("s3")
    deployments = f"deploy-helper-deployments-{account}"
    s3.create_bucket(Bucket=deployments)
    s3.put_object(Bucket=deployments, Key=CODE_KEY, Body=_placeholder_package())
    template = transform(text, f"s3://{deployments}/{CODE_KEY}")

    # Types with a stand-in leave the stack; every other type is left to the local AWS.
    removed = {k for k, r in template["Resources"].items() if r["Type"] in STAND_INS}
    carriers = _Carriers(removed)
    deferred: list[tuple[str, str, Any]] = []  # (logical id, type, carried properties)
    conditions: dict[str, str] = {}  # logical id -> probe of its Condition (resources left to moto)
    for logical_id, resource in list(template["Resources"].items()):
        kind = resource["Type"]
        if "Condition" in resource:
            conditions[logical_id] = carriers.probe(resource["Condition"])
        if kind in COMPLETED or logical_id in removed:
            carried = carriers.carry(copy.deepcopy(resource.get("Properties", {})), resource.get("Condition"))
            if logical_id in conditions:
                carried = {_CARRIER: "if", "probe": conditions[logical_id], "then": carried, "else": None}
            deferred.append((logical_id, kind, carried))
        if logical_id in removed:
            del template["Resources"][logical_id]
    # Outputs that name a resource taken out of the stack cannot be resolved there: left out.
    names = re.compile("|".join(rf"(?<![A-Za-z0-9]){re.escape(r)}(?![A-Za-z0-9])" for r in removed) or "(?!)")
    outputs = {k: v for k, v in template.get("Outputs", {}).items() if not names.search(json.dumps(v))}
    template["Outputs"] = {**outputs, **carriers.outputs}

    cfn = client("cloudformation")
    stack_id = cfn.create_stack(
        StackName=stack_name,
        # JSON, led by a tab: moto reads a template as YAML first (a pure-Python parse of this
        # one takes ~0.6 s) and as JSON when that fails; YAML refuses the tab at once.
        TemplateBody="\t" + json.dumps(template, separators=(",", ":")),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )["StackId"]
    stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise LocalStackError(f"the broker's stack is {stack['StackStatus']}: {stack.get('StackStatusReason', '')}")
    every_output = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    resources = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.list_stack_resources(StackName=stack_id)["StackResourceSummaries"]
        if r["LogicalResourceId"]  # moto lists the resources whose Condition is false without a name
    }

    # What the local AWS was left to make but did not (its CloudFormation skips types it lacks).
    not_created = {
        logical_id: resource["Type"]
        for logical_id, resource in template["Resources"].items()
        if logical_id not in resources and (logical_id not in conditions or conditions[logical_id] in every_output)
    }
    stand_ins = {}
    for logical_id, kind, carried in deferred:
        props = _resolve_carried(carried, every_output, resources)
        if props is None or props is _NO_VALUE:
            continue  # its Condition is false: CloudFormation would not create it either
        if kind in COMPLETED:
            stand_ins[logical_id] = COMPLETED[kind](client, resources[logical_id], props)
            continue
        how, make = STAND_INS[kind]
        resources[logical_id] = make(client, logical_id, props) if make else logical_id
        stand_ins[logical_id] = how

    lam = client("lambda")
    environments = {
        logical_id: dict(
            lam.get_function_configuration(FunctionName=resources[logical_id])
            .get("Environment", {})
            .get("Variables", {})
        )
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function" and logical_id in resources
    }
    return BrokerStack(
        name=stack_name,
        stack_id=stack_id,
        outputs={k: v for k, v in every_output.items() if not k.startswith(_CARRIER)},
        resources=resources,
        environment=environments[FUNCTION],
        environments=environments,
        stand_ins=stand_ins,
        not_created=not_created,
    )
