"""The pipeline step's world: the seed scenario, a KMS signing key, CodePipeline pipelines and jobs.

The action runs as it would in the tooling account, through its real entry point
``pipeline_hooks.codepipeline.handler``: it confirms the job with CodePipeline
(``GetJobDetails``, ``GetPipelineState``), reads the grants file from the input
artifact (a zip in the artifact bucket, read with CodePipeline's artifact
credentials), resolves ``${stack:...}`` / ``${env:...}``, signs (with a KMS key or a
key file), sends the request through the real broker handler, and ends the job.

moto 5.2 keeps pipelines and executions but not jobs; the local server serves
CodePipeline's job API in front of moto (``deploy_helper.local.codepipeline_jobs``),
so the step makes its real boto3 ``codepipeline`` calls over HTTP. Jobs are made here
as CodePipeline makes them, from a pipeline created with moto (``create_pipeline``,
``start_pipeline_execution``); a job's result and every job API call are read back
from the server, policies and KMS grants from moto.
"""

from __future__ import annotations

import io
import json
import secrets
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import yaml

from deploy_helper.local import codepipeline_jobs as jobs
from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.server import LOCAL_CONFIG, LOCAL_REGION
from deploy_helper.trust.signing import public_pem_from_der
from pipeline_hooks import codepipeline
from pipeline_hooks.client import InProcessTransport
from pipeline_hooks.codepipeline import PipelineStep

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.server import LocalAws
    from pipeline_hooks.client import Transport

TOOLING = seed.ACCOUNTS["tooling"]
KMS_KEY_ID = "ci-tooling-kms-local"
ARTIFACT_KEY = "service-a-pipeline/BuildOutput/build.zip"
STEP_FUNCTION = "deploy-helper-step"

STORE_TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  BucketName: {Type: String}
  KeyArn: {Type: String}
Resources:
  Notifications:
    Type: AWS::SNS::Topic
Outputs:
  BucketName: {Value: !Ref BucketName}
  KeyArn: {Value: !Ref KeyArn}
"""

GRANTS = """
caller: ci-tooling
audience: deploy-helper:local
context:
  repository: ${env:REPOSITORY}
owner: artifact-store  # the apply and the revoke pipelines own the grants as one
grants:
  - kind: bucket-access
    bucket: ${stack:artifact-store.BucketName}
    account: "111111111111"
    principal: arn:aws:iam::${env:TARGET_ACCOUNT}:role/deploy
    access: ${env:ACCESS}
  - kind: kms-grant
    key: ${stack:artifact-store.KeyArn}
    grantee: arn:aws:iam::${env:TARGET_ACCOUNT}:role/deploy
    operations: [Decrypt, DescribeKey]
"""


@dataclass
class RecordingTransport:
    """The broker in this process, through its real handler; keeps every envelope sent."""

    broker: Broker
    sent: list[dict[str, str]] = field(default_factory=list)

    def send(self, envelope: dict[str, str]) -> dict[str, Any]:
        self.sent.append(envelope)
        return InProcessTransport(self.broker).send(envelope)


@dataclass
class World:
    local: LocalAws
    scenario: seed.Scenario
    broker: Broker
    kms_key: str
    sentinel: str
    artifact_store: str
    pipeline_role: str

    def alive(self) -> bool:
        s3 = self.local.client("s3")
        try:
            s3.head_bucket(Bucket=self.sentinel)
        except s3.exceptions.ClientError:
            return False
        return True

    def tooling_session(self) -> boto3.Session:
        """A fresh session with the tooling account's credentials (where the action runs)."""
        frozen = self.local.admin_session(TOOLING).get_credentials().get_frozen_credentials()
        return boto3.Session(
            aws_access_key_id=frozen.access_key,
            aws_secret_access_key=frozen.secret_key,
            aws_session_token=frozen.token,
            region_name=LOCAL_REGION,
        )

    def artifact(self, files: dict[str, str]) -> str:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, text in files.items():
                zf.writestr(name, text)
        key = f"{ARTIFACT_KEY}.{secrets.token_hex(3)}"
        self.local.client("s3", TOOLING).put_object(Bucket=self.artifact_store, Key=key, Body=buf.getvalue())
        return key

    def pipeline(self, user_parameters: str, *, account: str = TOOLING, function: str = STEP_FUNCTION) -> str:
        """A pipeline (in moto) whose Grants stage invokes ``function`` with ``user_parameters``."""
        name = f"service-a-{secrets.token_hex(4)}"
        source = {"category": "Source", "owner": "AWS", "provider": "S3", "version": "1"}
        invoke = {"category": "Invoke", "owner": "AWS", "provider": "Lambda", "version": "1"}
        stages = [
            {
                "name": "Source",
                "actions": [
                    {
                        "name": "Source",
                        "actionTypeId": source,
                        "configuration": {"S3Bucket": self.artifact_store, "S3ObjectKey": "source.zip"},
                        "outputArtifacts": [{"name": "BuildOutput"}],
                    }
                ],
            },
            {
                "name": "Grants",
                "actions": [
                    {
                        "name": "Grants",
                        "actionTypeId": invoke,
                        "configuration": {"FunctionName": function, "UserParameters": user_parameters},
                        "inputArtifacts": [{"name": "BuildOutput"}],
                    }
                ],
            },
        ]
        self.local.client("codepipeline", account).create_pipeline(
            pipeline={
                "name": name,
                "roleArn": self.pipeline_role.replace(TOOLING, account),
                "artifactStore": {"type": "S3", "location": self.artifact_store},
                "stages": stages,
            }
        )
        return name

    def job(self, pipeline: str, artifact_key: str, *, account: str = TOOLING, stage: str = "Grants") -> dict[str, Any]:
        """The job CodePipeline makes when a new execution of ``pipeline`` reaches ``stage``."""
        client = self.local.client("codepipeline", account)
        execution = client.start_pipeline_execution(name=pipeline)["pipelineExecutionId"]
        frozen = self.local.admin_session(account).get_credentials().get_frozen_credentials()
        return jobs.create_job(
            self.local.endpoint,
            account,
            pipeline=pipeline,
            execution_id=execution,
            stage=stage,
            action=stage,
            input_artifacts=[{"name": "BuildOutput", "bucketName": self.artifact_store, "objectKey": artifact_key}]
            if stage == "Grants"
            else [],
            artifact_credentials={
                "accessKeyId": frozen.access_key,
                "secretAccessKey": frozen.secret_key,
                "sessionToken": frozen.token,
            },
        )

    def record(self, job_id: str) -> dict[str, Any] | None:
        return jobs.job_record(self.local.endpoint, job_id)

    def calls_for(self, job_id: str) -> list[str]:
        return [c["operation"] for c in jobs.job_calls(self.local.endpoint) if c["jobId"] == job_id]

    def ledger_size(self) -> int:
        return sum(1 for _ in self.scenario.ledger().ledger.entries())


def _store_stack(local: LocalAws, account: str, bucket: str, key_arn: str) -> None:
    local.client("cloudformation", account).create_stack(
        StackName="artifact-store",
        TemplateBody=STORE_TEMPLATE,
        Parameters=[
            {"ParameterKey": "BucketName", "ParameterValue": bucket},
            {"ParameterKey": "KeyArn", "ParameterValue": key_arn},
        ],
    )


def build_world(local: LocalAws, workdir: Path) -> World:
    local.reset()
    scenario = seed.build(local, workdir)
    # The tooling account's signing key in KMS, registered to ci-tooling.
    kms = local.client("kms", TOOLING)
    signing_key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    public = public_pem_from_der(kms.get_public_key(KeyId=signing_key)["PublicKey"])
    callers_path = scenario.policies_dir / "callers.yaml"
    callers = yaml.safe_load(callers_path.read_text())
    window = {k: callers["callers"]["ci-tooling"]["keys"][0][k] for k in ("not_before", "not_after")}
    callers["callers"]["ci-tooling"]["keys"].append(
        {"id": KMS_KEY_ID, "algorithm": "ecdsa-p256-sha256", "public_key": public, "kms_key_arn": signing_key, **window}
    )
    callers_path.write_text(yaml.safe_dump(callers, sort_keys=False))
    # The artifact store's stack, in the tooling account (where the action runs) and in the
    # default account (where the CLI test's credentials act).
    for account in (TOOLING, seed.ACCOUNTS["broker"]):
        _store_stack(local, account, scenario.bucket, scenario.key_arn)
    sentinel = f"dh-cp-world-{secrets.token_hex(6)}"
    local.client("s3").create_bucket(Bucket=sentinel)
    # CodePipeline's own artifact store (the builds it passes between actions).
    artifact_store = f"codepipeline-{LOCAL_REGION}-{secrets.token_hex(6)}"
    local.client("s3", TOOLING).create_bucket(Bucket=artifact_store)
    sts = local.base_session().client("sts", endpoint_url=local.endpoint, config=LOCAL_CONFIG)
    creds = sts.assume_role(RoleArn=seed.BROKER_EXEC_ROLE, RoleSessionName="deploy-helper")["Credentials"]
    session = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=LOCAL_REGION,
    )
    strict_aws.install(session, local)
    # CodePipeline's service role, in the tooling account and in a service account (whose
    # own pipelines' jobs the tooling account's step must not see).
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "codepipeline.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    for account in (TOOLING, seed.ACCOUNTS["service-a"]):
        role = local.client("iam", account).create_role(
            RoleName="codepipeline-service", AssumeRolePolicyDocument=json.dumps(trust)
        )["Role"]["Arn"]
    pipeline_role = role.replace(seed.ACCOUNTS["service-a"], TOOLING)
    broker = scenario.broker(session=session)
    return World(local, scenario, broker, signing_key, sentinel, artifact_store, pipeline_role)


def current_world(box: dict[str, World], local: LocalAws, workdir: Callable[[], Path]) -> World:
    """The module's world, rebuilt if another module reset the local AWS in between."""
    if "world" not in box or not box["world"].alive():
        box["world"] = build_world(local, workdir())
    return box["world"]


def step(
    world: World,
    *,
    kms: bool,
    pipelines: str,
    transport: Transport | None = None,
    part_size: int | None = None,
) -> PipelineStep:
    """The step as its function's environment configures it, serving ``pipelines``; installed for ``handler``.

    ``part_size``: ``DEPLOY_HELPER_PART_SIZE``, the most grants per signed request.
    """
    environ = {
        "AWS_LAMBDA_FUNCTION_NAME": STEP_FUNCTION,
        "DEPLOY_HELPER_PIPELINES": pipelines,
        "DEPLOY_HELPER_CALLER": "ci-tooling",
        "DEPLOY_HELPER_AUDIENCE": seed.AUDIENCE,
    }
    if part_size is not None:
        environ["DEPLOY_HELPER_PART_SIZE"] = str(part_size)
    if kms:
        environ |= {"DEPLOY_HELPER_KEY_ID": KMS_KEY_ID, "DEPLOY_HELPER_KMS_KEY_ID": world.kms_key}
    else:
        environ |= {
            "DEPLOY_HELPER_KEY_ID": "ci-tooling-local",
            "DEPLOY_HELPER_KEY_FILE": str(world.scenario.workdir / "ci-tooling.pem"),
        }
    configured = PipelineStep.from_env(
        environ, session=world.tooling_session(), transport=transport or RecordingTransport(world.broker)
    )
    codepipeline.set_step(configured)
    return configured


def statement_for(world: World, principal: str) -> dict[str, Any] | None:
    policy = world.scenario.bucket_policy() or {"Statement": []}
    return next((s for s in policy["Statement"] if s.get("Principal") == {"AWS": principal}), None)


def entries(world: World, request_id: str, kind: str | None = "outcome") -> list[dict[str, Any]]:
    """The request's ledger entries of type ``kind`` (None: every entry about a grant)."""
    return [
        e.entry
        for e in world.scenario.ledger().ledger.entries()
        if e.entry.get("request_id") == request_id
        and (e.entry["type"] == kind if kind else e.entry.get("grant") is not None)
    ]


def role(service: str) -> str:
    return f"arn:aws:iam::{seed.ACCOUNTS[service]}:role/deploy"


def forged_data(world: World, grants: list[dict[str, Any]]) -> dict[str, Any]:
    """Job data as an attacker writes it: the grants it wants, an artifact of its own, its credentials."""
    frozen = world.local.admin_session(TOOLING).get_credentials().get_frozen_credentials()
    key = world.artifact({"grants.yaml": json.dumps({"grants": grants})})
    return {
        "actionConfiguration": {
            "configuration": {
                "FunctionName": STEP_FUNCTION,
                "UserParameters": json.dumps(
                    {"grants": grants, "context": {"pipeline": "prod-release", "execution_id": "forged"}}
                ),
            }
        },
        "inputArtifacts": [
            {
                "name": "BuildOutput",
                "location": {"type": "S3", "s3Location": {"bucketName": world.artifact_store, "objectKey": key}},
            }
        ],
        "outputArtifacts": [],
        "artifactCredentials": {
            "accessKeyId": frozen.access_key,
            "secretAccessKey": frozen.secret_key,
            "sessionToken": frozen.token,
        },
    }
