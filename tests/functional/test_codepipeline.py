"""The pipeline step: CodePipeline Lambda action and ``deploy-helper request`` with stack outputs.

The action runs as it would in the tooling account: it reads the grants file
from the input artifact (a zip in the artifact bucket, read with the job's
artifact credentials), resolves ``${stack:...}`` / ``${env:...}``, signs (with
a KMS key or a key file), sends the request through the real Lambda handler,
and ends the job. moto 5.2 does not implement CodePipeline's job APIs
(``PutJobSuccessResult``, ``PutJobFailureResult``), so the job results are
recorded by a botocore hook on the action's CodePipeline client, after
botocore has validated the call against CodePipeline's API model; the hook
answers as AWS does (HTTP 200, empty body). Policies and KMS grants are read
back from the moto server.
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
from botocore.awsrequest import AWSResponse
from click.testing import CliRunner

from deploy_helper import handler
from deploy_helper.cli import main
from deploy_helper.local import scenario as seed
from deploy_helper.local import strict_aws
from deploy_helper.local.server import LOCAL_CONFIG, LOCAL_REGION
from deploy_helper.signing import public_pem_from_der
from pipeline_hooks.client import InProcessTransport
from pipeline_hooks.codepipeline import PipelineStep
from pipeline_hooks.grants_file import default_resolvers, load_grants_file

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from deploy_helper.broker import Broker
    from deploy_helper.local.server import LocalAws

TOOLING = seed.ACCOUNTS["tooling"]
KMS_KEY_ID = "ci-tooling-kms-local"
ARTIFACT_KEY = "service-a-pipeline/BuildOutput/build.zip"

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


class _Empty:
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b""


@dataclass
class JobResults:
    """Stands in for CodePipeline's job API on one session: records, answers 200."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def install(self, session: boto3.Session) -> None:
        for operation in ("PutJobSuccessResult", "PutJobFailureResult"):
            session.events.register(f"before-parameter-build.codepipeline.{operation}", self._record)
            session.events.register(f"before-call.codepipeline.{operation}", self._answer)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, dict(params)))

    def _answer(self, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse(params["url"], 200, {}, _Empty()), {"ResponseMetadata": {"HTTPStatusCode": 200}}


@dataclass
class World:
    local: LocalAws
    scenario: seed.Scenario
    broker: Broker
    kms_key: str
    sentinel: str
    artifact_store: str

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

    def job(self, user_parameters: str, artifact_key: str) -> dict[str, Any]:
        frozen = self.local.admin_session(TOOLING).get_credentials().get_frozen_credentials()
        return {
            "CodePipeline.job": {
                "id": str(uuid.uuid4()),
                "accountId": TOOLING,
                "data": {
                    "actionConfiguration": {
                        "configuration": {"FunctionName": "deploy-helper-step", "UserParameters": user_parameters}
                    },
                    "inputArtifacts": [
                        {
                            "name": "BuildOutput",
                            "revision": None,
                            "location": {
                                "type": "S3",
                                "s3Location": {"bucketName": self.artifact_store, "objectKey": artifact_key},
                            },
                        }
                    ],
                    "outputArtifacts": [],
                    "artifactCredentials": {
                        "accessKeyId": frozen.access_key,
                        "secretAccessKey": frozen.secret_key,
                        "sessionToken": frozen.token,
                        "expirationTime": 1_900_000_000_000,
                    },
                },
            }
        }


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
    return World(local, scenario, scenario.broker(session=session), signing_key, sentinel, artifact_store)


@pytest.fixture(scope="module")
def world_box(local: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> dict[str, World]:
    return {"world": build_world(local, tmp_path_factory.mktemp("cp-world"))}


@pytest.fixture
def world(world_box: dict[str, World], local: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not world_box["world"].alive():  # another module reset the local AWS in between
        world_box["world"] = build_world(local, tmp_path_factory.mktemp("cp-world"))
    yield world_box["world"]
    handler.set_broker(None)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("REPOSITORY", "service-a")
    monkeypatch.setenv("TARGET_ACCOUNT", seed.ACCOUNTS["service-a"])
    monkeypatch.setenv("ACCESS", "read")
    return monkeypatch


def step(world: World, results: JobResults, *, kms: bool) -> PipelineStep:
    session = world.tooling_session()
    results.install(session)
    environ = {"DEPLOY_HELPER_CALLER": "ci-tooling", "DEPLOY_HELPER_AUDIENCE": seed.AUDIENCE}
    if kms:
        environ |= {"DEPLOY_HELPER_KEY_ID": KMS_KEY_ID, "DEPLOY_HELPER_KMS_KEY_ID": world.kms_key}
    else:
        environ |= {
            "DEPLOY_HELPER_KEY_ID": "ci-tooling-local",
            "DEPLOY_HELPER_KEY_FILE": str(world.scenario.workdir / "ci-tooling.pem"),
        }
    return PipelineStep.from_env(environ, session=session, transport=InProcessTransport(world.broker))


def _statement_for(world: World, principal: str) -> dict[str, Any] | None:
    policy = world.scenario.bucket_policy() or {"Statement": []}
    return next((s for s in policy["Statement"] if s.get("Principal") == {"AWS": principal}), None)


def test_the_action_applies_the_artifact_grants_and_reports_success(world: World, env: pytest.MonkeyPatch) -> None:
    results = JobResults()
    key = world.artifact({"deploy/grants.yaml": GRANTS})
    params = json.dumps({"grants_file": "deploy/grants.yaml", "context": {"execution_id": "exec-0001"}})
    outcome = step(world, results, kms=True).run(world.job(params, key))

    assert outcome["ok"] is True, outcome["message"]
    ((operation, call),) = results.calls
    assert operation == "PutJobSuccessResult"
    assert call["executionDetails"]["summary"] == "2 grant(s): 2 applied"
    assert call["executionDetails"]["externalExecutionId"] == outcome["request_id"]
    role = f"arn:aws:iam::{seed.ACCOUNTS['service-a']}:role/deploy"
    statement = _statement_for(world, role)
    assert statement is not None and "s3:GetObject" in statement["Action"]
    assert any(g["GranteePrincipal"] == role for g in world.scenario.key_grants())
    outcome_entries = [
        e.entry
        for e in world.scenario.ledger().ledger.entries()
        if e.entry.get("request_id") == outcome["request_id"] and e.entry["type"] == "outcome"
    ]
    assert {e["key_id"] for e in outcome_entries} == {KMS_KEY_ID}
    assert outcome_entries[0]["context"] == {"repository": "service-a", "execution_id": "exec-0001"}


def test_a_denied_grant_fails_the_job_and_says_why(world: World, env: pytest.MonkeyPatch) -> None:
    env.setenv("TARGET_ACCOUNT", seed.ACCOUNTS["service-b"])
    env.setenv("ACCESS", "write")  # the rule allows read only
    results = JobResults()
    key = world.artifact({"grants.yaml": GRANTS})
    before = world.scenario.snapshot()
    outcome = step(world, results, kms=False).run(world.job(json.dumps({"grants_file": "grants.yaml"}), key))

    assert outcome["ok"] is False
    ((operation, call),) = results.calls
    assert operation == "PutJobFailureResult"
    assert call["failureDetails"]["type"] == "JobFailed"
    message = call["failureDetails"]["message"]
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
    results = JobResults()
    key = world.artifact(files)
    before = world.scenario.snapshot()
    outcome = step(world, results, kms=False).run(world.job(params, key))
    assert outcome["ok"] is False
    ((operation, call),) = results.calls
    assert operation == "PutJobFailureResult"
    assert call["failureDetails"]["type"] == "ConfigurationError"
    assert expected in call["failureDetails"]["message"]
    assert world.scenario.snapshot() == before


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
            "--apply",
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
