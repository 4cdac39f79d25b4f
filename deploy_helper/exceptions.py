"""One error hierarchy for the broker. Every message says what to fix.

``BrokerError`` carries a short machine-readable ``code`` that appears in
responses and in the ledger; the message is for people.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error the broker reports to a caller."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class RequestError(BrokerError):
    """The request is malformed: not JSON, wrong shape, too large, bad identifiers."""

    code = "invalid-request"


class AuthenticationError(BrokerError):
    """The request's signature, key, time window, nonce or audience is not acceptable."""

    code = "authentication-failed"
    #: True when the signature was valid but a later check (the nonce) refused the request.
    signature_verified = False


class DeniedError(BrokerError):
    """No rule allows the grant, or a guardrail forbids it."""

    code = "denied"

    def __init__(self, message: str, *, rule_id: str | None = None, check: str = "") -> None:
        super().__init__(message)
        self.rule_id = rule_id
        self.check = check


class PolicyFileError(BrokerError):
    """A file under ``policies/`` is invalid; the message names the file and line."""

    code = "policy-file-invalid"


class ExecutionError(BrokerError):
    """An AWS change could not be made (role not assumable, throttled, refused by AWS)."""

    code = "execution-failed"


class PolicySizeError(ExecutionError):
    """The resource policy would exceed AWS's size limit."""

    code = "policy-too-large"


class TargetAccessError(ExecutionError):
    """The broker role in a target account cannot be assumed; says what the operator must do."""

    code = "target-not-accessible"


class LedgerError(BrokerError):
    """The ledger could not be written or read; no change is made without it."""

    code = "ledger-unavailable"


class LeaseLostError(ExecutionError):
    """The request no longer held its lease on a resource with time to spare; the write was not sent."""

    code = "lease-lost"


class StaleWriteError(ExecutionError):
    """AWS refused a write because the resource changed since the request read it (a precondition)."""

    code = "stale-write"


class CheckpointFormatError(LedgerError):
    """A checkpoint object is not a well-formed signed note (it is reported, never trusted)."""

    code = "checkpoint-malformed"


class RetriedRequest(AuthenticationError):
    """The same envelope, byte for byte, arrived again: answer as the first time, change nothing.

    ``answer`` is the first delivery's response (a JSON object), or None while it is
    still being processed.
    """

    code = "retried"

    def __init__(self, answer: dict[str, object] | None) -> None:
        super().__init__("this exact request was already received")
        self.answer = answer


class ClaimConflict(Exception):
    """A condition written with ledger entries did not hold: nothing of that transaction was written.

    ``failed`` holds the positions (in the ``items`` given) of the conditions that failed,
    e.g. a lease another request took, or references that changed since they were read.
    """

    def __init__(self, failed: list[int]) -> None:
        super().__init__(f"conditions not met: {failed}")
        self.failed = failed
