"""Signed request envelopes: canonical bytes, signers and verification.

An envelope is ``{"signed": TEXT, "signature": B64URL}``. ``TEXT`` is the RFC
8785 canonical JSON of the signed body (version, caller, key id, audience,
issue and expiry time, nonce, payload). The broker verifies the signature over
exactly those bytes, then parses them refusing duplicate keys, non-finite
numbers and any text that is not already in canonical form — so what was
signed and what is acted on cannot differ.

What is signed is a short, fixed-size statement that binds a domain tag to the
SHA-256 of ``TEXT``: ``b"deploy-helper/request/v1\\n" + hex(sha256(TEXT))``.
This keeps every signature a plain RAW-message signature (KMS ``Sign`` takes
at most 4,096 bytes in RAW mode, and Ed25519 keys in KMS take RAW only) while
the request itself may be large; the domain tag keeps these signatures from
being valid for anything else the same key signs.

Algorithms: ``ed25519`` and ``ecdsa-p256-sha256`` (DER signatures, as KMS
returns them). The algorithm is always the registered key's, never taken from
the message.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import rfc8785

from deploy_helper.exceptions import AuthenticationError, RequestError
from deploy_helper.models import MAX_ENVELOPE_BYTES, MAX_NESTING

if TYPE_CHECKING:
    from pathlib import Path

Algorithm = Literal["ed25519", "ecdsa-p256-sha256"]
DOMAIN = b"deploy-helper/request/v1\n"
DEFAULT_TTL = 300


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_input(signed_text: bytes) -> bytes:
    return DOMAIN + hashlib.sha256(signed_text).hexdigest().encode("ascii")


class Signer(Protocol):
    """Something that signs with a registered key."""

    key_id: str
    algorithm: Algorithm

    def sign(self, message: bytes) -> bytes: ...


@dataclass
class Ed25519Signer:
    """Signs with an Ed25519 private key held in a PEM file or in memory."""

    key_id: str
    private_key: Any  # cryptography Ed25519PrivateKey
    algorithm: Algorithm = "ed25519"

    @classmethod
    def from_file(cls, key_id: str, path: Path) -> Ed25519Signer:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise AuthenticationError(f"cannot read the private key {path}: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise AuthenticationError(f"{path} is not an Ed25519 private key")
        return cls(key_id, key)

    def sign(self, message: bytes) -> bytes:
        return bytes(self.private_key.sign(message))


@dataclass
class KmsSigner:
    """Signs with an ECC_NIST_P256 key in AWS KMS; the private key never leaves KMS."""

    key_id: str
    kms_key_id: str
    client: Any
    algorithm: Algorithm = "ecdsa-p256-sha256"

    def sign(self, message: bytes) -> bytes:
        response = self.client.sign(
            KeyId=self.kms_key_id, Message=message, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256"
        )
        return bytes(response["Signature"])


def generate_ed25519() -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def public_pem_from_der(der: bytes) -> str:
    """A KMS ``GetPublicKey`` result (DER SubjectPublicKeyInfo) as PEM text."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_der_public_key(der)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def seal(
    signer: Signer,
    *,
    caller: str,
    audience: str,
    payload: dict[str, Any],
    now: float | None = None,
    ttl: int = DEFAULT_TTL,
    nonce: str | None = None,
) -> dict[str, str]:
    """Build and sign an envelope for ``payload``."""
    issued = int(time.time() if now is None else now)
    body: dict[str, Any] = {
        "v": 1,
        "caller": caller,
        "key_id": signer.key_id,
        "audience": audience,
        "issued_at": issued,
        "expires_at": issued + ttl,
        "nonce": nonce or secrets.token_urlsafe(24),
        "payload": payload,
    }
    text = rfc8785.dumps(body)
    signature = signer.sign(signing_input(text))
    return {"signed": text.decode("utf-8"), "signature": b64url(signature)}


def verify(algorithm: Algorithm, public_key_pem: str, signed_text: bytes, signature: bytes) -> bool:
    """Whether ``signature`` by the registered key covers ``signed_text``."""
    return verify_message(algorithm, public_key_pem, signing_input(signed_text), signature)


#: DER SubjectPublicKeyInfo prefixes of the two registered key types (RFC 8410, RFC 5480): an
#: Ed25519 key (then 32 bytes) and a P-256 key as an uncompressed point (then 65 bytes).
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
_P256_SPKI = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")


@functools.lru_cache(maxsize=64)
def load_public_key(public_key_pem: str) -> Any:
    """The cryptography key object of a PEM public key (cached: keys are registered, few and reused).

    The two registered types in their usual encoding (an Ed25519 key; a P-256 key as an
    uncompressed point) are read from their fixed DER layout, which spares loading
    cryptography's general key parser on a cold start; anything else goes to that parser.
    Raises ``ValueError`` for text that is not a PEM public key.
    """
    lines = public_key_pem.strip().splitlines()
    if len(lines) >= 3 and lines[0] == "-----BEGIN PUBLIC KEY-----" and lines[-1] == "-----END PUBLIC KEY-----":
        try:
            der = base64.b64decode("".join(lines[1:-1]), validate=True)
        except ValueError:
            der = b""
        if len(der) == len(_ED25519_SPKI) + 32 and der.startswith(_ED25519_SPKI):
            from cryptography.hazmat.primitives.asymmetric import ed25519

            return ed25519.Ed25519PublicKey.from_public_bytes(der[len(_ED25519_SPKI) :])
        if len(der) == len(_P256_SPKI) + 65 and der.startswith(_P256_SPKI):
            from cryptography.hazmat.primitives.asymmetric import ec

            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), der[len(_P256_SPKI) :])
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return load_pem_public_key(public_key_pem.encode("ascii"))


def verify_message(algorithm: Algorithm, public_key_pem: str, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` over ``message`` verifies with the key, using the given algorithm only."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        key = load_public_key(public_key_pem)
    except (ValueError, UnicodeEncodeError):
        return False
    try:
        if algorithm == "ed25519":
            if not isinstance(key, ed25519.Ed25519PublicKey):
                return False
            key.verify(signature, message)
        elif algorithm == "ecdsa-p256-sha256":
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
                return False
            from cryptography.hazmat.primitives import hashes

            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


# -- strict parsing of the signed text --------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RequestError(f"duplicate key {key[:40]!r} in the signed request")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise RequestError(f"{name} is not valid JSON")


def check_nesting(text: str, limit: int = MAX_NESTING) -> None:
    """Refuse JSON nested deeper than ``limit`` before handing it to a parser."""
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise RequestError(f"the request is nested deeper than {limit} levels")
        elif ch in "]}":
            depth -= 1


def parse_signed_text(text: str) -> tuple[bytes, dict[str, Any]]:
    """The exact signed bytes and the parsed body; refuses non-canonical text."""
    try:
        raw = text.encode("utf-8", errors="strict")
    except UnicodeEncodeError as exc:
        raise RequestError("the signed request is not valid UTF-8 text (it has an unpaired surrogate)") from exc
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise RequestError(f"the request is larger than {MAX_ENVELOPE_BYTES} bytes")
    check_nesting(text)
    try:
        body = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RequestError:
        raise
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"the signed request is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("the signed request must be a JSON object")
    try:
        canonical = rfc8785.dumps(body)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise RequestError(f"the signed request cannot be canonicalized: {exc}") from exc
    if canonical != raw:
        raise AuthenticationError(
            "the signed text is not in RFC 8785 canonical form; sign rfc8785.dumps(body) and send it unchanged"
        )
    return raw, body
