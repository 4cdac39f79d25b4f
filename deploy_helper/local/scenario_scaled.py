"""The seed scenario at scale (see :mod:`deploy_helper.local.scenario`): ``build_scaled``.

Service accounts ``svc-000`` … beside the seed's two, each with a broker role, a
``deploy`` role, an API and its own artifact bucket, and the rules widened to them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml

from deploy_helper.local.scenario_handle import ACCOUNTS, CALLER, EXTERNAL_ID, SERVICE_ACCOUNTS, TOOLING_ROLES
from deploy_helper.local.scenario_seed import _foreign_bucket_policy, _role, _trust_policy, build
from deploy_helper.local.server import LOCAL_REGION

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.local.scenario_handle import Scenario
    from deploy_helper.local.server import LocalAws

#: The first account id of ``build_scaled``'s service accounts (``svc-000`` …).
SCALED_FIRST_ACCOUNT = 500000000000


def scaled_name(index: int) -> str:
    return f"svc-{index:03d}"


def build_scaled(
    local: LocalAws,
    workdir: Path,
    n_services: int,
    *,
    compaction: list[str] | None = None,
    **kwargs: Any,
) -> Scenario:
    """The seed scenario at scale: ``n_services`` service accounts instead of the seed's two.

    Each scaled service account (``svc-000`` = 500000000000, …) has a broker role, a
    ``deploy`` role, an API, and its own artifact bucket ``dh-artifacts-<account>``
    (with a foreign statement). The tooling account gains a ``builder`` role next to
    ``pipeline``. The rules are the seed's, widened to the scaled accounts, plus
    ``service-artifacts``: tooling roles may access each service's own artifact bucket
    (``pipeline`` read-write, ``builder`` read). ``compaction`` is written into the
    rules of the kinds that offer it (``merge-principals`` for bucket-access,
    ``widen-source-arn`` for lambda-invoke).
    """
    scenario = build(local, workdir, **kwargs)
    tooling = ACCOUNTS["tooling"]
    _role(local, tooling, "builder")
    names = {scaled_name(i): str(SCALED_FIRST_ACCOUNT + i) for i in range(n_services)}
    # One client per service for every account: moto routes a request to the account in
    # its ``x-moto-account-id`` header (an admin of that account, as local.client is),
    # which spares a client and an AssumeRole per account.
    from deploy_helper.local.server import LOCAL_CONFIG

    current: dict[str, str] = {}

    def route(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = current["account"]

    base = local.base_session()
    base.events.register("before-sign", route)
    shared = {
        svc: base.client(svc, endpoint_url=local.endpoint, region_name=LOCAL_REGION, config=LOCAL_CONFIG)
        for svc in ("iam", "apigateway", "s3")
    }
    for name, account in names.items():
        current["account"] = account

        def client(service: str) -> Any:
            return shared[service]

        iam = client("iam")
        iam.create_role(
            RoleName="deploy-helper-broker",
            AssumeRolePolicyDocument=json.dumps(_trust_policy(EXTERNAL_ID)),
            MaxSessionDuration=3600,
            Tags=[{"Key": "deploy-helper:bootstrap-version", "Value": "1"}],
        )
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{tooling}:root"}, "Action": "sts:AssumeRole"}
            ],
        }
        scenario.deploy_roles[name] = str(
            iam.create_role(RoleName="deploy", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        )
        scenario.api_ids[name] = client("apigateway").create_rest_api(name=f"{name}-api")["id"]
        bucket = f"dh-artifacts-{account}"
        s3 = client("s3")
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(_foreign_bucket_policy(bucket)))
    scenario.scaled = names
    _scale_rules(scenario.policies_dir / "rules.yaml", names, compaction)
    return scenario


def _scale_rules(path: Path, names: dict[str, str], compaction: list[str] | None) -> None:
    rules = yaml.safe_load(path.read_text())
    rules["organization"]["accounts"].update(names)
    services = list(SERVICE_ACCOUNTS) + list(names)
    by_id = {r["id"]: r for r in rules["rules"]}
    by_id["authorizer-invoke"]["principals"]["services"][0]["source_accounts"] = services
    by_id["artifact-read"]["principals"]["role_accounts"] = services
    by_id["artifact-decrypt"]["principals"]["role_accounts"] = services
    tooling = ACCOUNTS["tooling"]
    rules["rules"].append(
        {
            "id": "service-artifacts",
            "description": "tooling roles reach each service account's own artifact bucket",
            "callers": [CALLER],
            "kind": "bucket-access",
            "targets": ["arn:aws:s3:::dh-artifacts-*"],
            "target_accounts": list(names),
            "principals": {
                "roles": [f"arn:aws:iam::{tooling}:role/{role}" for role in TOOLING_ROLES],
                "role_accounts": ["tooling"],
            },
            "access": sorted(set(TOOLING_ROLES.values())),
        }
    )
    if compaction:
        from deploy_helper.grants import REGISTRY

        for rule in rules["rules"]:
            available = [c for c in compaction if c in REGISTRY[rule["kind"]].compactions]
            if available:
                rule["compaction"] = available
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
