"""Confirming a CodePipeline job with CodePipeline before anything is signed.

Anyone allowed to invoke the action function can send it an event that looks
like CodePipeline's. So the event contributes only a job id; everything else --
the action's configuration (``UserParameters``), the input artifacts and the
credentials to read them, the pipeline and execution -- is CodePipeline's own
copy, read with ``GetJobDetails`` using the function's credentials (a job of
another account is not found). A job is then acted on only if

1. CodePipeline knows it (``GetJobDetails``),
2. it is an AWS Lambda ``Invoke`` action whose ``FunctionName`` is this function,
3. its pipeline is one the step is configured to serve (``DEPLOY_HELPER_PIPELINES``),
4. it is the running execution of its action (``GetPipelineState``: the action's
   latest execution has the job's ``actionExecutionId`` and is ``InProgress``),
   so a finished job's id cannot be replayed.

A job that fails 1, 2 or 4 is not this step's to answer: ``JobNotConfirmedError``
ends the invocation and no ``PutJob*Result`` is sent. A job that fails 3 is this
function's job from a pipeline it does not serve: it is answered with
``PutJobFailureResult`` (``ConfigurationError``) saying what to configure.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, ValidationError

from deploy_helper.exceptions import AuthenticationError, BrokerError, RequestError
from deploy_helper.trust.auth import short_errors

if TYPE_CHECKING:
    from collections.abc import Mapping

#: CodePipeline's ``JobId`` pattern (its API model).
JOB_ID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
PIPELINE_NAME_RE = re.compile(r"[A-Za-z0-9.@_-]{1,100}", re.ASCII)
PIPELINE_ARN_RE = re.compile(r"arn:aws(-[a-z]+)*:codepipeline:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9.@_-]{1,100}", re.ASCII)
PIPELINES_VARIABLE = "DEPLOY_HELPER_PIPELINES"

JobId = Annotated[str, StringConstraints(strict=True, pattern=JOB_ID_RE)]
FailureType = Literal["JobFailed", "ConfigurationError", "PermissionError", "SystemUnavailable"]


class StepError(BrokerError):
    """The action cannot run as configured; ``failure_type`` is what CodePipeline is told."""

    def __init__(self, message: str, failure_type: FailureType = "ConfigurationError") -> None:
        super().__init__(message, code="pipeline-step")
        self.failure_type: FailureType = failure_type


class JobNotConfirmedError(AuthenticationError):
    """CodePipeline does not confirm the job as this step's running job; nothing is signed or answered."""

    code = "pipeline-job-not-confirmed"


# -- the invoking event: only the job id is used ------------------------------------


class _EventJob(BaseModel):
    # Only ``id`` is used; whatever else the event carries (now or in fields AWS adds later)
    # is never read, so it is ignored rather than refused.
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: JobId
    accountId: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9]{12}$")] | None = None
    #: The event's copy of the job data. Never read: CodePipeline's own copy is.
    data: Any = None


class JobEvent(BaseModel):
    """The event CodePipeline invokes the action with: ``{"CodePipeline.job": {"id", ...}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: _EventJob = Field(alias="CodePipeline.job")


def job_id_from_event(event: Any) -> str:
    """The job id of a CodePipeline job event; ``RequestError`` for anything else."""
    try:
        return JobEvent.model_validate(event).job.id
    except ValidationError as exc:
        # Without a job id CodePipeline confirms, there is nobody to report to: fail the invocation.
        raise RequestError(f"not a CodePipeline job event: {short_errors(exc)}") from exc


# -- CodePipeline's answer (GetJobDetails) -------------------------------------------


class _Aws(BaseModel):
    # CodePipeline's own answer: the fields read are validated, fields AWS adds are ignored.
    # It holds the artifact credentials: errors never echo the input.
    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)


class _S3Location(_Aws):
    bucketName: str
    objectKey: str


class _Location(_Aws):
    type: str
    s3Location: _S3Location | None = None


class Artifact(_Aws):
    name: str
    location: _Location


class ArtifactCredentials(_Aws):
    accessKeyId: str
    secretAccessKey: SecretStr
    sessionToken: SecretStr


class _ActionTypeId(_Aws):
    category: str
    owner: str
    provider: str


class _ActionConfiguration(_Aws):
    configuration: dict[str, str] = Field(default_factory=dict)


class _Named(_Aws):
    name: str


class _ActionContext(_Aws):
    name: str
    actionExecutionId: str


class PipelineContext(_Aws):
    pipelineName: Annotated[str, StringConstraints(pattern=PIPELINE_NAME_RE.pattern)]
    stage: _Named
    action: _ActionContext
    pipelineArn: Annotated[str, StringConstraints(pattern=PIPELINE_ARN_RE.pattern)] | None = None
    pipelineExecutionId: str

    @property
    def pipeline(self) -> str:
        """The pipeline's identity for the ledger: its ARN (its name if CodePipeline gave none)."""
        return self.pipelineArn or self.pipelineName


class JobData(_Aws):
    actionTypeId: _ActionTypeId
    actionConfiguration: _ActionConfiguration = _ActionConfiguration()
    pipelineContext: PipelineContext
    inputArtifacts: list[Artifact] = Field(default_factory=list)
    artifactCredentials: ArtifactCredentials | None = None


class ConfirmedJob(_Aws):
    """A job as CodePipeline itself describes it."""

    id: str
    accountId: str | None = None
    data: JobData

    @property
    def context(self) -> PipelineContext:
        return self.data.pipelineContext

    def describe(self) -> str:
        c = self.context
        return f"job {self.id} (pipeline {c.pipeline}, action {c.stage.name}/{c.action.name})"


def confirm_job(codepipeline: Any, job_id: str) -> ConfirmedJob:
    """CodePipeline's own copy of job ``job_id`` (``GetJobDetails``), or ``JobNotConfirmedError``."""
    try:
        details = codepipeline.get_job_details(jobId=job_id)["jobDetails"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") in ("JobNotFoundException", "ValidationException"):
            raise JobNotConfirmedError(
                f"CodePipeline does not know job {job_id} in this account and region: nothing was signed or sent"
            ) from exc
        raise JobNotConfirmedError(
            f"cannot confirm job {job_id} with CodePipeline ({error.get('Code')}: {error.get('Message', '')}); "
            "the action function needs codepipeline:GetJobDetails"
        ) from exc
    except BotoCoreError as exc:
        raise JobNotConfirmedError(f"cannot reach CodePipeline to confirm job {job_id}: {exc}") from exc
    try:
        job = ConfirmedJob.model_validate(details)
    except ValidationError as exc:
        raise JobNotConfirmedError(f"CodePipeline's data for job {job_id}: {short_errors(exc)}") from exc
    if job.id != job_id:
        raise JobNotConfirmedError(f"CodePipeline answered for job {job.id}, not {job_id}")
    return job


def function_name_of(value: str) -> str:
    """The function name in a ``FunctionName``: a name, ``name:qualifier`` or a function ARN."""
    if value.startswith("arn:"):
        parts = value.split(":")
        return parts[6] if len(parts) > 6 else ""
    return value.split(":")[0]


def check_action(job: ConfirmedJob, function_name: str) -> None:
    """The job must be a Lambda ``Invoke`` action of this function; otherwise it is not ours."""
    kind = job.data.actionTypeId
    target = job.data.actionConfiguration.configuration.get("FunctionName", "")
    if (kind.category, kind.owner, kind.provider) != ("Invoke", "AWS", "Lambda") or (
        function_name_of(target) != function_name
    ):
        raise JobNotConfirmedError(
            f"{job.describe()} is not a Lambda action of function {function_name} "
            f"(it is {kind.category}/{kind.owner}/{kind.provider}"
            + (f" of {target}" if target else "")
            + "): nothing was signed or answered"
        )


def parse_pipelines(environ: Mapping[str, str]) -> frozenset[str]:
    """The pipelines the step serves: ``DEPLOY_HELPER_PIPELINES``, names or ARNs separated by commas."""
    text = environ.get(PIPELINES_VARIABLE, "")
    entries = [e.strip() for e in re.split(r"[,\s]+", text) if e.strip()]
    if not entries:
        raise StepError(
            f"set {PIPELINES_VARIABLE} to the pipelines this step serves: their names or ARNs, "
            "separated by commas (e.g. service-a-pipeline,arn:aws:codepipeline:us-east-1:111111111111:service-b)"
        )
    bad = [e for e in entries if not (PIPELINE_NAME_RE.fullmatch(e) or PIPELINE_ARN_RE.fullmatch(e))]
    if bad:
        raise StepError(f"{PIPELINES_VARIABLE}: {bad[0]!r} is neither a pipeline name nor a pipeline ARN")
    return frozenset(entries)


def pipeline_allowed(job: ConfirmedJob, pipelines: frozenset[str]) -> bool:
    """A name matches the pipeline of that name in the step's own account and region (where jobs are read)."""
    context = job.context
    return context.pipelineName in pipelines or (context.pipelineArn is not None and context.pipelineArn in pipelines)


def check_running(codepipeline: Any, job: ConfirmedJob) -> None:
    """The job must be its action's latest execution, in progress (``GetPipelineState``)."""
    context = job.context
    state = codepipeline.get_pipeline_state(name=context.pipelineName)
    stages: list[dict[str, Any]] = state.get("stageStates", [])
    stage = next((s for s in stages if s.get("stageName") == context.stage.name), {})
    actions: list[dict[str, Any]] = stage.get("actionStates", [])
    action = next((a for a in actions if a.get("actionName") == context.action.name), {})
    latest: dict[str, Any] = action.get("latestExecution") or {}
    if latest.get("actionExecutionId") != context.action.actionExecutionId or latest.get("status") != "InProgress":
        raise JobNotConfirmedError(
            f"{job.describe()} is not running (the action's latest execution is "
            f"{latest.get('actionExecutionId') or 'none'}, {latest.get('status') or 'no status'}): "
            "nothing was signed or answered"
        )
