"""The grants file a pipeline step sends (``deploy-helper request GRANTS.yaml``).

Example::

    caller: ci-tooling
    audience: deploy-helper:prod
    context:
      pipeline: ${env:PIPELINE_NAME}
      commit: ${env:GIT_COMMIT}
    grants:
      - kind: bucket-access
        bucket: tooling-artifacts-111111111111
        account: "111111111111"
        principal: arn:aws:iam::333333333333:role/deploy
        access: read

Placeholders in string values are resolved before signing:
``${env:NAME}`` from the environment (an unset variable is an error, never an
empty string). Anything else that looks like ``${...}`` is refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from deploy_helper.exceptions import RequestError
from deploy_helper.policyfiles import parse_file

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


def default_resolvers(session: Any = None) -> dict[str, Resolver]:
    """The placeholder sources available to a grants file."""
    return {"env": env_resolver()}


def load_grants_file(path: Path, resolvers: Mapping[str, Resolver] | None = None) -> GrantsFile:
    """Read ``path``, validate its shape and resolve its placeholders."""
    grants_file, _ = parse_file(path, GrantsFile)
    data = substitute(grants_file.model_dump(), resolvers or default_resolvers())
    return GrantsFile.model_validate(data)
