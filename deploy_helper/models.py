"""Models at the trust boundary: the signed envelope, the request, the response.

Everything a caller sends is parsed here (grant kinds bring their own specs in
``deploy_helper.grants``). Unknown fields are refused everywhere, strings are
strict (no coercion from numbers), and sizes are bounded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from deploy_helper.trust.identifiers import Label, Name, StackArn

#: Upper bounds, checked before and while parsing.
MAX_ENVELOPE_BYTES = 512 * 1024
MAX_GRANTS = 1000
MAX_NESTING = 12

Nonce = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9_-]{22,64}$")]
KeyId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
RequestId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{7,63}$")]
Audience = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]
Action = Literal["apply", "revoke"]


class StrictModel(BaseModel):
    """Base for every model that parses untrusted input."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, str_max_length=2048)


class PipelineContext(StrictModel):
    """Where a request comes from; carried into the ledger as given (after validation)."""

    pipeline: Label | None = None
    execution_id: Label | None = None
    stack_id: StackArn | None = None
    logical_resource_id: Label | None = None
    commit: Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{7,64}$")] | None = None
    repository: Label | None = None
    run_url: (
        Annotated[str, StringConstraints(strict=True, pattern=r"^https://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]{1,500}$")]
        | None
    ) = None


class SignedHeader(StrictModel):
    """The signed body of an envelope, with the payload still unparsed.

    Authentication reads only these fields; the payload is validated after the
    signature has been checked.
    """

    v: Literal[1]
    caller: Name
    key_id: KeyId
    audience: Audience
    issued_at: int = Field(ge=0, lt=2**40)
    expires_at: int = Field(ge=0, lt=2**40)
    nonce: Nonce
    payload: dict[str, Any]


class Envelope(StrictModel):
    """What a caller sends: the canonical JSON text that was signed, and the signature."""

    signed: Annotated[str, StringConstraints(strict=True, min_length=2, max_length=MAX_ENVELOPE_BYTES)]
    signature: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9_-]{40,200}={0,2}$")]


#: ``kept``: the requester's ownership was removed, the grant stays for its other owners.
Decision = Literal[
    "applied", "unchanged", "revoked", "absent", "kept", "denied", "failed", "would-apply", "would-revoke", "would-fail"
]


class GrantResult(BaseModel):
    """What happened to one grant of a request."""

    model_config = ConfigDict(extra="forbid")

    index: int
    kind: str
    decision: Decision
    grant_id: str = ""
    target: str = ""
    principal: str = ""
    account: str = ""
    rule_id: str | None = None
    reason: str = ""
    diff: str | None = None
    ledger_entry: str | None = None
    #: How the grant was fitted into the policy's size limit, when it was (see ``Rule.compaction``).
    compaction: str | None = None


class ErrorBody(BaseModel):
    """A refusal of the whole request."""

    model_config = ConfigDict(extra="forbid")

    code: str
    message: str


class BrokerResponse(BaseModel):
    """The handler's answer to one request."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    request_id: str | None = None
    caller: str | None = None
    action: str | None = None
    dry_run: bool = False
    #: A plain default, which pydantic copies per instance: a ``default_factory`` that is a builtin has
    #: pydantic parse its text signature (``inspect``, ``tokenize``) when the model is built, on every cold start.
    results: list[GrantResult] = []
    error: ErrorBody | None = None

    @property
    def failed(self) -> bool:
        return not self.ok or any(r.decision in ("denied", "failed", "would-fail") for r in self.results)
