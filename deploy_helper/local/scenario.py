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
"""

from __future__ import annotations

import io
import json
import secrets
import zipfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import yaml

from deploy_helper.config import BrokerConfig
from deploy_helper.local import shared_resources
from deploy_helper.local.server import DEFAULT_ACCOUNT, LOCAL_REGION
from deploy_helper.local.stack import BrokerStack, deploy_broker_stack
from deploy_helper.trust.signing import Ed25519Signer, generate_ed25519

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import boto3

    from deploy_helper.execution.broker import Broker
    from deploy_helper.ledger.setup import LedgerHandle
    from deploy_helper.local.server import LocalAws
    from pipeline_hooks.client import BrokerClient

ACCOUNTS = {
    "broker": DEFAULT_ACCOUNT,
    "tooling": "111111111111",
    "token-service": "222222222222",
    "service-a": "333333333333",
    "service-b": "444444444444",
}
TARGET_ACCOUNTS = ("tooling", "token-service", "service-a", "service-b")
SERVICE_ACCOUNTS = ("service-a", "service-b")
ORG_ID = "o-dhlocal0001"
AUDIENCE = "deploy-helper:local"
#: The template's ExternalId parameter (32 characters or more).
EXTERNAL_ID = "deploy-helper-local-external-id-0001"
#: The broker stack's Environment parameter: the audience is deploy-helper:local.
ENVIRONMENT = "local"
#: The execution role the template makes (``deploy-helper-exec-<Environment>``).
BROKER_EXEC_ROLE = f"arn:aws:iam::{DEFAULT_ACCOUNT}:role/deploy-helper-exec-{ENVIRONMENT}"
CHECKPOINT_ORIGIN = "deploy-helper.local/ledger/main"
CALLER = "ci-tooling"
OTHER_CALLER = "ci-service-b"
FOREIGN_SID = "TeamOwnedDoNotTouch"


@dataclass
class Scenario:
    """Everything the demo and the tests need to act in the seed scenario."""

    local: LocalAws
    workdir: Path
    policies_dir: Path
    signer: Ed25519Signer
    other_signer: Ed25519Signer
    authorizer_arn: str
    api_ids: dict[str, str]
    deploy_roles: dict[str, str]
    bucket: str
    key_arn: str
    config: BrokerConfig
    extra: dict[str, Any] = field(default_factory=dict)
    #: Service accounts added by ``build_scaled`` (name -> account id), beyond ``ACCOUNTS``.
    scaled: dict[str, str] = field(default_factory=dict)
    #: The tooling account's resource of each resource-policy kind (``shared_resources``).
    resources: dict[str, str] = field(default_factory=dict)
    #: The broker's own stack, created from template.yaml.
    stack: BrokerStack | None = None

    @property
    def accounts(self) -> dict[str, str]:
        return {**ACCOUNTS, **self.scaled} if self.scaled else ACCOUNTS

    @property
    def services(self) -> tuple[str, ...]:
        """The service accounts' names: the seed's two, or those of ``build_scaled``."""
        return tuple(self.scaled) if self.scaled else SERVICE_ACCOUNTS

    def broker(self, session: boto3.Session | None = None, **kwargs: Any) -> Broker:
        from deploy_helper.execution.broker import Broker

        return Broker.from_config(self.config, session=session or self.local.base_session(), **kwargs)

    def client(
        self, broker: Broker | None = None, *, caller: str = CALLER, signer: Ed25519Signer | None = None
    ) -> BrokerClient:
        from pipeline_hooks.client import BrokerClient, InProcessTransport

        return BrokerClient(
            caller=caller,
            audience=AUDIENCE,
            signer=signer or self.signer,
            transport=InProcessTransport(broker or self.broker()),
        )

    # -- the grants of the seed scenario ---------------------------------
    def authorizer_grant(self, service: str) -> dict[str, Any]:
        account = self.accounts[service]
        return {
            "kind": "lambda-invoke",
            "function": self.authorizer_arn,
            "principal": "apigateway.amazonaws.com",
            "source_arn": f"arn:aws:execute-api:{LOCAL_REGION}:{account}:{self.api_ids[service]}/authorizers/*",
            "source_account": account,
        }

    def bucket_grant(self, service: str, access: str = "read") -> dict[str, Any]:
        return {
            "kind": "bucket-access",
            "bucket": self.bucket,
            "account": ACCOUNTS["tooling"],
            "principal": self.deploy_roles[service],
            "access": access,
        }

    def service_bucket(self, service: str) -> str:
        """A scaled service account's own artifact bucket (``build_scaled``)."""
        return f"dh-artifacts-{self.accounts[service]}"

    def service_bucket_grant(self, service: str, tooling_role: str = "pipeline") -> dict[str, Any]:
        """A tooling role's access to a scaled service account's own artifact bucket."""
        return {
            "kind": "bucket-access",
            "bucket": self.service_bucket(service),
            "account": self.accounts[service],
            "principal": f"arn:aws:iam::{ACCOUNTS['tooling']}:role/{tooling_role}",
            "access": TOOLING_ROLES[tooling_role],
        }

    def key_grant(self, service: str, operations: list[str] | None = None) -> dict[str, Any]:
        return {
            "kind": "kms-grant",
            "key": self.key_arn,
            "grantee": self.deploy_roles[service],
            "operations": operations or ["Decrypt", "DescribeKey"],
        }

    def scaled_grants(self, count: int | None = None) -> list[dict[str, Any]]:
        """Grants over the service accounts, service by service: ``SCALED_GRANTS`` each by default.

        Per service, in this order: the authorizer's invoke permission, read on the shared
        artifact bucket, a grant on its key, and the ``pipeline`` and ``builder`` tooling
        roles on the service's own artifact bucket (``build_scaled``). With ``count``, fewer
        kinds of grant: every service gets its own bucket's two first, then the key's grant,
        then the shared bucket's, then the authorizer's, until ``count`` (5,000 grants over
        2,000 services: the two own-bucket grants of each, and the key's grant of the first 1,000).
        """
        services = self.services
        per_service = [
            lambda s: self.authorizer_grant(s),
            lambda s: self.bucket_grant(s),
            lambda s: self.key_grant(s),
            lambda s: self.service_bucket_grant(s, "pipeline"),
            lambda s: self.service_bucket_grant(s, "builder"),
        ]
        total = SCALED_GRANTS * len(services)
        count = total if count is None else count
        if not 0 <= count <= total:
            raise ValueError(f"{len(services)} service accounts give at most {total} grants, not {count}")
        chosen: set[tuple[int, int]] = set()
        for tier in (3, 4, 2, 1, 0):  # the order in which kinds of grant are added
            for n in range(len(services)):
                if len(chosen) < count:
                    chosen.add((n, tier))
        return [make(s) for n, s in enumerate(services) for t, make in enumerate(per_service) if (n, t) in chosen]

    def grant(self, kind: str, service: str = "service-a") -> dict[str, Any]:
        """The seed grant of a resource-policy kind for ``service`` (see ``shared_resources``)."""
        return shared_resources.grant(kind, self.resources[kind], self.accounts[service], self.deploy_roles[service])

    def resource_policy(self, kind: str) -> dict[str, Any] | None:
        """The policy of the seed resource of a resource-policy kind, as AWS holds it."""
        return shared_resources.policy(self.local, ACCOUNTS["tooling"], kind, self.resources[kind])

    def seed_grants(self) -> list[dict[str, Any]]:
        grants = [self.authorizer_grant(s) for s in SERVICE_ACCOUNTS]
        grants += [self.bucket_grant(s) for s in SERVICE_ACCOUNTS]
        grants += [self.key_grant(s) for s in SERVICE_ACCOUNTS]
        return grants

    # -- reading back what is in AWS --------------------------------------
    def function_policy(self) -> dict[str, Any] | None:
        lam = self.local.client("lambda", ACCOUNTS["token-service"])
        try:
            return dict(json.loads(lam.get_policy(FunctionName="token-authorizer")["Policy"]))
        except lam.exceptions.ResourceNotFoundException:
            return None

    def bucket_policy(self) -> dict[str, Any] | None:
        s3 = self.local.client("s3", ACCOUNTS["tooling"])
        try:
            return dict(json.loads(s3.get_bucket_policy(Bucket=self.bucket)["Policy"]))
        except s3.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchBucketPolicy":
                return None
            raise

    def key_grants(self) -> list[dict[str, Any]]:
        kms = self.local.client("kms", ACCOUNTS["tooling"])
        return list(kms.list_grants(KeyId=self.key_arn)["Grants"])

    def ledger(self) -> LedgerHandle:
        """The scenario's ledger and checkpoints, opened as an auditor would."""
        from deploy_helper.ledger.setup import open_ledger

        assert self.config.ledger_table is not None
        return open_ledger(
            self.local.base_session(),
            table=self.config.ledger_table,
            bucket=self.config.checkpoint_bucket,
            checkpoint_key=self.config.checkpoint_key,
            region=LOCAL_REGION,
            origin=CHECKPOINT_ORIGIN,
        )

    def checkpoint(self, clock: Callable[[], float] | None = None) -> dict[str, Any]:
        """Run the checkpointer once on the stream records since its last run, as Lambda would.

        An empty batch stands for the scheduled heartbeat.
        """
        from deploy_helper.entry.checkpointer import handle
        from deploy_helper.ledger.setup import open_ledger
        from deploy_helper.local.stream import LedgerStream

        assert self.config.ledger_table is not None
        stream = self.extra.get("ledger_stream")
        if stream is None:
            stream = self.extra["ledger_stream"] = LedgerStream(self.local, self.config.ledger_table)
        opened = open_ledger(
            self.local.base_session(),
            table=self.config.ledger_table,
            bucket=self.config.checkpoint_bucket,
            checkpoint_key=self.config.checkpoint_key,
            region=LOCAL_REGION,
            origin=CHECKPOINT_ORIGIN,
        )
        assert opened.checkpointer is not None
        if clock is not None:
            opened.checkpointer.clock = clock
        return handle(stream.event(), opened.checkpointer)

    def environ(self) -> dict[str, str]:
        """The environment a CLI or a broker process needs to act on this scenario."""
        c = self.config
        env = {
            "AWS_ENDPOINT_URL": self.local.endpoint,
            "DEPLOY_HELPER_AUDIENCE": c.audience,
            "DEPLOY_HELPER_POLICIES_DIR": str(c.policies_dir),
            "DEPLOY_HELPER_NONCE_TABLE": c.nonce_table,
            "DEPLOY_HELPER_EXTERNAL_ID": c.external_id or "",
            "DEPLOY_HELPER_TARGET_ROLE": c.target_role_name,
            "DEPLOY_HELPER_TARGET_ROLE_PATH": c.target_role_path,
        }
        for name, value in (
            ("DEPLOY_HELPER_LEDGER_TABLE", c.ledger_table),
            ("DEPLOY_HELPER_LOCK_TABLE", c.lock_table),
            ("DEPLOY_HELPER_REFERENCE_TABLE", c.reference_table),
            ("DEPLOY_HELPER_CHECKPOINT_BUCKET", c.checkpoint_bucket),
            ("DEPLOY_HELPER_CHECKPOINT_KEY", c.checkpoint_key),
            ("DEPLOY_HELPER_LEDGER_ORIGIN", CHECKPOINT_ORIGIN if c.checkpoint_key else None),
        ):
            if value:
                env[name] = value
        return env

    def snapshot(self) -> dict[str, Any]:
        """Every policy and grant the scenario's grants can touch, for 'nothing changed' checks."""
        return {
            "function_policy": self.function_policy(),
            "bucket_policy": self.bucket_policy(),
            "key_grants": sorted((g.get("Name", ""), g["GranteePrincipal"]) for g in self.key_grants()),
            **shared_resources.snapshot(self.local, ACCOUNTS["tooling"], self.resources),
        }


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


#: Grants per service account in ``Scenario.scaled_grants``.
SCALED_GRANTS = 5
#: The tooling roles that get access to each scaled service account's own artifact bucket.
TOOLING_ROLES = {"pipeline": "read-write", "builder": "read"}
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
