"""Authentication: who signed this request, and is it fresh and meant for us?

Order of checks (each refusal says what to fix):
1. the envelope has the right shape and the signed text is canonical JSON;
2. the key id is registered; the claimed caller owns it;
3. the key is within its validity window and not revoked;
4. the signature verifies with the registered public key and algorithm;
5. the audience is this broker's; issued-at is within the allowed skew and
   the expiry is neither past nor too far ahead;
6. the nonce was never seen (claimed last, so that refused requests do not
   use up nonces and a forged request cannot burn a legitimate one).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from deploy_helper.exceptions import AuthenticationError, RequestError
from deploy_helper.models import Envelope, SignedHeader
from deploy_helper.trust.callers import CallerRegistry, RegisteredKey, utc
from deploy_helper.trust.signing import b64url_decode, parse_signed_text, verify

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.trust.nonces import NonceStore


@dataclass(frozen=True)
class Identity:
    """Who a request comes from, as established by the broker (never as claimed).

    ``method`` says how: ``signature`` for a signed envelope (``key_id`` is the
    registered key), ``stack`` for a custom-resource event confirmed against the
    real CloudFormation stack (``key_id`` names the stack).
    """

    caller: str
    account: str
    key_id: str
    signed_digest: str
    method: str = "signature"


@dataclass(frozen=True)
class Authenticated(Identity):
    """A signed request whose signature, key, time and nonce have been checked."""

    key: RegisteredKey | None = None
    header: SignedHeader | None = None


def short_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for error in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in error["loc"]) or "(top)"
        parts.append(f"{loc}: {error['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def envelope_digest(envelope: Envelope) -> str:
    """The digest of the whole envelope as sent: a retry is byte-identical, a forgery is not."""
    import hashlib

    raw = envelope.signed.encode("utf-8") + b"\n" + envelope.signature.encode("utf-8")
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def parse_envelope(event: Any) -> Envelope:
    if not isinstance(event, dict):
        raise RequestError("the request must be a JSON object with 'signed' and 'signature'")
    try:
        return Envelope.model_validate(event)
    except ValidationError as exc:
        raise RequestError(f"not a signed request envelope: {short_errors(exc)}") from exc


class Authenticator:
    """Checks envelopes against the registered callers."""

    def __init__(
        self,
        callers: CallerRegistry,
        nonces: NonceStore,
        *,
        audience: str,
        clock: Callable[[], float],
        max_skew: int = 300,
        max_ttl: int = 900,
    ) -> None:
        self.callers = callers
        self.nonces = nonces
        self.audience = audience
        self.clock = clock
        self.max_skew = max_skew
        self.max_ttl = max_ttl

    def authenticate(self, envelope: Envelope) -> Authenticated:
        import hashlib

        raw, body = parse_signed_text(envelope.signed)
        try:
            header = SignedHeader.model_validate(body)
        except ValidationError as exc:
            raise RequestError(f"signed request has the wrong shape: {short_errors(exc)}") from exc
        found = self.callers.find_key(header.key_id)
        if found is None:
            raise AuthenticationError(
                f"key {header.key_id!r} is not registered; register its public key in policies/callers.yaml",
                code="unknown-key",
            )
        owner, caller, key = found
        if not hmac.compare_digest(owner.encode(), header.caller.encode()):
            raise AuthenticationError(
                f"key {header.key_id!r} is not registered to caller {header.caller!r}",
                code="key-of-another-caller",
            )
        now = self.clock()
        unusable = key.usable_at(utc(now))
        if unusable:
            raise AuthenticationError(unusable + "; sign with a current key", code="key-not-valid")
        try:
            signature = b64url_decode(envelope.signature)
        except ValueError as exc:
            raise AuthenticationError("the signature is not base64url", code="bad-signature") from exc
        if not verify(key.algorithm, key.public_key, raw, signature):
            raise AuthenticationError(
                "the signature does not verify with the registered key (tampered, or signed with another key)",
                code="bad-signature",
            )
        if not hmac.compare_digest(header.audience.encode(), self.audience.encode()):
            raise AuthenticationError(
                f"the request is addressed to {header.audience!r}, not to this broker ({self.audience!r})",
                code="wrong-audience",
            )
        if abs(now - header.issued_at) > self.max_skew:
            raise AuthenticationError(
                f"issued_at is {int(now - header.issued_at)} s from the broker's clock (allowed ±{self.max_skew} s); "
                "check the signer's clock and send a fresh request",
                code="stale",
            )
        if header.expires_at <= now:
            raise AuthenticationError("the request has expired; send a fresh one", code="stale")
        if header.expires_at - header.issued_at > self.max_ttl:
            raise AuthenticationError(
                f"the request is valid for more than {self.max_ttl} s; use a shorter expiry", code="stale"
            )
        try:
            self.nonces.claim(
                header.caller, header.nonce, header.expires_at + self.max_skew, digest=envelope_digest(envelope)
            )
        except AuthenticationError as exc:
            exc.signature_verified = True  # a genuine request, refused as a replay
            raise
        return Authenticated(
            caller=header.caller,
            account=caller.account,
            key_id=key.id,
            signed_digest="sha256:" + hashlib.sha256(raw).hexdigest(),
            key=key,
            header=header,
        )
