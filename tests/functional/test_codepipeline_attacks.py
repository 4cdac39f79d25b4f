"""Attacks on the CodePipeline action by someone who may invoke its function and knows this code.

A forged job id (unknown, of another account, of another action, malformed), a real
job id with the event's data swapped, a job of a pipeline the step does not serve, a
replayed finished job, a misconfigured step. Each goes through
``pipeline_hooks.codepipeline.handler`` and shows nothing signed or sent (no broker
ledger entry at all), every policy and grant read back unchanged, and no answer to a
job that is not the step's. The world is described in ``_pipeline_world``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest
from _pipeline_world import (
    GRANTS,
    STEP_FUNCTION,
    TOOLING,
    RecordingTransport,
    World,
    current_world,
    entries,
    forged_data,
    role,
    statement_for,
    step,
)

from deploy_helper import handler
from deploy_helper.exceptions import RequestError
from deploy_helper.local import codepipeline_jobs as jobs
from deploy_helper.local import scenario as seed
from pipeline_hooks import codepipeline
from pipeline_hooks.codepipeline import JobNotConfirmedError

if TYPE_CHECKING:
    from collections.abc import Iterator

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
    event = {"CodePipeline.job": {"id": job_id, "accountId": TOOLING, "data": forged_data(world, wanted)}}
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
    assert statement_for(world, role("service-b")) is None
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
    event = {"CodePipeline.job": {"id": job["id"], "accountId": TOOLING, "data": forged_data(world, wanted)}}
    transport = RecordingTransport(world.broker)
    step(world, kms=False, pipelines=pipeline, transport=transport)
    grants_before = world.scenario.key_grants()

    outcome = codepipeline.handler(event, None)

    assert outcome["ok"] is True, outcome["message"]
    assert len(transport.sent) == 1
    outcomes = entries(world, outcome["request_id"], kind=None)
    assert sorted({e["grant"]["kind"] for e in outcomes}) == ["bucket-access", "kms-grant"]
    principals = {e["grant"].get("principal") or e["grant"].get("grantee") for e in outcomes}
    assert principals == {role("service-a")}  # the job's grants file, not the event's grants
    context = job["data"]["pipelineContext"]
    assert {e["context"]["pipeline"] for e in outcomes} == {context["pipelineArn"]}
    assert {e["context"]["execution_id"] for e in outcomes} == {context["pipelineExecutionId"]}
    assert statement_for(world, role("service-b")) is None
    service_b = [g for g in world.scenario.key_grants() if g["GranteePrincipal"] == role("service-b")]
    assert service_b == [g for g in grants_before if g["GranteePrincipal"] == role("service-b")]
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
    assert statement_for(world, role("service-a")) is not None

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
        {"CodePipeline.job": {"id": 5}},
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


def test_a_running_job_sent_twice_at_once_sends_only_the_jobs_own_request(
    world: World, env: pytest.MonkeyPatch
) -> None:
    """A twin invocation with the same job id answers first while this one is sending (a race, made here)."""
    job = world.job(
        world.pipeline('{"grants_file": "grants.yaml", "plan": true}'), world.artifact({"grants.yaml": GRANTS})
    )

    class TwinAnswersFirst(RecordingTransport):
        def send(self, envelope: dict[str, str]) -> dict[str, Any]:
            answer = super().send(envelope)
            world.local.client("codepipeline", TOOLING).put_job_success_result(jobId=job["id"])
            return answer

    transport = TwinAnswersFirst(world.broker)
    step(world, kms=False, pipelines=job["data"]["pipelineContext"]["pipelineName"], transport=transport)

    outcome = codepipeline.handler(jobs.lambda_event(job), None)

    assert outcome["ok"] is True
    assert outcome["message"].endswith("(not answered: the job is no longer in progress)")
    assert len(transport.sent) == 1
    (sent,) = entries(world, outcome["request_id"], kind=None)[:1]
    assert sent["context"]["execution_id"] == job["data"]["pipelineContext"]["pipelineExecutionId"]
    assert world.calls_for(job["id"]).count("PutJobSuccessResult") == 2  # the twin's, then this one's (refused)
