"""The pipeline step: CodePipeline Lambda action and ``deploy-helper request`` with stack outputs.

The action runs as it would in the tooling account, through its real entry point
``pipeline_hooks.codepipeline.handler``: it confirms the job with CodePipeline
(``GetJobDetails``, ``GetPipelineState``), reads the grants file from the input
artifact (a zip in the artifact bucket, read with CodePipeline's artifact
credentials), resolves ``${stack:...}`` / ``${env:...}``, signs (with a KMS key or a
key file), sends the request through the real broker handler, and ends the job.

moto 5.2 keeps pipelines and executions but not jobs; the local server serves
CodePipeline's job API in front of moto (``deploy_helper.local.codepipeline_jobs``),
so the step makes its real boto3 ``codepipeline`` calls over HTTP. Jobs are made by
the harness as CodePipeline makes them, from a pipeline created with moto
(``create_pipeline``, ``start_pipeline_execution``); the job's result and every job
API call are read back from the server, policies and KMS grants from moto.

Attacks are sent as someone who may invoke the step function and knows this code:
a forged job id, a real job id with the event's data swapped, a job of a pipeline
the step does not serve, a replayed finished job. Each shows nothing signed or sent
(no broker ledger entry), every policy and grant unchanged, and no answer to a job
that is not this step's.
"""

from __future__ import annotations

import io
import json
import secrets
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import yaml
from click.testing import CliRunner

from deploy_helper import handler
from deploy_helper.cli import main
from deploy_helper.exceptions import RequestError
from deploy_helper.local import codepipeline_jobs as jobs
from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.server import LOCAL_CONFIG, LOCAL_REGION
from deploy_helper.signing import public_pem_from_der
from pipeline_hooks import codepipeline
from pipeline_hooks.client import InProcessTransport
from pipeline_hooks.codepipeline import JobNotConfirmedError, PipelineStep
from pipeline_hooks.grants_file import default_resolvers, load_grants_file

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from deploy_helper.broker import Broker
    from deploy_helper.local.server import LocalAws

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


@pytest.fixture(scope="module")
def world_box(local: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> dict[str, World]:
    return {"world": build_world(local, tmp_path_factory.mktemp("cp-world"))}


@pytest.fixture
def world(world_box: dict[str, World], local: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not world_box["world"].alive():  # another module reset the local AWS in between
        world_box["world"] = build_world(local, tmp_path_factory.mktemp("cp-world"))
    yield world_box["world"]
    handler.set_broker(None)
    codepipeline.set_step(None)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("REPOSITORY", "service-a")
    monkeypatch.setenv("TARGET_ACCOUNT", seed.ACCOUNTS["service-a"])
    monkeypatch.setenv("ACCESS", "read")
    return monkeypatch


def step(world: World, *, kms: bool, pipelines: str, transport: RecordingTransport | None = None) -> PipelineStep:
    """The step as its function's environment configures it, serving ``pipelines``; installed for ``handler``."""
    environ = {
        "AWS_LAMBDA_FUNCTION_NAME": STEP_FUNCTION,
        "DEPLOY_HELPER_PIPELINES": pipelines,
        "DEPLOY_HELPER_CALLER": "ci-tooling",
        "DEPLOY_HELPER_AUDIENCE": seed.AUDIENCE,
    }
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


def _statement_for(world: World, principal: str) -> dict[str, Any] | None:
    policy = world.scenario.bucket_policy() or {"Statement": []}
    return next((s for s in policy["Statement"] if s.get("Principal") == {"AWS": principal}), None)


def _entries(world: World, request_id: str, kind: str | None = "outcome") -> list[dict[str, Any]]:
    """The request's ledger entries of type ``kind`` (None: every entry about a grant)."""
    return [
        e.entry
        for e in world.scenario.ledger().ledger.entries()
        if e.entry.get("request_id") == request_id
        and (e.entry["type"] == kind if kind else e.entry.get("grant") is not None)
    ]


def _role(service: str) -> str:
    return f"arn:aws:iam::{seed.ACCOUNTS[service]}:role/deploy"


def _forged_data(world: World, grants: list[dict[str, Any]]) -> dict[str, Any]:
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


# -- the action as CodePipeline runs it ---------------------------------------------


def test_the_action_applies_the_artifact_grants_and_reports_success(world: World, env: pytest.MonkeyPatch) -> None:
    key = world.artifact({"deploy/grants.yaml": GRANTS})
    pipeline = world.pipeline(json.dumps({"grants_file": "deploy/grants.yaml", "context": {"commit": "0a1b2c3"}}))
    job = world.job(pipeline, key)
    transport = RecordingTransport(world.broker)
    step(world, kms=True, pipelines=f"unrelated,{pipeline}", transport=transport)

    outcome = codepipeline.handler(jobs.lambda_event(job), None)

    assert outcome["ok"] is True, outcome["message"]
    record = world.record(job["id"])
    assert record is not None and record["status"] == "Succeeded"
    details = record["result"]["executionDetails"]
    assert details["summary"] == "2 grant(s): 2 applied"
    assert details["externalExecutionId"] == outcome["request_id"]
    assert world.calls_for(job["id"]) == ["GetJobDetails", "PutJobSuccessResult"]
    assert len(transport.sent) == 1
    statement = _statement_for(world, _role("service-a"))
    assert statement is not None and "s3:GetObject" in statement["Action"]
    assert any(g["GranteePrincipal"] == _role("service-a") for g in world.scenario.key_grants())
    outcome_entries = _entries(world, outcome["request_id"])
    assert {e["key_id"] for e in outcome_entries} == {KMS_KEY_ID}
    context = job["data"]["pipelineContext"]
    assert outcome_entries[0]["context"] == {
        "repository": "service-a",
        "commit": "0a1b2c3",
        "pipeline": context["pipelineArn"],
        "execution_id": context["pipelineExecutionId"],
    }


def test_a_pipeline_named_by_its_arn_is_served(world: World, env: pytest.MonkeyPatch) -> None:
    key = world.artifact({"grants.yaml": GRANTS})
    job = world.job(world.pipeline('{"grants_file": "grants.yaml", "plan": true}'), key)
    step(world, kms=False, pipelines=job["data"]["pipelineContext"]["pipelineArn"])
    outcome = codepipeline.handler(jobs.lambda_event(job), None)
    assert outcome["ok"] is True, outcome["message"]
    assert world.record(job["id"])["status"] == "Succeeded"  # type: ignore[index]


def test_a_denied_grant_fails_the_job_and_says_why(world: World, env: pytest.MonkeyPatch) -> None:
    env.setenv("TARGET_ACCOUNT", seed.ACCOUNTS["service-b"])
    env.setenv("ACCESS", "write")  # the rule allows read only
    key = world.artifact({"grants.yaml": GRANTS})
    pipeline = world.pipeline(json.dumps({"grants_file": "grants.yaml"}))
    job = world.job(pipeline, key)
    before = world.scenario.snapshot()
    step(world, kms=False, pipelines=pipeline)
    outcome = codepipeline.handler(jobs.lambda_event(job), None)

    assert outcome["ok"] is False
    record = world.record(job["id"])
    assert record is not None and record["status"] == "Failed"
    assert record["result"]["failureDetails"]["type"] == "JobFailed"
    message = record["result"]["failureDetails"]["message"]
    assert message.startswith("2 grant(s): 1 applied, 1 denied\n")
    assert "denied: bucket-access on arn:aws:s3:::dh-artifacts-111111111111" in message
    assert "rule 'artifact-read' refused the grant: access: access 'write' is not among ['read']" in message
    after = world.scenario.snapshot()
    assert after["bucket_policy"] == before["bucket_policy"]  # the denied grant changed nothing


@pytest.mark.parametrize(
    ("files", "params", "expected"),
    [
        (
            {"grants.yaml": GRANTS},
            '{"grants_file": "missing.yaml"}',
            "missing.yaml is not in input artifact BuildOutput",
        ),
        ({"grants.yaml": GRANTS}, "grants.yaml", "UserParameters is not JSON"),
        ({"grants.yaml": GRANTS}, '{"grants_file": "../x.yaml"}', "grants_file must be a relative path"),
        (
            {"grants.yaml": GRANTS.replace("artifact-store.KeyArn", "artifact-store.Nope")},
            '{"grants_file": "grants.yaml"}',
            "stack artifact-store has no output 'Nope' (its outputs: BucketName, KeyArn)",
        ),
        (
            {"grants.yaml": GRANTS.replace("artifact-store.", "no-such-stack.")},
            '{"grants_file": "grants.yaml"}',
            "stack no-such-stack does not exist here",
        ),
    ],
)
def test_a_misconfigured_action_fails_the_job_with_what_to_fix(
    world: World, env: pytest.MonkeyPatch, files: dict[str, str], params: str, expected: str
) -> None:
    key = world.artifact(files)
    pipeline = world.pipeline(params)
    job = world.job(pipeline, key)
    before = world.scenario.snapshot()
    step(world, kms=False, pipelines=pipeline)
    outcome = codepipeline.handler(jobs.lambda_event(job), None)
    assert outcome["ok"] is False
    record = world.record(job["id"])
    assert record is not None and record["status"] == "Failed"
    assert record["result"]["failureDetails"]["type"] == "ConfigurationError"
    assert expected in record["result"]["failureDetails"]["message"]
    assert world.scenario.snapshot() == before


# -- attacks by someone who may invoke the step function ----------------------------


@pytest.mark.parametrize("which", ["unknown", "another account's job", "another action's job", "not a job id"])
def test_a_forged_job_signs_and_sends_nothing(world: World, env: pytest.MonkeyPatch, which: str) -> None:
    """The event lists grants the caller's rules allow; CodePipeline does not confirm the job as the step's."""
    served = world.pipeline('{"grants_file": "grants.yaml"}')
    if which == "unknown":
        job_id = str(uuid.uuid4())
    elif which == "another account's job":
        other = world.pipeline('{"grants_file": "grants.yaml"}', account=seed.ACCOUNTS["service-a"])
        job_id = world.job(other, world.artifact({"grants.yaml": GRANTS}), account=seed.ACCOUNTS["service-a"])["id"]
    elif which == "another action's job":  # the Source action of a pipeline the step serves
        job_id = world.job(served, "", stage="Source")["id"]
    else:
        job_id = "../../" + str(uuid.uuid4())
    wanted = [world.scenario.bucket_grant("service-b"), world.scenario.key_grant("service-b")]
    event = {"CodePipeline.job": {"id": job_id, "accountId": TOOLING, "data": _forged_data(world, wanted)}}
    transport = RecordingTransport(world.broker)
    step(world, kms=True, pipelines=served, transport=transport)
    before, ledger_before = world.scenario.snapshot(), world.ledger_size()

    error = JobNotConfirmedError if which != "not a job id" else RequestError
    with pytest.raises(error) as refused:
        codepipeline.handler(event, None)

    assert "nothing was signed" in refused.value.message or which == "not a job id"
    assert transport.sent == []  # nothing signed, nothing sent
    assert world.ledger_size() == ledger_before  # the broker saw no request at all
    assert world.scenario.snapshot() == before
    assert _statement_for(world, _role("service-b")) is None
    calls = world.calls_for(job_id)
    assert not [c for c in calls if c.startswith("PutJob")]  # no answer to a job that is not the step's
    assert calls == ([] if which == "not a job id" else ["GetJobDetails"])
    if which != "unknown" and which != "not a job id":
        assert world.record(job_id)["status"] == "InProgress"  # type: ignore[index]  # left to its own worker


def test_a_real_job_with_swapped_event_data_runs_only_what_codepipeline_says(
    world: World, env: pytest.MonkeyPatch
) -> None:
    """The attacker takes a running job's id and writes its own UserParameters, artifact and credentials."""
    key = world.artifact({"grants.yaml": GRANTS})
    pipeline = world.pipeline('{"grants_file": "grants.yaml"}')
    job = world.job(pipeline, key)
    wanted = [world.scenario.bucket_grant("service-b"), world.scenario.key_grant("service-b")]
    event = {"CodePipeline.job": {"id": job["id"], "accountId": TOOLING, "data": _forged_data(world, wanted)}}
    transport = RecordingTransport(world.broker)
    step(world, kms=False, pipelines=pipeline, transport=transport)
    grants_before = world.scenario.key_grants()

    outcome = codepipeline.handler(event, None)

    assert outcome["ok"] is True, outcome["message"]
    assert len(transport.sent) == 1
    outcomes = _entries(world, outcome["request_id"], kind=None)
    assert sorted({e["grant"]["kind"] for e in outcomes}) == ["bucket-access", "kms-grant"]
    principals = {e["grant"].get("principal") or e["grant"].get("grantee") for e in outcomes}
    assert principals == {_role("service-a")}  # the job's grants file, not the event's grants
    context = job["data"]["pipelineContext"]
    assert {e["context"]["pipeline"] for e in outcomes} == {context["pipelineArn"]}
    assert {e["context"]["execution_id"] for e in outcomes} == {context["pipelineExecutionId"]}
    assert _statement_for(world, _role("service-b")) is None
    service_b = [g for g in world.scenario.key_grants() if g["GranteePrincipal"] == _role("service-b")]
    assert service_b == [g for g in grants_before if g["GranteePrincipal"] == _role("service-b")]
    assert world.record(job["id"])["status"] == "Succeeded"  # type: ignore[index]


def test_a_job_of_a_pipeline_the_step_does_not_serve_is_refused_and_answered(
    world: World, env: pytest.MonkeyPatch
) -> None:
    served = world.pipeline('{"grants_file": "grants.yaml"}')
    other = world.pipeline('{"grants_file": "grants.yaml"}')
    job = world.job(other, world.artifact({"grants.yaml": GRANTS}))
    transport = RecordingTransport(world.broker)
    step(world, kms=False, pipelines=served, transport=transport)
    before, ledger_before = world.scenario.snapshot(), world.ledger_size()

    outcome = codepipeline.handler(jobs.lambda_event(job), None)

    assert outcome["ok"] is False
    record = world.record(job["id"])
    assert record is not None and record["status"] == "Failed"
    failure = record["result"]["failureDetails"]
    assert failure["type"] == "ConfigurationError"
    arn = job["data"]["pipelineContext"]["pipelineArn"]
    assert (
        f"this step does not serve pipeline {arn}: add its name or ARN to DEPLOY_HELPER_PIPELINES"
        in (failure["message"])
    )
    assert world.calls_for(job["id"]) == ["GetJobDetails", "PutJobFailureResult"]
    assert transport.sent == []
    assert world.ledger_size() == ledger_before
    assert world.scenario.snapshot() == before


def test_a_finished_job_of_a_pipeline_not_served_is_refused_without_an_answer(
    world: World, env: pytest.MonkeyPatch
) -> None:
    job = world.job(world.pipeline('{"grants_file": "grants.yaml"}'), world.artifact({"grants.yaml": GRANTS}))
    world.local.client("codepipeline", TOOLING).put_job_success_result(jobId=job["id"])  # its own run ended it
    transport = RecordingTransport(world.broker)
    step(world, kms=False, pipelines="some-other-pipeline", transport=transport)
    before, ledger_before = world.scenario.snapshot(), world.ledger_size()

    outcome = codepipeline.handler(jobs.lambda_event(job), None)

    assert outcome["ok"] is False
    assert "not answered: the job is no longer in progress" in outcome["message"]
    assert world.record(job["id"])["result"]["operation"] == "PutJobSuccessResult"  # type: ignore[index]
    assert transport.sent == []
    assert world.ledger_size() == ledger_before
    assert world.scenario.snapshot() == before


def test_a_finished_job_replayed_is_not_run_again(world: World, env: pytest.MonkeyPatch) -> None:
    """A revoke step's old job, replayed after the grant was applied again, must not revoke it."""
    key = world.artifact({"grants.yaml": GRANTS})
    pipeline = world.pipeline('{"grants_file": "grants.yaml", "action": "revoke"}')
    job = world.job(pipeline, key)
    transport = RecordingTransport(world.broker)
    step(world, kms=False, pipelines=pipeline, transport=transport)
    assert codepipeline.handler(jobs.lambda_event(job), None)["ok"] is True
    # The grants are applied again afterwards (another pipeline, or the CLI).
    world.scenario.client(world.broker).request(
        [world.scenario.bucket_grant("service-a"), world.scenario.key_grant("service-a")]
    )
    before, ledger_before, sent = world.scenario.snapshot(), world.ledger_size(), len(transport.sent)
    assert _statement_for(world, _role("service-a")) is not None

    with pytest.raises(JobNotConfirmedError, match="is not running"):
        codepipeline.handler(jobs.lambda_event(job), None)

    assert len(transport.sent) == sent
    assert world.ledger_size() == ledger_before
    assert world.scenario.snapshot() == before
    assert world.calls_for(job["id"]).count("PutJobSuccessResult") == 1  # only the real run's answer


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"CodePipeline.job": {"id": "x"}},
        {"CodePipeline.job": {"id": str(uuid.uuid4()), "extra": 1}},
        {"CodePipeline.job": {"id": str(uuid.uuid4())}, "RequestType": "Create"},
        [],
    ],
)
def test_an_event_that_is_not_a_job_event_is_refused_before_any_call(world: World, event: Any) -> None:
    calls = len(jobs.job_calls(world.local.endpoint))
    with pytest.raises(RequestError, match="not a CodePipeline job event"):
        codepipeline.handler(event, None)
    assert len(jobs.job_calls(world.local.endpoint)) == calls


def test_a_misconfigured_step_answers_only_a_confirmed_job_of_its_function(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEPLOY_HELPER_PIPELINES unset: a real job is failed with what to fix; a forged one is not answered."""
    frozen = world.local.admin_session(TOOLING).get_credentials().get_frozen_credentials()
    for name, value in {
        "AWS_ACCESS_KEY_ID": frozen.access_key,
        "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
        "AWS_SESSION_TOKEN": frozen.token,
        "AWS_LAMBDA_FUNCTION_NAME": STEP_FUNCTION,
        "DEPLOY_HELPER_KEY_ID": "ci-tooling-local",
        "DEPLOY_HELPER_KEY_FILE": str(world.scenario.workdir / "ci-tooling.pem"),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DEPLOY_HELPER_PIPELINES", raising=False)
    codepipeline.set_step(None)
    job = world.job(world.pipeline('{"grants_file": "grants.yaml"}'), world.artifact({"grants.yaml": GRANTS}))

    outcome = codepipeline.handler(jobs.lambda_event(job), None)
    assert outcome["ok"] is False
    record = world.record(job["id"])
    assert record is not None and record["result"]["failureDetails"]["type"] == "ConfigurationError"
    assert "set DEPLOY_HELPER_PIPELINES to the pipelines this step serves" in outcome["message"]

    forged = str(uuid.uuid4())
    with pytest.raises(JobNotConfirmedError):
        codepipeline.handler({"CodePipeline.job": {"id": forged, "data": {}}}, None)
    assert world.calls_for(forged) == ["GetJobDetails"]


def test_the_stack_resolver_reads_outputs_once_per_stack(world: World, env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    session = world.tooling_session()
    calls: list[str] = []
    session.events.register("before-call.cloudformation.DescribeStacks", lambda **_: calls.append("x"))
    path = tmp_path / "grants.yaml"
    path.write_text(GRANTS)
    loaded = load_grants_file(path, default_resolvers(session))
    assert loaded.grants[0]["bucket"] == world.scenario.bucket
    assert loaded.grants[1]["key"] == world.scenario.key_arn
    assert loaded.context == {"repository": "service-a"}
    assert calls == ["x"]


def test_the_cli_step_exits_non_zero_on_a_denied_grant_and_prints_why(world: World, tmp_path: Path) -> None:
    path = tmp_path / "grants.yaml"
    path.write_text(GRANTS)
    environ = {
        **world.scenario.environ(),
        "REPOSITORY": "service-a",
        "TARGET_ACCOUNT": seed.ACCOUNTS["service-b"],
        "ACCESS": "write",
    }
    result = CliRunner().invoke(
        main,
        [
            "request",
            str(path),
            "--in-process",
            "--key-id",
            "ci-tooling-local",
            "--key-file",
            str(world.scenario.workdir / "ci-tooling.pem"),
            "--json",
        ],
        env=environ,
        catch_exceptions=False,
    )
    assert result.exit_code == 1, result.output
    answer = json.loads(result.output)
    denied = [r for r in answer["results"] if r["decision"] == "denied"]
    assert len(denied) == 1
    assert denied[0]["target"] == f"arn:aws:s3:::{world.scenario.bucket}"  # resolved from the stack
    assert "access 'write' is not among ['read']" in denied[0]["reason"]
