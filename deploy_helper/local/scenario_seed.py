"""Building the seed scenario (see :mod:`deploy_helper.local.scenario`) on the local AWS.

``build`` and its parts: the broker's stack from ``template.yaml``, the target accounts'
resources (each with a statement the broker did not write), the broker role in each
target account, the callers' keys and the policies (callers and rules) the broker reads.
"""

from __future__ import annotations

import io
import json
import secrets
import zipfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import yaml

from deploy_helper.config import BrokerConfig
from deploy_helper.local import shared_resources
from deploy_helper.local.scenario_handle import (
    ACCOUNTS,
    BROKER_EXEC_ROLE,
    CALLER,
    ENVIRONMENT,
    EXTERNAL_ID,
    FOREIGN_SID,
    ORG_ID,
    OTHER_CALLER,
    SERVICE_ACCOUNTS,
    TARGET_ACCOUNTS,
    Scenario,
)
from deploy_helper.local.server import LOCAL_REGION
from deploy_helper.local.stack import deploy_broker_stack
from deploy_helper.trust.signing import Ed25519Signer, generate_ed25519

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.local.server import LocalAws
    from deploy_helper.local.stack import BrokerStack


def _trust_policy(external_id: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": BROKER_EXEC_ROLE},
                "Action": ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"],
                "Condition": {
                    "StringEquals": {
                        "sts:ExternalId": external_id,
                        "aws:RequestTag/DeployHelperMinBootstrap": ["1"],
                    }
                },
            }
        ],
    }


def create_broker_role(local: LocalAws, account: str, external_id: str = EXTERNAL_ID) -> str:
    """The broker role in ``account`` as the bootstrap template makes it (trust part)."""
    iam = local.client("iam", account)
    try:
        role = iam.create_role(
            RoleName="deploy-helper-broker",
            AssumeRolePolicyDocument=json.dumps(_trust_policy(external_id)),
            MaxSessionDuration=3600,
            Tags=[{"Key": "deploy-helper:bootstrap-version", "Value": "1"}],
        )
    except iam.exceptions.EntityAlreadyExistsException:
        return f"arn:aws:iam::{account}:role/deploy-helper-broker"
    return str(role["Role"]["Arn"])


def _lambda_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("authorizer.py", "def handler(event, context):\n    return {'isAuthorized': False}\n")
    return buf.getvalue()


def _role(local: LocalAws, account: str, name: str, service: str | None = None) -> str:
    iam = local.client("iam", account)
    principal = {"Service": service} if service else {"AWS": f"arn:aws:iam::{ACCOUNTS['tooling']}:root"}
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}],
    }
    return str(iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"])


def _write_policies(directory: Path, signer_pub: bytes, other_pub: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(tz=UTC).replace(microsecond=0)
    window = {"not_before": (now - timedelta(days=1)).isoformat(), "not_after": (now + timedelta(days=365)).isoformat()}
    callers = {
        "version": 1,
        "callers": {
            CALLER: {
                "account": ACCOUNTS["tooling"],
                "description": "CI/CD pipelines in the tooling account",
                "keys": [
                    {"id": "ci-tooling-local", "algorithm": "ed25519", "public_key": signer_pub.decode(), **window}
                ],
            },
            OTHER_CALLER: {
                "account": ACCOUNTS["service-b"],
                "description": "service-b's own pipeline (may request nothing in this scenario)",
                "keys": [
                    {"id": "ci-service-b-local", "algorithm": "ed25519", "public_key": other_pub.decode(), **window}
                ],
            },
        },
    }
    deploy_roles = ["arn:aws:iam::*:role/deploy"]
    rules: dict[str, Any] = {
        "version": 1,
        "organization": {"id": ORG_ID, "accounts": {k: v for k, v in ACCOUNTS.items()}},
        "rules": [
            {
                "id": "authorizer-invoke",
                "description": "service APIs may use the shared token authorizer",
                "callers": [CALLER],
                "kind": "lambda-invoke",
                "targets": [f"arn:aws:lambda:*:{ACCOUNTS['token-service']}:function:token-authorizer"],
                "principals": {
                    "services": [
                        {
                            "service": "apigateway.amazonaws.com",
                            "source_accounts": list(SERVICE_ACCOUNTS),
                            "source_arns": ["arn:aws:execute-api:*:*:*/authorizers/*"],
                        }
                    ]
                },
            },
            {
                "id": "artifact-read",
                "description": "deploy roles read pipeline artifacts",
                "callers": [CALLER],
                "kind": "bucket-access",
                "targets": ["arn:aws:s3:::dh-artifacts-*"],
                "target_accounts": ["tooling"],
                "principals": {"roles": deploy_roles, "role_accounts": list(SERVICE_ACCOUNTS)},
                "access": ["read"],
            },
            {
                "id": "artifact-decrypt",
                "description": "deploy roles decrypt pipeline artifacts",
                "callers": [CALLER],
                "kind": "kms-grant",
                "targets": [f"arn:aws:kms:*:{ACCOUNTS['tooling']}:key/*"],
                "principals": {"roles": deploy_roles, "role_accounts": list(SERVICE_ACCOUNTS)},
                "operations": ["Decrypt", "DescribeKey"],
            },
        ],
    }
    rules["rules"] = [*rules["rules"], *shared_resources.rules(CALLER, ACCOUNTS["tooling"], list(SERVICE_ACCOUNTS))]
    (directory / "callers.yaml").write_text(yaml.safe_dump(callers, sort_keys=False))
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))


def broker_parameters() -> dict[str, str]:
    """The broker stack's parameters in the seed scenario."""
    invokers = [ACCOUNTS[name] for name in ("tooling", *SERVICE_ACCOUNTS)]
    return {"Environment": ENVIRONMENT, "ExternalId": EXTERNAL_ID, "InvokerAccountIds": ",".join(invokers)}


def broker_config(stack: BrokerStack, policies: Path, checkpoint_key: Path) -> BrokerConfig:
    """The broker's configuration: the function's environment as the stack set it.

    The checkpoint bucket is the checkpointer's (the harness runs it in process, from
    ``Scenario.checkpoint``). Two values are the harness's: the policies (the scenario's
    own callers and rules), and the checkpoint key, an Ed25519 key file, because the local
    AWS creates the template's ECC_NIST_P256 signing keys as symmetric keys (see
    ``deploy_helper.local.stack``).
    """
    bucket = {
        k: v for env in stack.environments.values() for k, v in env.items() if k == "DEPLOY_HELPER_CHECKPOINT_BUCKET"
    }
    environment = {
        **bucket,
        **stack.environment,
        "DEPLOY_HELPER_POLICIES_DIR": str(policies),
        "DEPLOY_HELPER_CHECKPOINT_KEY": f"file:{checkpoint_key}",
        "AWS_REGION": LOCAL_REGION,
    }
    return BrokerConfig.from_env(environment)


def build(
    local: LocalAws, workdir: Path, *, bootstrap: bool = True, ledger: bool = True, locks: bool = True
) -> Scenario:
    """Create the seed scenario on ``local`` (which must be freshly reset)."""
    (
        tooling,
        token,
    ) = ACCOUNTS["tooling"], ACCOUNTS["token-service"]
    # CI/CD tooling: artifact bucket with a foreign statement, and its key.
    bucket = f"dh-artifacts-{tooling}"
    s3 = local.client("s3", tooling)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "deploy-helper:managed", "Value": "true"}]})
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(_foreign_bucket_policy(bucket)))
    key_arn = local.client("kms", tooling).create_key(
        Description="pipeline artifacts", Tags=[{"TagKey": "deploy-helper:managed", "TagValue": "true"}]
    )["KeyMetadata"]["Arn"]
    _role(local, tooling, "pipeline")
    resources = shared_resources.create(local, tooling, key_arn)
    # Token service: the authorizer function, with a permission its team added.
    exec_role = _role(local, token, "authorizer-exec", "lambda.amazonaws.com")
    lam = local.client("lambda", token)
    authorizer = lam.create_function(
        FunctionName="token-authorizer",
        Runtime="python3.12",
        Role=exec_role,
        Handler="authorizer.handler",
        Code={"ZipFile": _lambda_zip()},
        Tags={"deploy-helper:managed": "true"},
    )["FunctionArn"]
    lam.add_permission(
        FunctionName="token-authorizer",
        StatementId=FOREIGN_SID,
        Action="lambda:InvokeFunction",
        Principal="events.amazonaws.com",
        SourceAccount=token,
    )
    # Service accounts: an API and a deploy role each.
    api_ids, deploy_roles = {}, {}
    for name in SERVICE_ACCOUNTS:
        account = ACCOUNTS[name]
        api_ids[name] = local.client("apigateway", account).create_rest_api(name=f"{name}-api")["id"]
        deploy_roles[name] = _role(local, account, "deploy")
    # The broker's own account: its stack, from template.yaml.
    stack = deploy_broker_stack(local, broker_parameters())
    if stack.outputs["ExecutionRoleArn"] != BROKER_EXEC_ROLE:
        raise RuntimeError(f"the template's execution role is {stack.outputs['ExecutionRoleArn']}")
    checkpoint_private, _ = generate_ed25519()
    (workdir / "checkpoint-key.pem").write_bytes(checkpoint_private)
    (workdir / "checkpoint-key.pem").chmod(0o600)
    if bootstrap:
        for name in TARGET_ACCOUNTS:
            create_broker_role(local, ACCOUNTS[name])
    # Keys and policies.
    private, public = generate_ed25519()
    other_private, other_public = generate_ed25519()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    signer = Ed25519Signer("ci-tooling-local", load_pem_private_key(private, None))
    other = Ed25519Signer("ci-service-b-local", load_pem_private_key(other_private, None))
    policies = workdir / "policies"
    _write_policies(policies, public, other_public)
    (workdir / "ci-tooling.pem").write_bytes(private)
    (workdir / "ci-tooling.pem").chmod(0o600)
    config = broker_config(stack, policies, workdir / "checkpoint-key.pem")
    if not ledger:
        config = replace(config, ledger_table=None, checkpoint_bucket=None, checkpoint_key=None)
    if not locks:
        config = replace(config, lock_table=None, reference_table=None)
    return Scenario(
        local=local,
        workdir=workdir,
        policies_dir=policies,
        signer=signer,
        other_signer=other,
        authorizer_arn=authorizer,
        api_ids=api_ids,
        deploy_roles=deploy_roles,
        bucket=bucket,
        key_arn=key_arn,
        config=config,
        extra={"nonce": secrets.token_hex(2)},
        resources=resources,
        stack=stack,
    )


def _foreign_bucket_policy(bucket: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": FOREIGN_SID,
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }
