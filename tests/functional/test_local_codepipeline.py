"""The local CodePipeline job API (deploy_helper.local.codepipeline_jobs) answers as CodePipeline does.

The pipeline step's security tests rest on it: a job is visible only in its own
account, answers to a finished job are refused, GetPipelineState shows the running
action execution. These are checked here with plain boto3 clients over HTTP.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from deploy_helper.local import codepipeline_jobs as jobs
from deploy_helper.local import scenario as seed

if TYPE_CHECKING:
    from deploy_helper.local.server import LocalAws

TOOLING = seed.ACCOUNTS["tooling"]
CREDENTIALS = {"accessKeyId": "AKIA0000000000000000", "secretAccessKey": "s", "sessionToken": "t"}


def _pipeline(local: LocalAws, account: str, name: str) -> str:
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "codepipeline.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    role = local.client("iam", account).create_role(RoleName="cp", AssumeRolePolicyDocument=json.dumps(trust))
    lambda_action = {"category": "Invoke", "owner": "AWS", "provider": "Lambda", "version": "1"}
    stages: list[dict[str, Any]] = [
        {
            "name": "Source",
            "actions": [
                {
                    "name": "Source",
                    "actionTypeId": {"category": "Source", "owner": "AWS", "provider": "S3", "version": "1"},
                    "configuration": {"S3Bucket": "b", "S3ObjectKey": "k"},
                    "outputArtifacts": [{"name": "Out"}],
                }
            ],
        },
        {
            "name": "Grants",
            "actions": [
                {
                    "name": "Grants",
                    "actionTypeId": lambda_action,
                    "configuration": {"FunctionName": "step", "UserParameters": '{"grants_file": "g.yaml"}'},
                    "inputArtifacts": [{"name": "Out"}],
                }
            ],
        },
    ]
    client = local.client("codepipeline", account)
    client.create_pipeline(
        pipeline={
            "name": name,
            "roleArn": role["Role"]["Arn"],
            "artifactStore": {"type": "S3", "location": "store"},
            "stages": stages,
        }
    )
    return str(client.start_pipeline_execution(name=name)["pipelineExecutionId"])


def test_jobs_belong_to_their_account_and_end_once(fresh_local: LocalAws) -> None:
    execution = _pipeline(fresh_local, TOOLING, "p1")
    job = jobs.create_job(
        fresh_local.endpoint,
        TOOLING,
        pipeline="p1",
        execution_id=execution,
        stage="Grants",
        action="Grants",
        input_artifacts=[{"name": "Out", "bucketName": "store", "objectKey": "p1/Out/abc"}],
        artifact_credentials=CREDENTIALS,
    )
    own = fresh_local.client("codepipeline", TOOLING)
    details = own.get_job_details(jobId=job["id"])["jobDetails"]
    assert details["accountId"] == TOOLING
    data = details["data"]
    assert data["actionConfiguration"]["configuration"]["UserParameters"] == '{"grants_file": "g.yaml"}'
    assert data["pipelineContext"]["pipelineArn"] == f"arn:aws:codepipeline:us-east-1:{TOOLING}:p1"
    assert data["pipelineContext"]["pipelineExecutionId"] == execution
    assert data["artifactCredentials"] == CREDENTIALS
    assert jobs.lambda_event(job)["CodePipeline.job"]["data"]["inputArtifacts"] == data["inputArtifacts"]

    other = fresh_local.client("codepipeline", seed.ACCOUNTS["service-a"])
    with pytest.raises(other.exceptions.JobNotFoundException):
        other.get_job_details(jobId=job["id"])
    with pytest.raises(other.exceptions.JobNotFoundException):
        other.put_job_success_result(jobId=job["id"])
    with pytest.raises(own.exceptions.JobNotFoundException):
        own.get_job_details(jobId=str(uuid.uuid4()))
    with pytest.raises(own.exceptions.ValidationException):
        own.get_job_details(jobId="not-a-job-id")
    with pytest.raises(own.exceptions.InvalidNonceException):
        own.acknowledge_job(jobId=job["id"], nonce="guessed")
    assert own.acknowledge_job(jobId=job["id"], nonce=job["nonce"])["status"] == "InProgress"

    latest = own.get_pipeline_state(name="p1")["stageStates"][1]["actionStates"][0]["latestExecution"]
    action_execution = data["pipelineContext"]["action"]["actionExecutionId"]
    assert (latest["actionExecutionId"], latest["status"]) == (action_execution, "InProgress")

    own.put_job_failure_result(jobId=job["id"], failureDetails={"type": "ConfigurationError", "message": "fix it"})
    with pytest.raises(own.exceptions.InvalidJobStateException):
        own.put_job_success_result(jobId=job["id"])
    latest = own.get_pipeline_state(name="p1")["stageStates"][1]["actionStates"][0]["latestExecution"]
    assert latest["status"] == "Failed"
    record = jobs.job_record(fresh_local.endpoint, job["id"])
    assert record is not None and record["status"] == "Failed"
    assert record["result"] == {
        "operation": "PutJobFailureResult",
        "failureDetails": {"type": "ConfigurationError", "message": "fix it"},
    }
    assert [(c["operation"], c["account"], c["error"]) for c in jobs.job_calls(fresh_local.endpoint)][:2] == [
        ("GetJobDetails", TOOLING, None),
        ("GetJobDetails", seed.ACCOUNTS["service-a"], "JobNotFoundException"),
    ]

    fresh_local.reset()
    assert jobs.job_record(fresh_local.endpoint, job["id"]) is None
    assert jobs.job_calls(fresh_local.endpoint) == []


def test_a_job_is_made_only_for_an_existing_pipeline_execution_and_action(fresh_local: LocalAws) -> None:
    execution = _pipeline(fresh_local, TOOLING, "p2")
    base: dict[str, Any] = {
        "pipeline": "p2",
        "execution_id": execution,
        "stage": "Grants",
        "action": "Grants",
        "input_artifacts": [{"name": "Out", "bucketName": "store", "objectKey": "k"}],
        "artifact_credentials": CREDENTIALS,
    }
    for change in (
        {"pipeline": "nope"},
        {"execution_id": str(uuid.uuid4())},
        {"action": "Other"},
        {"input_artifacts": []},
    ):
        with pytest.raises(RuntimeError, match="did not create the job"):
            jobs.create_job(fresh_local.endpoint, TOOLING, **(base | change))
    with pytest.raises(RuntimeError, match="did not create the job"):  # the pipeline is in another account
        jobs.create_job(fresh_local.endpoint, seed.ACCOUNTS["service-a"], **base)
