"""The seed scenario: a small multi-account organization on the local AWS.

The demo, the tests and the benchmarks all grow from it:

- ``broker`` (123456789012, moto's default): the broker's own stack, created
  from ``template.yaml`` (``deploy_helper.local.stack``): its tables, checkpoint
  bucket, execution role, function, schedule and alarms;
- ``tooling`` (111111111111): the CI/CD account, with the pipeline artifact
  bucket and its KMS key;
- ``token-service`` (222222222222): the Lambda authorizer function;
- ``service-a`` / ``service-b`` (333333333333 / 444444444444): an API Gateway
  API and a ``deploy`` role each.

Each resource starts with a statement the broker did not write, so every run
shows that foreign statements survive. The caller ``ci-tooling`` gets a fresh
Ed25519 key; ``ci-service-b`` is a second registered caller whose key is used
to try to impersonate the first.

Its parts, each in its own module, gathered here under one name:

- :mod:`deploy_helper.local.scenario_handle`: the scenario's fixed names (accounts,
  callers, ids) and ``Scenario``, the handle through which the demo, the tests and the
  benchmarks act in it;
- :mod:`deploy_helper.local.scenario_seed`: building the seed scenario (``build``);
- :mod:`deploy_helper.local.scenario_scaled`: the seed scenario at scale
  (``build_scaled``).
"""

from __future__ import annotations

from deploy_helper.local.scenario_handle import (
    ACCOUNTS,
    AUDIENCE,
    BROKER_EXEC_ROLE,
    CALLER,
    CHECKPOINT_ORIGIN,
    ENVIRONMENT,
    EXTERNAL_ID,
    FOREIGN_SID,
    ORG_ID,
    OTHER_CALLER,
    SCALED_GRANTS,
    SERVICE_ACCOUNTS,
    TARGET_ACCOUNTS,
    TOOLING_ROLES,
    Scenario,
)
from deploy_helper.local.scenario_scaled import SCALED_FIRST_ACCOUNT, _scale_rules, build_scaled, scaled_name
from deploy_helper.local.scenario_seed import (
    _foreign_bucket_policy,
    _lambda_zip,
    _role,
    _trust_policy,
    _write_policies,
    broker_config,
    broker_parameters,
    build,
    create_broker_role,
)
from deploy_helper.local.server import DEFAULT_ACCOUNT, LOCAL_REGION

#: Every name this module has offered, the private helpers the tests and benchmarks use included.
__all__ = [
    "ACCOUNTS",
    "AUDIENCE",
    "BROKER_EXEC_ROLE",
    "CALLER",
    "CHECKPOINT_ORIGIN",
    "DEFAULT_ACCOUNT",
    "ENVIRONMENT",
    "EXTERNAL_ID",
    "FOREIGN_SID",
    "LOCAL_REGION",
    "ORG_ID",
    "OTHER_CALLER",
    "SCALED_FIRST_ACCOUNT",
    "SCALED_GRANTS",
    "SERVICE_ACCOUNTS",
    "TARGET_ACCOUNTS",
    "TOOLING_ROLES",
    "Scenario",
    "_foreign_bucket_policy",
    "_lambda_zip",
    "_role",
    "_scale_rules",
    "_trust_policy",
    "_write_policies",
    "broker_config",
    "broker_parameters",
    "build",
    "build_scaled",
    "create_broker_role",
    "scaled_name",
]
