"""The grants file a pipeline step sends (``deploy-helper request GRANTS.yaml``).

Example::

    caller: ci-tooling
    audience: deploy-helper:prod
    context:
      pipeline: ${env:PIPELINE_NAME}
      commit: ${env:GIT_COMMIT}
    owner: service-a-artifacts   # optional: whose grants these are (default: context.pipeline)
    grants:
      - kind: bucket-access
        bucket: tooling-artifacts-111111111111
        account: "111111111111"
        principal: arn:aws:iam::333333333333:role/deploy
        access: read

Placeholders in string values are resolved before signing:
``${env:NAME}`` from the environment (an unset variable is an error, never an
empty string) and ``${stack:STACK.OUTPUT}`` from the output ``OUTPUT`` of the
CloudFormation stack ``STACK`` (a name, or a stack id for another region),
read with the caller's own credentials. Anything else that looks like
``${...}`` is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from deploy_helper.exceptions import RequestError
from deploy_helper.trust.policyfiles import parse_file

if TYPE_CHECKING:
    from pathlib import Path

PLACEHOLDER = re.compile(r"\$\{([a-z]+):([^}]{1,200})\}")
Resolver = Callable[[str], str]


class GrantsFile(BaseModel):
    """A grants file as written by a pipeline's authors."""

    model_config = ConfigDict(extra="forbid")

    caller: str | None = None
    audience: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    #: The owner name the grants are applied and revoked under (``deploy_helper.execution.owners``).
    owner: str | None = None
    grants: list[dict[str, Any]] = Field(min_length=1)


def env_resolver(environ: Mapping[str, str] | None = None) -> Resolver:
    env = os.environ if environ is None else environ

    def resolve(name: str) -> str:
        if name not in env:
            raise RequestError(f"${{env:{name}}} is used in the grants file but {name} is not set")
        return env[name]

    return resolve


def substitute(value: Any, resolvers: Mapping[str, Resolver]) -> Any:
    """Resolve placeholders in every string of ``value``."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            source, name = match.group(1), match.group(2)
            if source not in resolvers:
                raise RequestError(
                    f"unknown placeholder source {source!r} in {match.group(0)!r}; use one of "
                    + ", ".join(f"${{{s}:...}}" for s in sorted(resolvers))
                )
            return resolvers[source](name)

        resolved = PLACEHOLDER.sub(one, value)
        if "${" in resolved and "${" in value:
            raise RequestError(f"malformed placeholder in {value[:80]!r}")
        return resolved
    if isinstance(value, list):
        return [substitute(v, resolvers) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, resolvers) for k, v in value.items()}
    return value


_STACK_REF = re.compile(
    r"(?P<stack>[A-Za-z][A-Za-z0-9-]{0,127}|arn:[a-z-]+:cloudformation:[a-z0-9-]+:\d{12}:stack/"
    r"[A-Za-z][A-Za-z0-9-]{0,127}/[0-9a-f-]{36})\.(?P<output>[A-Za-z0-9]{1,255})",
    re.ASCII,
)


def stack_output_resolver(session: Any = None) -> Resolver:
    """``${stack:STACK.OUTPUT}``: an output of a stack, read once per stack (``DescribeStacks``).

    ``session`` is a boto3 Session (a default one when None); no AWS call is
    made until a placeholder needs it. A stack id (ARN) is read in its region.
    """
    outputs: dict[str, dict[str, str]] = {}
    clients: dict[str | None, Any] = {}

    def client(stack: str) -> Any:
        region = stack.split(":")[3] if stack.startswith("arn:") else None
        if region not in clients:
            import boto3

            clients[region] = (session or boto3.Session()).client("cloudformation", region_name=region)
        return clients[region]

    def describe(stack: str) -> dict[str, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"${{stack:{stack}...}}"
        try:
            stacks = client(stack).describe_stacks(StackName=stack).get("Stacks") or []
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if "does not exist" in str(error.get("Message", "")):
                raise RequestError(f"{where}: stack {stack} does not exist here") from exc
            raise RequestError(
                f"{where}: cannot read the stack: {error.get('Code')}: {error.get('Message', '')}"
            ) from exc
        except BotoCoreError as exc:
            raise RequestError(f"{where}: cannot reach CloudFormation: {exc}") from exc
        if not stacks:
            raise RequestError(f"{where}: stack {stack} does not exist here")
        found = stacks[0].get("Outputs") or []
        return {str(o["OutputKey"]): str(o.get("OutputValue", "")) for o in found}

    def resolve(name: str) -> str:
        match = _STACK_REF.fullmatch(name)
        if match is None:
            raise RequestError(f"${{stack:{name}}} must name a stack and an output: STACK.OUTPUT")
        stack, output = match.group("stack"), match.group("output")
        if stack not in outputs:
            outputs[stack] = describe(stack)
        if output not in outputs[stack]:
            known = ", ".join(sorted(outputs[stack])) or "none"
            raise RequestError(f"stack {stack} has no output {output!r} (its outputs: {known})")
        return outputs[stack][output]

    return resolve


def default_resolvers(session: Any = None) -> dict[str, Resolver]:
    """The placeholder sources available to a grants file: ``env`` and ``stack``."""
    return {"env": env_resolver(), "stack": stack_output_resolver(session)}


def load_grants_file(path: Path, resolvers: Mapping[str, Resolver] | None = None) -> GrantsFile:
    """Read ``path``, validate its shape and resolve its placeholders."""
    grants_file, _ = parse_file(path, GrantsFile)
    data = substitute(grants_file.model_dump(), resolvers or default_resolvers())
    return GrantsFile.model_validate(data)
