"""The pipeline step: the CodePipeline Lambda action and ``deploy-helper request`` with stack outputs.

How the action is run here (the local CodePipeline job API, jobs made from moto
pipelines) is described in ``_pipeline_world``; the attacks on it are in
``test_codepipeline_attacks``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

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
from botocore.exceptions import ClientError
from click.testing import CliRunner

from deploy_helper import handler
from deploy_helper.cli import main
from deploy_helper.local import codepipeline_jobs as jobs
from deploy_helper.local import scenario as seed
from deploy_helper.models import MAX_GRANTS
from pipeline_hooks import codepipeline
from pipeline_hooks.codepipeline import PipelineStep, StepError
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


def _split_grants(world: World, service: str, kinds: tuple[str, ...]) -> str:
    """A grants file of ``service``'s seed grants of ``kinds`` (resource policies in the tooling account)."""
    return json.dumps({"grants": [world.scenario.grant(kind, service) for kind in kinds]})


SPLIT_KINDS = ("ecr-pull", "sns-publish", "secret-read")


def test_a_grants_file_past_the_part_size_goes_as_two_requests_and_again_changes_nothing(
    world: World, env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # DEPLOY_HELPER_PART_SIZE=2 stands for the broker's cap of 1,000 grants: 3 grants are "1,001"
    key = world.artifact({"grants.yaml": _split_grants(world, "service-a", SPLIT_KINDS)})
    pipeline = world.pipeline(json.dumps({"grants_file": "grants.yaml"}))
    job = world.job(pipeline, key)
    transport = RecordingTransport(world.broker)
    step(world, kms=True, pipelines=pipeline, transport=transport, part_size=2)

    with caplog.at_level("INFO", logger="pipeline_hooks.codepipeline"):
        outcome = codepipeline.handler(jobs.lambda_event(job), None)

    assert outcome["ok"] is True, outcome["message"]
    request_id = outcome["request_id"]
    parts = [f"{request_id}.1of2", f"{request_id}.2of2"]
    record = world.record(job["id"])
    assert record is not None and record["status"] == "Succeeded"
    details = record["result"]["executionDetails"]
    assert details["summary"] == f"3 grant(s) in 2 requests ({parts[0]} to {parts[1]}): 3 applied"
    assert details["externalExecutionId"] == request_id
    assert world.calls_for(job["id"]) == ["GetJobDetails", "PutJobSuccessResult"]
    assert len(transport.sent) == 2
    for kind in SPLIT_KINDS:
        assert role("service-a") in json.dumps(world.scenario.resource_policy(kind)), kind
    # the ledger has each part under its own request id, and nothing under the whole's
    assert [len(entries(world, part)) for part in parts] == [2, 1]
    assert entries(world, request_id) == []
    lines = [r.getMessage() for r in caplog.records if " grants ... " in r.getMessage()]
    assert len(lines) == 2
    for n, (part, line) in enumerate(zip(parts, lines, strict=True), start=1):
        assert f"part {n}/2 ({part}): " in line and " ... done in " in line

    again = world.job(pipeline, key)  # the pipeline's next execution, with the same artifact
    second = codepipeline.handler(jobs.lambda_event(again), None)

    assert second["ok"] is True, second["message"]
    assert second["request_id"] != request_id
    summary = world.record(again["id"])["result"]["executionDetails"]["summary"]  # type: ignore[index]
    assert summary.endswith("): 3 unchanged") and f"{second['request_id']}.2of2" in summary
    # the broker was sent each run's two parts, signed, under the parts' ids
    sent = [json.loads(e["signed"])["payload"]["request_id"] for e in transport.sent]
    assert sent == [*parts, f"{second['request_id']}.1of2", f"{second['request_id']}.2of2"]


def test_a_refused_part_fails_the_job_naming_the_part_and_keeps_the_other_parts(
    world: World, env: pytest.MonkeyPatch
) -> None:
    grants = json.loads(_split_grants(world, "service-b", SPLIT_KINDS[:2]))["grants"]
    grants.append({**world.scenario.grant("sns-publish", "service-b"), "topic": "not a topic"})
    key = world.artifact({"grants.yaml": json.dumps({"grants": grants})})
    pipeline = world.pipeline(json.dumps({"grants_file": "grants.yaml"}))
    job = world.job(pipeline, key)
    step(world, kms=False, pipelines=pipeline, part_size=2)

    outcome = codepipeline.handler(jobs.lambda_event(job), None)

    assert outcome["ok"] is False
    request_id = outcome["request_id"]
    record = world.record(job["id"])
    assert record is not None and record["status"] == "Failed"
    failure = record["result"]["failureDetails"]
    assert failure["type"] == "JobFailed" and failure["externalExecutionId"] == request_id
    head, *problems = failure["message"].splitlines()
    assert head == f"3 grant(s) in 2 requests ({request_id}.1of2 to {request_id}.2of2): 2 applied, 1 failed"
    assert len(problems) == 1
    assert problems[0].startswith(f"part 2/2 ({request_id}.2of2) refused: invalid-request: ")
    assert problems[0].endswith("(1 grant(s) in this part)")
    # the first part's grants are in place
    for kind in SPLIT_KINDS[:2]:
        assert role("service-b") in json.dumps(world.scenario.resource_policy(kind)), kind


def test_at_the_real_cap_1001_grants_go_as_1000_and_1(world: World, env: pytest.MonkeyPatch) -> None:
    # the same grant 1,001 times, the cheapest set past the cap: one write, which the second part finds done
    grant = world.scenario.grant("events-put", "service-a")
    key = world.artifact({"grants.yaml": json.dumps({"grants": [grant] * (MAX_GRANTS + 1)})})
    pipeline = world.pipeline(json.dumps({"grants_file": "grants.yaml"}))
    job = world.job(pipeline, key)
    transport = RecordingTransport(world.broker)
    step(world, kms=False, pipelines=pipeline, transport=transport)

    outcome = codepipeline.handler(jobs.lambda_event(job), None)

    assert outcome["ok"] is True, outcome["message"]
    request_id = outcome["request_id"]
    summary = world.record(job["id"])["result"]["executionDetails"]["summary"]  # type: ignore[index]
    assert summary == f"1001 grant(s) in 2 requests ({request_id}.1of2 to {request_id}.2of2): 1000 applied, 1 unchanged"
    payloads = [json.loads(e["signed"])["payload"] for e in transport.sent]
    assert [(p["request_id"], len(p["grants"])) for p in payloads] == [
        (f"{request_id}.1of2", MAX_GRANTS),
        (f"{request_id}.2of2", 1),
    ]


class _InvokeDenied:
    """The broker function as a step without ``lambda:InvokeFunction`` on it reaches it."""

    def __init__(self) -> None:
        self.count = 0

    def send(self, envelope: dict[str, str]) -> dict[str, Any]:
        self.count += 1
        error = {"Error": {"Code": "AccessDeniedException", "Message": "not authorized to invoke"}}
        raise ClientError(error, "Invoke")  # type: ignore[arg-type]


def test_a_split_request_no_part_of_which_is_answered_fails_the_job_as_one_request_would(
    world: World, env: pytest.MonkeyPatch
) -> None:
    key = world.artifact({"grants.yaml": _split_grants(world, "service-b", SPLIT_KINDS)})
    pipeline = world.pipeline(json.dumps({"grants_file": "grants.yaml"}))
    job = world.job(pipeline, key)
    transport = _InvokeDenied()
    step(world, kms=False, pipelines=pipeline, transport=transport, part_size=2)

    outcome = codepipeline.handler(jobs.lambda_event(job), None)

    assert outcome["ok"] is False and transport.count == 2
    failure = world.record(job["id"])["result"]["failureDetails"]  # type: ignore[index]
    assert failure["type"] == "PermissionError"
    assert failure["externalExecutionId"] == outcome["request_id"]
    assert failure["message"].startswith(f"no part of request {outcome['request_id']} was answered: ClientError")


@pytest.mark.parametrize("value", ["0", "1001", "many"])
def test_a_part_size_outside_one_to_a_thousand_is_a_configuration_error(world: World, value: str) -> None:
    with pytest.raises(StepError, match="DEPLOY_HELPER_PART_SIZE must be a number of grants from 1 to 1000"):
        PipelineStep.from_env(
            {
                "AWS_LAMBDA_FUNCTION_NAME": "deploy-helper-step",
                "DEPLOY_HELPER_PIPELINES": "service-a",
                "DEPLOY_HELPER_KEY_ID": "ci-tooling-local",
                "DEPLOY_HELPER_KEY_FILE": str(world.scenario.workdir / "ci-tooling.pem"),
                "DEPLOY_HELPER_PART_SIZE": value,
            },
            session=world.tooling_session(),
            transport=RecordingTransport(world.broker),
        )


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
