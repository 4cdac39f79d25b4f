"""One place where the CLI turns errors into one line a person can act on.

Every command runs inside ``ErrorMappingGroup.invoke``: AWS configuration and
connection errors, AWS refusals, YAML and file errors and the broker's own
errors become a ``click.ClickException`` with one line that says what to set or
check, and an exit status:

- 2: usage or configuration (no region, no credentials, endpoint unreachable,
  malformed file, missing file, invalid policies);
- 1: refused or failed (AWS said no, a grant was refused or failed).

The AWS session every command uses comes from ``aws_session``: ``AWS_REGION`` and
``AWS_DEFAULT_REGION`` are both honoured (``AWS_REGION`` first, as Lambda and the
other AWS SDKs do), and connection attempts are bounded so that an unreachable
endpoint is reported in seconds, not after minutes of silent retries.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import boto3

#: Exit status for usage and configuration errors (click's own usage errors use 2 as well).
CONFIG_ERROR = 2
#: Exit status for refusals and failures.
FAILED = 1
_MAX_LINE = 400

#: AWS error codes that mean the credentials themselves are not usable.
_BAD_CREDENTIALS = {
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
}
_ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError"}


class CliError(click.ClickException):
    """A refusal or a failure, on one line (exit status 1)."""

    exit_code = FAILED

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class ConfigError(CliError):
    """A usage or configuration problem, on one line (exit status 2)."""

    exit_code = CONFIG_ERROR


def one_line(text: str) -> str:
    """``text`` on one line, printed literally: line breaks folded, control characters escaped, long text cut."""
    from deploy_helper.cli.output import literal

    text = literal(re.sub(r"[ \t\r\n]+", " ", str(text)).strip())  # other control characters: escaped
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 1] + "…"


def region_from_env() -> str | None:
    """``deploy-helper --region``, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION`` (boto3 reads only the last)."""
    ctx = click.get_current_context(silent=True)
    given = ctx.find_root().params.get("region") if ctx is not None else None
    return given or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def client_config() -> Any:
    """Bounded connection attempts for the CLI's AWS calls (``AWS_MAX_ATTEMPTS``/``AWS_RETRY_MODE`` win)."""
    from botocore.config import Config

    if os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE"):
        return Config(connect_timeout=5)
    return Config(connect_timeout=5, retries={"mode": "standard", "total_max_attempts": 3})


def aws_session(region: str | None = None) -> boto3.Session:
    """The session a command works with: boto3's configuration, ``AWS_REGION`` honoured."""
    import boto3
    import botocore.session

    core = botocore.session.Session()
    core.set_default_client_config(client_config())
    return boto3.Session(botocore_session=core, region_name=region or region_from_env())


def preflight(session: boto3.Session, region: str | None = None) -> str:
    """Who the session is (``sts:GetCallerIdentity``), asked once, quickly; errors surface here.

    Used by commands that go on to work in many accounts, so that a missing
    credential or an unreachable endpoint is one line now, not one failure per account.
    """
    from botocore.config import Config

    quick = Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "total_max_attempts": 2})
    sts = session.client("sts", region_name=region, config=quick)
    return str(sts.get_caller_identity()["Arn"])


def _endpoint_hint() -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return (
            f"check AWS_ENDPOINT_URL={endpoint} (for the embedded local AWS: deploy-helper local up, "
            'then eval "$(deploy-helper local env)")'
        )
    return "check the network and the region"


def translate(exc: BaseException) -> CliError | None:
    """The one-line error for ``exc``, or None when it is not one the CLI knows how to explain."""
    import botocore.exceptions as bx
    import yaml
    from pydantic import ValidationError

    from deploy_helper.exceptions import BrokerError, PolicyFileError

    if isinstance(exc, bx.NoRegionError):
        return ConfigError(
            "no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION, or region in your AWS profile), or pass --region"
        )
    if isinstance(exc, bx.ProfileNotFound):
        return ConfigError(f"{exc}: check AWS_PROFILE and AWS_CONFIG_FILE")
    if isinstance(exc, bx.ConfigParseError):
        return ConfigError(f"{exc}: fix the AWS configuration file (AWS_CONFIG_FILE)")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.CredentialRetrievalError)):
        return ConfigError(
            f"no usable AWS credentials ({exc}): set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "or sign in (aws sso login)"
        )
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError)):
        return ConfigError(f"cannot reach AWS ({exc}): {_endpoint_hint()}")
    if isinstance(exc, bx.ReadTimeoutError):
        return CliError(f"AWS did not answer in time ({exc}): try again; {_endpoint_hint()}")
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "Error")), str(error.get("Message", ""))
        operation = getattr(exc, "operation_name", "the call")
        if code in _BAD_CREDENTIALS:
            return ConfigError(
                f"AWS did not accept the credentials ({operation}: {code}: {message}): refresh them or "
                "check AWS_PROFILE"
            )
        if code in _ACCESS_DENIED:
            return CliError(
                f"access denied: {operation}: {message or code}; use credentials allowed to do this (check AWS_PROFILE)"
            )
        return CliError(f"AWS refused {operation}: {code}: {message}")
    if isinstance(exc, bx.BotoCoreError):
        return CliError(f"AWS call failed: {exc}")
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name}:{mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return ConfigError(f"{where}not valid YAML: {problem}")
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        name = exc.filename or ""
        return ConfigError(f"{name}: {exc.strerror or exc}")
    if isinstance(exc, PolicyFileError):
        return ConfigError(exc.message)
    if isinstance(exc, BrokerError):
        cause = exc.__cause__
        if isinstance(cause, bx.BotoCoreError | bx.ClientError):
            return translate(cause)  # what to fix is in AWS's answer (credentials, endpoint, access)
        return ConfigError(exc.message) if exc.code == "misconfigured" else CliError(exc.message)
    if isinstance(exc, ValidationError):
        from deploy_helper.trust.auth import short_errors

        return ConfigError(f"invalid input: {short_errors(exc)}")
    return None


def explain(exc: BaseException) -> CliError:
    """The one-line error for ``exc`` (AWS's cause, when it has one, says what to fix)."""
    return translate(exc) or CliError(str(exc))


class ErrorMappingGroup(click.Group):
    """The top-level command group: known errors from any command become one line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            mapped = translate(exc)
            if mapped is None:
                raise
            raise mapped from exc
