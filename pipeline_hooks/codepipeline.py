"""A CodePipeline Lambda action that sends a pipeline's grants to the broker.

Add an ``Invoke`` action after the deploy stage::

    - Name: Grants
      ActionTypeId: {Category: Invoke, Owner: AWS, Provider: Lambda, Version: "1"}
      InputArtifacts: [{Name: BuildOutput}]
      Configuration:
        FunctionName: deploy-helper-pipeline-step
        UserParameters: '{"grants_file": "deploy/grants.yaml", "action": "apply"}'

``UserParameters`` (JSON): ``grants_file`` (a path inside the input
artifact; ``artifact`` names the input artifact when there are several) or
``grants`` (the list itself); ``action`` ``apply`` (default) or ``revoke``;
``plan: true`` to only plan; ``context`` added to the grants file's context.
Placeholders in the grants file (``${env:NAME}``, ``${stack:STACK.OUTPUT}``)
are resolved with the action function's own credentials.

The invoking event is not trusted: only its job id is read, and the job is
confirmed with CodePipeline before anything is signed (see
``pipeline_hooks.codepipeline_job``). The configuration, the input artifacts
and the credentials to read them are CodePipeline's own copy
(``GetJobDetails``), and the request's ``pipeline`` (the pipeline's ARN) and
``execution_id`` come from it too, whatever the grants file or
``UserParameters`` say. The function must run in the pipeline's account and
region.

The action function is configured like the ``deploy-helper request`` command:
``DEPLOY_HELPER_FUNCTION`` (the broker), ``DEPLOY_HELPER_CALLER``,
``DEPLOY_HELPER_AUDIENCE``, ``DEPLOY_HELPER_KEY_ID`` and either
``DEPLOY_HELPER_KMS_KEY_ID`` (an ECC_NIST_P256 key; the private key never
leaves KMS) or ``DEPLOY_HELPER_KEY_FILE``; plus ``DEPLOY_HELPER_PIPELINES``,
the names or ARNs of the pipelines it serves (comma-separated). Its role needs
``codepipeline:GetJobDetails``, ``GetPipelineState`` (on those pipelines),
``PutJobSuccessResult`` and ``PutJobFailureResult``.
``DEPLOY_HELPER_PART_SIZE`` (default and most 1,000) sets the most grants per signed
request, as ``--part-size`` does for ``deploy-helper request``.

A grants file past one request's cap is sent as several signed requests, one
after another (``<request id>.1of5``, ...; ``BrokerClient.request``), with one log
line per part. The request id is made before anything is signed, so the job's
``externalExecutionId`` and its failure messages name it. A part that fails fails
only its own grants; the job then fails with a message naming the part and its error.

A confirmed job always ends with ``PutJobSuccessResult`` or
``PutJobFailureResult`` and a message a person can act on: which grants were
denied or failed and why, or what is wrong with the action's configuration. A
job CodePipeline does not confirm as this function's running job is never
answered: the invocation fails with ``JobNotConfirmedError``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deploy_helper.exceptions import BrokerError
from deploy_helper.models import MAX_GRANTS
from deploy_helper.trust.auth import short_errors
from pipeline_hooks.client import BrokerClient, LambdaTransport, SplitResponse, lambda_client, new_request_id
from pipeline_hooks.codepipeline_job import (
    ConfirmedJob,
    FailureType,
    JobNotConfirmedError,
    StepError,
    check_action,
    check_running,
    confirm_job,
    job_id_from_event,
    parse_pipelines,
    pipeline_allowed,
)
from pipeline_hooks.grants_file import default_resolvers, load_grants_file

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    import boto3

    from deploy_helper.models import BrokerResponse
    from deploy_helper.trust.signing import Signer
    from pipeline_hooks.client import PartProgress, Transport
    from pipeline_hooks.grants_file import GrantsFile

__all__ = ["ActionParameters", "JobNotConfirmedError", "PipelineStep", "StepError", "handler", "set_step", "summarize"]

logger = logging.getLogger(__name__)
logger.setLevel(os.environ.get("DEPLOY_HELPER_LOG_LEVEL", "INFO"))

MAX_ARTIFACT_BYTES = 50 * 1024 * 1024
MAX_GRANTS_FILE_BYTES = 1024 * 1024
#: CodePipeline's limits for the result texts.
MAX_FAILURE_MESSAGE = 5000
MAX_SUMMARY = 2048


class ActionParameters(BaseModel):
    """The action's ``UserParameters``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grants_file: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    artifact: str | None = None
    grants: list[dict[str, Any]] | None = None
    action: Literal["apply", "revoke"] = "apply"
    plan: bool = False
    context: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> ActionParameters:
        if (self.grants_file is None) == (self.grants is None):
            raise ValueError("give exactly one of grants_file (a path in the input artifact) and grants")
        if self.grants_file is not None:
            path = PurePosixPath(self.grants_file)
            if path.is_absolute() or ".." in path.parts:
                raise ValueError("grants_file must be a relative path inside the input artifact")
        return self


# -- the step ----------------------------------------------------------------------


@dataclass
class PipelineStep:
    """Runs one CodePipeline job: confirm it, read the grants, sign, send, report."""

    session: boto3.Session
    transport: Transport
    signer: Signer
    caller: str | None
    audience: str | None
    codepipeline: Any
    #: This action function's name: a job must be a Lambda action of it.
    function_name: str
    #: The pipelines (names or ARNs) whose jobs the step serves.
    pipelines: frozenset[str]
    #: The most grants one signed request carries; a larger set is sent in several.
    part_size: int = MAX_GRANTS

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        session: boto3.Session | None = None,
        transport: Transport | None = None,
    ) -> PipelineStep:
        """The step as the action function's environment configures it."""
        import boto3

        from deploy_helper.trust.signing import Ed25519Signer, KmsSigner

        env = os.environ if environ is None else environ
        session = session or boto3.Session()
        function_name = env.get("AWS_LAMBDA_FUNCTION_NAME")
        if not function_name:
            raise StepError(
                "AWS_LAMBDA_FUNCTION_NAME is not set: the step runs as the Lambda function that the "
                "pipeline's action invokes (set it to that function's name to run it elsewhere)"
            )
        pipelines = parse_pipelines(env)
        key_id = env.get("DEPLOY_HELPER_KEY_ID")
        kms_key, key_file = env.get("DEPLOY_HELPER_KMS_KEY_ID"), env.get("DEPLOY_HELPER_KEY_FILE")
        if not key_id or bool(kms_key) == bool(key_file):
            raise StepError(
                "set DEPLOY_HELPER_KEY_ID and exactly one of DEPLOY_HELPER_KMS_KEY_ID and "
                "DEPLOY_HELPER_KEY_FILE in the action function's environment"
            )
        signer: Signer
        if kms_key:
            signer = KmsSigner(key_id=key_id, kms_key_id=kms_key, client=session.client("kms"))
        else:
            signer = Ed25519Signer.from_file(key_id, Path(str(key_file)))
        if transport is None:
            function = env.get("DEPLOY_HELPER_FUNCTION")
            if not function:
                raise StepError("set DEPLOY_HELPER_FUNCTION to the broker function's name or ARN")
            transport = LambdaTransport(function, lambda_client(session))
        return cls(
            session=session,
            transport=transport,
            signer=signer,
            caller=env.get("DEPLOY_HELPER_CALLER") or None,
            audience=env.get("DEPLOY_HELPER_AUDIENCE") or None,
            codepipeline=session.client("codepipeline"),
            function_name=function_name,
            pipelines=pipelines,
            part_size=_part_size(env),
        )

    def run(self, event: Any) -> dict[str, Any]:
        """Confirm the job in ``event`` with CodePipeline, process it and report its result.

        Raises ``RequestError`` (no job id) or ``JobNotConfirmedError`` (CodePipeline does
        not confirm it as this function's running job) before anything is signed; those
        jobs are not answered.
        """
        job = self.confirm(job_id_from_event(event))
        if not pipeline_allowed(job, self.pipelines):
            return self._fail(
                job,
                "ConfigurationError",
                f"this step does not serve pipeline {job.context.pipeline}: add its name or ARN to "
                f"DEPLOY_HELPER_PIPELINES of function {self.function_name} (nothing was signed)",
            )
        try:
            check_running(self.codepipeline, job)
        except (ClientError, BotoCoreError) as exc:
            return self._fail(
                job, "PermissionError", f"cannot read the pipeline's state (codepipeline:GetPipelineState): {exc}"
            )
        request_id = new_request_id()
        named: str | None = None  # the request id, once the step has begun to sign and send
        try:
            client, request = self._prepare(job)
            named = request_id
            response = client.request(**request, request_id=request_id, progress=self._progress(job))
        except StepError as exc:
            return self._fail(job, exc.failure_type, _naming(exc.message, named), named)
        except BrokerError as exc:
            # No part of a split request answered for an AWS error: typed as that error for one request.
            cause = exc.__cause__ if named is not None else None
            kind = _aws_failure(cause) if isinstance(cause, (ClientError, BotoCoreError)) else "ConfigurationError"
            return self._fail(job, kind, _naming(exc.message, named), named)
        except (ClientError, BotoCoreError) as exc:
            return self._fail(job, _aws_failure(exc), _naming(f"an AWS call failed: {exc}", named), named)
        except Exception as exc:  # the job must still end, or the pipeline waits for its timeout
            logger.exception("unexpected error in the pipeline step")
            message = f"internal error in the pipeline step ({type(exc).__name__})"
            return self._fail(job, "JobFailed", _naming(message, named), named)
        message = summarize(response)
        if response.failed:
            return self._fail(job, "JobFailed", message, request_id)
        try:
            self.codepipeline.put_job_success_result(
                jobId=job.id,
                executionDetails={
                    "summary": _fit(message, MAX_SUMMARY),
                    "externalExecutionId": request_id,
                    "percentComplete": 100,
                },
            )
        except ClientError as exc:
            if not _ended(exc):
                raise
            # Answered already: the same running job sent twice (its data, its grants, its context).
            message = f"{message} (not answered: the job is no longer in progress)"
        logger.info("%s succeeded: %s", job.describe(), message)
        return {"job_id": job.id, "ok": True, "message": message, "request_id": request_id}

    def confirm(self, job_id: str) -> ConfirmedJob:
        """CodePipeline's own copy of the job, if it is a job of this function."""
        job = confirm_job(self.codepipeline, job_id)
        check_action(job, self.function_name)
        return job

    def _prepare(self, job: ConfirmedJob) -> tuple[BrokerClient, dict[str, Any]]:
        """The client to send the job's grants with, and what to send (nothing is signed yet)."""
        params = _parameters(job.data.actionConfiguration.configuration.get("UserParameters", ""))
        grants_file = self._grants(job, params)
        caller = self.caller or grants_file.caller
        audience = self.audience or grants_file.audience
        if not caller or not audience:
            raise StepError(
                "set DEPLOY_HELPER_CALLER and DEPLOY_HELPER_AUDIENCE (or caller: and audience: in the grants file)"
            )
        client = BrokerClient(
            caller=caller, audience=audience, signer=self.signer, transport=self.transport, max_grants=self.part_size
        )
        confirmed = {"pipeline": job.context.pipeline, "execution_id": job.context.pipelineExecutionId}
        return client, {
            "grants": grants_file.grants,
            "action": params.action,
            "dry_run": params.plan,
            "context": {**grants_file.context, **params.context, **confirmed},
            "owner": grants_file.owner,
        }

    def _progress(self, job: ConfirmedJob) -> Callable[[PartProgress], None]:
        """Logs one line per part of a split request, once the part is answered (or not)."""

        def log(part: PartProgress) -> None:
            if part.status == "sending":
                return
            level = logging.INFO if part.status == "done" else logging.WARNING
            logger.log(level, "%s: %s%s", job.describe(), part.heading(), part.ending())

        return log

    def _grants(self, job: ConfirmedJob, params: ActionParameters) -> GrantsFile:
        resolvers = default_resolvers(self.session)
        with tempfile.TemporaryDirectory(prefix="deploy-helper-") as tmp:
            path = Path(tmp) / "grants.yaml"
            if params.grants is not None:
                path.write_text(json.dumps({"grants": params.grants}), encoding="utf-8")
            else:
                assert params.grants_file is not None
                path.write_bytes(self._artifact_member(job, params.artifact, params.grants_file))
            return load_grants_file(path, resolvers)

    def _artifact_member(self, job: ConfirmedJob, name: str | None, member: str) -> bytes:
        artifacts = job.data.inputArtifacts
        chosen = [a for a in artifacts if name is None or a.name == name]
        if not chosen:
            names = ", ".join(a.name for a in artifacts) or "none"
            raise StepError(f"no input artifact {name or ''} to read {member} from (inputs: {names})")
        if len(chosen) > 1:
            raise StepError('several input artifacts: name the one to read with "artifact"')
        artifact = chosen[0]
        location = artifact.location.s3Location
        if artifact.location.type != "S3" or location is None:
            raise StepError(f"input artifact {artifact.name} is not stored in S3")
        credentials = job.data.artifactCredentials
        if credentials is None:
            raise StepError("CodePipeline gave no artifact credentials for the job")
        s3 = self.session.client(
            "s3",
            aws_access_key_id=credentials.accessKeyId,
            aws_secret_access_key=credentials.secretAccessKey.get_secret_value(),
            aws_session_token=credentials.sessionToken.get_secret_value(),
        )
        head = s3.head_object(Bucket=location.bucketName, Key=location.objectKey)
        if int(head.get("ContentLength", 0)) > MAX_ARTIFACT_BYTES:
            raise StepError(f"input artifact {artifact.name} is larger than {MAX_ARTIFACT_BYTES} bytes")
        blob = s3.get_object(Bucket=location.bucketName, Key=location.objectKey)["Body"].read()
        try:
            archive = zipfile.ZipFile(io.BytesIO(blob))
        except zipfile.BadZipFile as exc:
            raise StepError(f"input artifact {artifact.name} is not a zip archive") from exc
        with archive:
            wanted = str(PurePosixPath(member))
            info = next((i for i in archive.infolist() if i.filename == wanted), None)
            if info is None:
                raise StepError(f"{member} is not in input artifact {artifact.name}")
            if info.file_size > MAX_GRANTS_FILE_BYTES:
                raise StepError(f"{member} is larger than {MAX_GRANTS_FILE_BYTES} bytes")
            return archive.read(info)

    def _fail(
        self, job: ConfirmedJob, failure_type: FailureType, message: str, request_id: str | None = None
    ) -> dict[str, Any]:
        return fail_job(self.codepipeline, job, failure_type, message, request_id)


def fail_job(
    codepipeline: Any, job: ConfirmedJob, failure_type: FailureType, message: str, request_id: str | None = None
) -> dict[str, Any]:
    """Answer the confirmed ``job`` with ``PutJobFailureResult``."""
    details: dict[str, Any] = {"type": failure_type, "message": _fit(message, MAX_FAILURE_MESSAGE)}
    if request_id:
        details["externalExecutionId"] = request_id
    try:
        codepipeline.put_job_failure_result(jobId=job.id, failureDetails=details)
    except ClientError as exc:
        if not _ended(exc):
            raise
        # A finished job (a replayed id): CodePipeline keeps its result; nothing was signed.
        message = f"{message} (not answered: the job is no longer in progress)"
    logger.warning("%s failed (%s): %s", job.describe(), failure_type, message)
    return {"job_id": job.id, "ok": False, "message": message, "request_id": request_id}


def _ended(exc: ClientError) -> bool:
    """CodePipeline refused an answer because the job is no longer in progress."""
    return bool(exc.response.get("Error", {}).get("Code") == "InvalidJobStateException")


def _parameters(text: str) -> ActionParameters:
    if not text.strip():
        raise StepError('set UserParameters, e.g. {"grants_file": "grants.yaml"}')
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StepError(f"UserParameters is not JSON: {exc}") from exc
    try:
        return ActionParameters.model_validate(data)
    except ValidationError as exc:
        raise StepError(f"UserParameters: {short_errors(exc)}") from exc


def summarize(response: BrokerResponse) -> str:
    """One readable paragraph: counts per decision, then every denied/failed grant and why.

    A request sent in several parts says how many, and names each part that was refused
    or not answered with its error (its grants are not listed one by one: they share it).
    """
    if isinstance(response, SplitResponse) and len(response.parts) > 1:
        return _summarize_parts(response)
    if not response.ok:
        error = response.error
        return f"the broker refused the request: {error.code}: {error.message}" if error else "refused"
    counts = Counter(r.decision for r in response.results)
    head = ", ".join(f"{n} {d}" for d, n in sorted(counts.items()))
    problems = [
        f"{r.decision}: {r.kind} on {r.target} for {r.principal}: {r.reason}"
        for r in response.results
        if r.decision in ("denied", "failed", "would-fail")
    ]
    text = f"{len(response.results)} grant(s): {head}"
    return text + ("\n" + "\n".join(problems) if problems else "")


def _summarize_parts(response: SplitResponse) -> str:
    count = len(response.parts)
    counts = Counter(r.decision for r in response.results)
    head = ", ".join(f"{n} {d}" for d, n in sorted(counts.items()))
    lost: set[int] = set()
    lines = []
    for number, part in enumerate(response.parts, start=1):
        if part.status == "done":
            continue
        lost.update(part.indexes)
        error = f"{part.error.code}: {part.error.message}" if part.error else part.status
        lines.append(
            f"part {number}/{count} ({part.request_id}) {part.status}: {error} "
            f"({len(part.indexes):,} grant(s) in this part)"
        )
    lines += [
        f"{r.decision}: {r.kind} on {r.target} for {r.principal}: {r.reason}"
        for r in response.results
        if r.decision in ("denied", "failed", "would-fail") and r.index not in lost
    ]
    sent = f"{response.parts[0].request_id} to {response.parts[-1].request_id}"
    text = f"{len(response.results)} grant(s) in {count} requests ({sent}): {head}"
    return text + ("\n" + "\n".join(lines) if lines else "")


def _aws_failure(exc: ClientError | BotoCoreError) -> FailureType:
    if isinstance(exc, ClientError) and "AccessDenied" in str(exc.response["Error"].get("Code")):
        return "PermissionError"
    return "JobFailed"


def _naming(message: str, request_id: str | None) -> str:
    """``message``, naming the request it is about when the step had begun to send it."""
    if request_id is None or request_id in message:
        return message
    return f"request {request_id}: {message}"


def _part_size(env: Mapping[str, str]) -> int:
    """``DEPLOY_HELPER_PART_SIZE``: the most grants per signed request (default: the broker's cap)."""
    text = env.get("DEPLOY_HELPER_PART_SIZE", "").strip()
    if not text:
        return MAX_GRANTS
    if not text.isdigit() or not 1 <= int(text) <= MAX_GRANTS:
        raise StepError(f"DEPLOY_HELPER_PART_SIZE must be a number of grants from 1 to {MAX_GRANTS}, not {text!r}")
    return int(text)


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_step: PipelineStep | None = None


def set_step(step: PipelineStep | None) -> None:
    """Use ``step`` for the following invocations (local harness and tests); None: from the environment."""
    global _step
    _step = step


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The CodePipeline action's Lambda entry point: ``pipeline_hooks.codepipeline.handler``."""
    global _step
    job_id = job_id_from_event(event)
    if _step is None:
        try:
            _step = PipelineStep.from_env()
        except BrokerError as exc:  # misconfigured: still end the job, if it is a confirmed job of this function
            return _misconfigured(job_id, exc)
    return _step.run(event)


def _misconfigured(job_id: str, exc: BrokerError) -> dict[str, Any]:
    import boto3

    codepipeline = boto3.client("codepipeline")
    job = confirm_job(codepipeline, job_id)
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
    if function_name:  # always set in Lambda; unset only when run by hand
        check_action(job, function_name)
    logger.error("the pipeline step is misconfigured: %s", exc.message)
    return fail_job(codepipeline, job, "ConfigurationError", exc.message)
