"""The pipeline step: the CodePipeline Lambda action and ``deploy-helper request`` with stack outputs.

How the action is run here (the local CodePipeline job API, jobs made from moto
pipelines) is described in ``_pipeline_world``; the attacks on it are in
``test_codepipeline_attacks``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from _pipeline_world import (
    GRANTS,
    KMS_KEY_ID,
    RecordingTransport,
    World,
    current_world,
    entries,
    role,
    statement_for,
    step,
)
from click.testing import CliRunner

from deploy_helper import handler
from deploy_helper.cli import main
from deploy_helper.local import codepipeline_jobs as jobs
from deploy_helper.local import scenario as seed
from pipeline_hooks import codepipeline
from pipeline_hooks.grants_file import default_resolvers, load_grants_file

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from deploy_helper.local.server import LocalAws


@pytest.fixture(scope="module")
def world_box() -> dict[str, World]:
    return {}


@pytest.fixture
def world(world_box: dict[str, World], local: LocalAws, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield current_world(world_box, local, lambda: tmp_path_factory.mktemp("cp-world"))
    handler.set_broker(None)
    codepipeline.set_step(None)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("REPOSITORY", "service-a")
    monkeypatch.setenv("TARGET_ACCOUNT", seed.ACCOUNTS["service-a"])
    monkeypatch.setenv("ACCESS", "read")
    return monkeypatch


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
    statement = statement_for(world, role("service-a"))
    assert statement is not None and "s3:GetObject" in statement["Action"]
    assert any(g["GranteePrincipal"] == role("service-a") for g in world.scenario.key_grants())
    outcome_entries = entries(world, outcome["request_id"])
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
