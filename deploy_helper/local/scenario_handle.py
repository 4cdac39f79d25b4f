"""The seed scenario's fixed names and ``Scenario``, the handle to act in it.

The accounts, callers and ids of the seed scenario (see :mod:`deploy_helper.local.scenario`),
and ``Scenario``: what the demo, the tests and the benchmarks hold once the scenario is
built -- its grants, the policies and grants read back from the local AWS, its ledger
and checkpointer, and the environment a CLI needs to act on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploy_helper.local import shared_resources
from deploy_helper.local.server import DEFAULT_ACCOUNT, LOCAL_REGION

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import boto3

    from deploy_helper.config import BrokerConfig
    from deploy_helper.execution.broker import Broker
    from deploy_helper.ledger.setup import LedgerHandle
    from deploy_helper.local.server import LocalAws
    from deploy_helper.local.stack import BrokerStack
    from deploy_helper.trust.signing import Ed25519Signer
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
#: Grants per service account in ``Scenario.scaled_grants``.
SCALED_GRANTS = 5
#: The tooling roles that get access to each scaled service account's own artifact bucket.
TOOLING_ROLES = {"pipeline": "read-write", "builder": "read"}


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
        from deploy_helper.local.stream import LedgerStream

        assert self.config.ledger_table is not None
        stream = self.extra.get("ledger_stream")
        if stream is None:
            stream = self.extra["ledger_stream"] = LedgerStream(self.local, self.config.ledger_table)
        opened = self.ledger()
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
