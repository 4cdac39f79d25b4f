"""CodePipeline's job API on the local AWS, next to moto's pipelines.

moto 5.2 keeps pipelines and their executions but not the jobs CodePipeline hands
to actions: ``GetJobDetails``, ``AcknowledgeJob``, ``PutJobSuccessResult``,
``PutJobFailureResult`` and ``GetPipelineState`` are not implemented. ``wrap(app)``
serves them on the local server's own endpoint, in front of moto: a boto3
``codepipeline`` client makes its real calls over HTTP (JSON 1.1,
``X-Amz-Target: CodePipeline_20150709.<Operation>``) and gets CodePipeline's
answers, errors included, so the code under test is the production code. Every
other request goes to moto unchanged.

Jobs are made by the harness, as CodePipeline makes one when an execution reaches
an action: ``create_job(endpoint, account, pipeline=..., ...)`` posts to
``/_deploy_helper/codepipeline/jobs`` (loopback only, like ``/moto-api``). The job's
data comes from the pipeline as moto stores it -- the action's type and
configuration (``UserParameters`` included), its artifact names, the pipeline's
name and ARN, the execution (which must exist) -- plus the input artifacts'
locations and the temporary artifact credentials the harness supplies.
``lambda_event(job)`` is the event CodePipeline invokes a Lambda action with;
``job_record`` reads a job's status and result; ``job_calls`` lists every job API
call the server received, refused ones included.

Reproduced:

* A job belongs to one account and region: ``GetJobDetails`` / ``AcknowledgeJob`` /
  ``PutJob*Result`` with the id of a job of another account, or of no job ->
  ``JobNotFoundException`` 400. A ``jobId`` that does not match the API model's
  pattern -> ``ValidationException`` 400.
* ``PutJobSuccessResult`` / ``PutJobFailureResult`` on a job that is no longer in
  progress -> ``InvalidJobStateException`` 400; a result ends the job and its action
  execution (``Succeeded`` / ``Failed``).
* ``AcknowledgeJob`` with a nonce other than the job's -> ``InvalidNonceException``.
* ``GetPipelineState``: each action's latest action execution (its id is the job's
  ``pipelineContext.action.actionExecutionId``, its status the job's) and each
  stage's latest pipeline execution; a pipeline not in the caller's account and
  region -> ``PipelineNotFoundException``.
* ``/moto-api/reset`` forgets every job, as moto forgets the pipelines.

Not reproduced: ``PollForJobs`` and job workers of custom actions, ``#{...}``
variable resolution, continuation tokens, timeouts, IAM.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

JOBS_PATH = "/_deploy_helper/codepipeline/jobs"
CALLS_PATH = "/_deploy_helper/codepipeline/calls"
TARGET_PREFIX = "CodePipeline_20150709."
OPERATIONS = frozenset(
    {"GetJobDetails", "AcknowledgeJob", "PutJobSuccessResult", "PutJobFailureResult", "GetPipelineState"}
)
JOB_ID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
FAILURE_TYPES = frozenset(
    {
        "JobFailed",
        "ConfigurationError",
        "PermissionError",
        "RevisionOutOfSync",
        "RevisionUnavailable",
        "SystemUnavailable",
    }
)
_ACCESS_KEY = re.compile(r"Credential=(?P<key>[A-Za-z0-9]{16,128})/\d{8}/(?P<region>[a-z0-9-]+)/")
_DEFAULT_REGION = "us-east-1"

WsgiApp = Any  # (environ, start_response) -> iterable of bytes


class CodePipelineFault(Exception):
    """An error CodePipeline returns: ``__type`` code, message, HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def _not_found() -> CodePipelineFault:
    return CodePipelineFault("JobNotFoundException", "The job was specified in an invalid format or cannot be found.")


@dataclass
class Job:
    """One job as CodePipeline keeps it."""

    id: str
    account: str
    region: str
    nonce: str
    data: dict[str, Any]
    status: str = "InProgress"
    result: dict[str, Any] | None = None
    acknowledged: bool = False
    changed: float = field(default_factory=time.time)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "accountId": self.account,
            "region": self.region,
            "status": self.status,
            "result": self.result,
            "acknowledged": self.acknowledged,
        }


class JobRegistry:
    """The jobs of every account and region, and a log of the job API calls received."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()
            self._calls.clear()

    # -- the harness's side: CodePipeline reaching an action --------------------
    def create(self, spec: dict[str, Any]) -> Job:
        from moto.codepipeline.models import codepipeline_backends

        account, region = str(spec["account"]), str(spec.get("region") or _DEFAULT_REGION)
        stored = codepipeline_backends[account][region].pipelines.get(spec["pipeline"])
        if stored is None:
            raise CodePipelineFault("PipelineNotFoundException", f"no pipeline {spec['pipeline']} in {account}")
        execution_id = str(spec["executionId"])
        if execution_id not in stored.executions:
            raise CodePipelineFault("PipelineExecutionNotFoundException", f"no execution {execution_id}")
        stage = next((s for s in stored.pipeline["stages"] if s["name"] == spec["stage"]), None)
        action = next((a for a in (stage or {}).get("actions", []) if a["name"] == spec["action"]), None)
        if stage is None or action is None:
            raise CodePipelineFault("ActionNotFoundException", f"no action {spec['stage']}/{spec['action']}")
        locations = {a["name"]: a for a in spec.get("inputArtifacts", [])}
        declared = [a["name"] for a in action.get("inputArtifacts", [])]
        if sorted(locations) != sorted(declared):
            raise CodePipelineFault("ValidationException", f"the action's input artifacts are {declared}")
        store = stored.pipeline.get("artifactStore", {}).get("location", "codepipeline-artifacts")
        data: dict[str, Any] = {
            "actionTypeId": dict(action["actionTypeId"]),
            "actionConfiguration": {"configuration": dict(action.get("configuration") or {})},
            "pipelineContext": {
                "pipelineName": stored.pipeline["name"],
                "stage": {"name": stage["name"]},
                "action": {"name": action["name"], "actionExecutionId": str(uuid.uuid4())},
                "pipelineArn": stored.metadata["pipelineArn"],
                "pipelineExecutionId": execution_id,
            },
            "inputArtifacts": [_artifact(locations[name]) for name in declared],
            "outputArtifacts": [
                _artifact({"name": a["name"], "bucketName": store, "objectKey": f"{a['name']}/{secrets.token_hex(4)}"})
                for a in action.get("outputArtifacts", [])
            ],
            "artifactCredentials": dict(spec["artifactCredentials"]),
        }
        job = Job(str(uuid.uuid4()), account, region, secrets.token_hex(16), data)
        with self._lock:
            self._jobs[job.id] = job
        return job

    def record(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.record() if job else None

    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self._calls]

    # -- CodePipeline's API ------------------------------------------------------
    def call(self, operation: str, account: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        """Answer one API call, or raise the ``CodePipelineFault`` CodePipeline would return."""
        with self._lock:
            entry: dict[str, Any] = {"operation": operation, "account": account, "jobId": params.get("jobId")}
            self._calls.append(entry)
            try:
                answer = getattr(self, f"_{operation}")(account, region, params)
            except CodePipelineFault as exc:
                entry["error"] = exc.code
                raise
            entry["error"] = None
            return answer

    def _job(self, account: str, region: str, params: dict[str, Any]) -> Job:
        job_id = params.get("jobId")
        if not isinstance(job_id, str) or not re.fullmatch(JOB_ID_PATTERN, job_id):
            raise CodePipelineFault(
                "ValidationException",
                f"1 validation error detected: Value '{job_id}' at 'jobId' failed to satisfy constraint: "
                f"Member must satisfy regular expression pattern: {JOB_ID_PATTERN}",
            )
        job = self._jobs.get(job_id)
        if job is None or job.account != account or job.region != region:
            raise _not_found()
        return job

    def _GetJobDetails(self, account: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        job = self._job(account, region, params)
        return {"jobDetails": {"id": job.id, "data": json.loads(json.dumps(job.data)), "accountId": job.account}}

    def _AcknowledgeJob(self, account: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        job = self._job(account, region, params)
        if params.get("nonce") != job.nonce:
            raise CodePipelineFault("InvalidNonceException", "The nonce was specified in an invalid format.")
        job.acknowledged = True
        return {"status": job.status}

    def _PutJobSuccessResult(self, account: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._finish(self._job(account, region, params), "Succeeded", "PutJobSuccessResult", params)

    def _PutJobFailureResult(self, account: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        job = self._job(account, region, params)
        details = params.get("failureDetails") or {}
        if details.get("type") not in FAILURE_TYPES:
            raise CodePipelineFault(
                "ValidationException",
                f"1 validation error detected: Value '{details.get('type')}' at 'failureDetails.type' failed to "
                f"satisfy constraint: Member must satisfy enum value set: {sorted(FAILURE_TYPES)}",
            )
        return self._finish(job, "Failed", "PutJobFailureResult", params)

    def _finish(self, job: Job, status: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if job.status != "InProgress":
            raise CodePipelineFault("InvalidJobStateException", "The job state was specified in an invalid format.")
        job.status, job.changed = status, time.time()
        job.result = {"operation": operation, **{k: v for k, v in params.items() if k != "jobId"}}
        return {}

    def _GetPipelineState(self, account: str, region: str, params: dict[str, Any]) -> dict[str, Any]:
        from moto.codepipeline.models import codepipeline_backends

        stored = codepipeline_backends[account][region].pipelines.get(str(params.get("name")))
        if stored is None:
            raise CodePipelineFault(
                "PipelineNotFoundException", "The pipeline was specified in an invalid format or cannot be found."
            )
        name = stored.pipeline["name"]
        jobs = [j for j in self._jobs.values() if (j.account, j.region) == (account, region)]
        jobs = [j for j in jobs if j.data["pipelineContext"]["pipelineName"] == name]
        stages = []
        for stage in stored.pipeline["stages"]:
            in_stage = [j for j in jobs if j.data["pipelineContext"]["stage"]["name"] == stage["name"]]
            actions = []
            for action in stage["actions"]:
                state: dict[str, Any] = {"actionName": action["name"]}
                latest = _latest(j for j in in_stage if j.data["pipelineContext"]["action"]["name"] == action["name"])
                if latest is not None:
                    state["latestExecution"] = _action_execution(latest)
                actions.append(state)
            stage_state: dict[str, Any] = {"stageName": stage["name"], "actionStates": actions}
            latest = _latest(in_stage)
            if latest is not None:
                stage_state["latestExecution"] = {
                    "pipelineExecutionId": latest.data["pipelineContext"]["pipelineExecutionId"],
                    "status": latest.status,
                }
            stages.append(stage_state)
        return {"pipelineName": name, "pipelineVersion": stored.pipeline.get("version", 1), "stageStates": stages}


def _artifact(spec: dict[str, Any]) -> dict[str, Any]:
    artifact: dict[str, Any] = {
        "name": spec["name"],
        "location": {"type": "S3", "s3Location": {"bucketName": spec["bucketName"], "objectKey": spec["objectKey"]}},
    }
    if spec.get("revision"):
        artifact["revision"] = spec["revision"]
    return artifact


def _latest(jobs: Iterable[Job]) -> Job | None:
    ordered = list(jobs)
    return ordered[-1] if ordered else None  # jobs are kept in the order they were created


def _action_execution(job: Job) -> dict[str, Any]:
    execution: dict[str, Any] = {
        "actionExecutionId": job.data["pipelineContext"]["action"]["actionExecutionId"],
        "status": job.status,
        "lastStatusChange": job.changed,
    }
    result = job.result or {}
    details = result.get("executionDetails") or {}
    if "summary" in details:
        execution["summary"] = details["summary"]
    if "failureDetails" in result:
        execution["errorDetails"] = {
            "code": result["failureDetails"]["type"],
            "message": result["failureDetails"]["message"],
        }
    return execution


# -- the server side: a WSGI layer in front of moto ---------------------------------


def _account_and_region(environ: dict[str, Any]) -> tuple[str, str]:
    """The caller's account as moto determines it (``MOTO_ACCOUNT_ID``, header, access key)."""
    from moto.iam.models import get_account_id_from

    match = _ACCESS_KEY.search(environ.get("HTTP_AUTHORIZATION", ""))
    region = match.group("region") if match else _DEFAULT_REGION
    if "MOTO_ACCOUNT_ID" in os.environ:
        return os.environ["MOTO_ACCOUNT_ID"], region
    if environ.get("HTTP_X_MOTO_ACCOUNT_ID"):
        return str(environ["HTTP_X_MOTO_ACCOUNT_ID"]), region
    return get_account_id_from(match.group("key") if match else "AKIAEXAMPLE"), region


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise CodePipelineFault("SerializationException", "the body is not JSON") from exc
    if not isinstance(data, dict):
        raise CodePipelineFault("SerializationException", "the body is not a JSON object")
    return data


def _respond(start_response: Callable[..., Any], status: int, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode("utf-8")
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    start_response(
        f"{status} {reason}",
        [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("Content-Length", str(len(payload))),
            ("x-amzn-RequestId", str(uuid.uuid4())),
        ],
    )
    return [payload]


def wrap(app: WsgiApp, registry: JobRegistry | None = None) -> WsgiApp:
    """``app`` with CodePipeline's job API and the harness's job endpoints in front of it."""
    jobs = registry or JobRegistry()

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if path == "/moto-api/reset":
            jobs.clear()
            return app(environ, start_response)
        try:
            if target.startswith(TARGET_PREFIX) and target[len(TARGET_PREFIX) :] in OPERATIONS:
                account, region = _account_and_region(environ)
                answer = jobs.call(target[len(TARGET_PREFIX) :], account, region, _body(environ))
                return _respond(start_response, 200, answer)
            if path == JOBS_PATH and method == "POST":
                job = jobs.create(_body(environ))
                details = {"id": job.id, "accountId": job.account, "nonce": job.nonce, "data": job.data}
                return _respond(start_response, 200, details)
            if path.startswith(JOBS_PATH + "/") and method == "GET":
                record = jobs.record(path[len(JOBS_PATH) + 1 :])
                return _respond(start_response, 200 if record else 404, record or {"message": "no such job"})
            if path == CALLS_PATH and method == "GET":
                return _respond(start_response, 200, {"calls": jobs.calls()})
        except CodePipelineFault as exc:
            return _respond(start_response, exc.status, {"__type": exc.code, "message": exc.message})
        return app(environ, start_response)

    return application


# -- the harness's client ------------------------------------------------------------


def _request(endpoint: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode("utf-8") if body is not None else None
    request = urllib.request.Request(  # noqa: S310 - the local server on loopback
        f"{endpoint}{path}", data=data, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            return int(response.status), dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(json.loads(exc.read() or b"{}"))


def create_job(
    endpoint: str,
    account: str,
    *,
    pipeline: str,
    execution_id: str,
    stage: str,
    action: str,
    input_artifacts: list[dict[str, str]],
    artifact_credentials: dict[str, str],
    region: str = _DEFAULT_REGION,
) -> dict[str, Any]:
    """Make the job CodePipeline makes when ``execution_id`` reaches ``stage``/``action``.

    ``input_artifacts``: ``[{"name", "bucketName", "objectKey"}]`` for each input the
    action declares. Returns ``{"id", "accountId", "nonce", "data"}``.
    """
    status, answer = _request(
        endpoint,
        JOBS_PATH,
        {
            "account": account,
            "region": region,
            "pipeline": pipeline,
            "executionId": execution_id,
            "stage": stage,
            "action": action,
            "inputArtifacts": input_artifacts,
            "artifactCredentials": artifact_credentials,
        },
    )
    if status != 200:
        raise RuntimeError(f"the local CodePipeline did not create the job: {answer}")
    return answer


def job_record(endpoint: str, job_id: str) -> dict[str, Any] | None:
    """The job's status and the result it was given (``None`` if there is no such job)."""
    status, answer = _request(endpoint, f"{JOBS_PATH}/{job_id}")
    return answer if status == 200 else None


def job_calls(endpoint: str) -> list[dict[str, Any]]:
    """Every job API call received since the last reset: operation, account, jobId, error."""
    return list(_request(endpoint, CALLS_PATH)[1]["calls"])


def lambda_event(job: dict[str, Any]) -> dict[str, Any]:
    """The event CodePipeline invokes a Lambda action with for ``job``."""
    data = job["data"]
    keys = ("actionConfiguration", "inputArtifacts", "outputArtifacts", "artifactCredentials")
    return {"CodePipeline.job": {"id": job["id"], "accountId": job["accountId"], "data": {k: data[k] for k in keys}}}
