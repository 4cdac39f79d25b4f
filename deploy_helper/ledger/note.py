"""Checkpoints as C2SP signed notes (https://c2sp.org/signed-note, tlog-checkpoint).

A checkpoint note's text is::

    <origin>
    <tree size>
    <base64 RFC 9162 root hash>
    checkpoint <number, 1, 2, 3, ...>
    previous <hex SHA-256 of checkpoint number-1's whole note | genesis | legacy <hex>>
    chain-head <hex hash of the last entry (the hash chain, kept as well)>
    time <ISO 8601 UTC>
    heartbeat <seconds between checkpoints at most>
    changed <seq> <MODIFY|REMOVE> <old hash> <new hash or ->   (one per overwrite/deletion seen)
    evidence <hex SHA-256 of the evidence object holding those entries' old and new bodies>
    unchained <seq> <why>   (an appended entry the checkpointer could not take into the tree)

followed by a blank line and signature lines ``— <key name> <base64(key id || signature)>``.
The signature covers the text (with its final newline). Ed25519 lines are the
standard type 0x01 (key id = SHA-256(name || 0x0A || 0x01 || public key)[:4]);
ECDSA P-256 lines (a KMS key) sign the same text with ECDSA-SHA256 (DER) and
use the key id SHA-256(name || 0x0A || 0xFF || "ecdsa-p256-sha256" || SPKI DER)[:4],
since signed-note assigns no type to plain ECDSA over the note text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploy_helper.exceptions import CheckpointFormatError
from deploy_helper.trust.signing import verify_message

if TYPE_CHECKING:
    from deploy_helper.trust.signing import Algorithm, Signer

DASH = "\u2014 "
MAX_NOTE_BYTES = 4096  # KMS signs RAW messages of at most 4,096 bytes
MAX_CHANGE_LINES = 16
GENESIS = "genesis"
_NUMBER = re.compile(r"[0-9]{1,19}")


def number(text: str | None) -> int | None:
    """A non-negative decimal integer written in ASCII digits, or None (``str.isdigit`` takes "²")."""
    return int(text) if text is not None and _NUMBER.fullmatch(text) else None


def key_id(name: str, algorithm: Algorithm, public_pem: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_pem.encode("ascii"))
    if algorithm == "ed25519":
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        material = b"\x01" + raw
    else:
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        material = b"\xff" + algorithm.encode("ascii") + der
    return hashlib.sha256(name.encode("utf-8") + b"\n" + material).digest()[:4]


@dataclass(frozen=True)
class CheckpointNote:
    """What a checkpoint states, before or after signing."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> bytes:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii"), *self.extensions]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def values(self, name: str) -> list[str]:
        return [line[len(name) + 1 :] for line in self.extensions if line.startswith(name + " ")]

    def value(self, name: str) -> str | None:
        found = self.values(name)
        return found[0] if found else None

    @property
    def number(self) -> int:
        found = number(self.value("checkpoint"))
        if found is None:
            raise CheckpointFormatError("the note has no checkpoint number")
        return found


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True)
class SignedNote:
    """A parsed note: the exact bytes, the signed text, what it says and its signature lines."""

    raw: bytes
    text: bytes
    note: CheckpointNote
    signatures: tuple[Signature, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def verify(self, name: str, algorithm: Algorithm, public_pem: str) -> bool:
        """Whether a signature line by this key (name and key id) verifies over the text."""
        return verify_signatures(self.text, self.signatures, name, algorithm, public_pem)


def verify_signatures(
    text: bytes, signatures: tuple[Signature, ...], name: str, algorithm: Algorithm, public_pem: str
) -> bool:
    """Whether one of ``signatures`` by this key (name and key id) verifies over ``text``."""
    wanted = key_id(name, algorithm, public_pem)
    return any(
        s.name == name and s.key_id == wanted and verify_message(algorithm, public_pem, text, s.signature)
        for s in signatures
    )


def sign(note: CheckpointNote, name: str, signer: Signer, public_pem: str) -> bytes:
    """The whole signed note (text, blank line, one signature line)."""
    text = note.text()
    if len(text) > MAX_NOTE_BYTES:
        raise CheckpointFormatError(f"a checkpoint note may be at most {MAX_NOTE_BYTES} bytes ({len(text)})")
    signature = signer.sign(text)
    line = f"{DASH}{name} {base64.b64encode(key_id(name, signer.algorithm, public_pem) + signature).decode()}\n"
    return text + b"\n" + line.encode("utf-8")


def parse_envelope(raw: bytes) -> tuple[bytes, tuple[Signature, ...]]:
    """Any signed note: its signed text (with the final newline) and its signature lines."""
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointFormatError("the note is not UTF-8") from exc
    if any(ord(ch) < 0x20 and ch != "\n" for ch in decoded):
        raise CheckpointFormatError("the note contains control characters")
    text, sep, sigs = decoded.rpartition("\n\n")
    if not sep or not text:
        raise CheckpointFormatError("the note has no blank line before its signatures")
    signatures = []
    for line in sigs.split("\n")[:-1] if sigs.endswith("\n") else [None]:
        if line is None or not line.startswith(DASH):
            raise CheckpointFormatError("a signature line does not start with an em dash")
        name, _, blob = line[len(DASH) :].rpartition(" ")
        try:
            data = base64.b64decode(blob, validate=True)
        except binascii.Error as exc:
            raise CheckpointFormatError(f"the signature of {name!r} is not base64") from exc
        if not name or len(data) < 5:
            raise CheckpointFormatError("a signature line has no key name or too short a signature")
        signatures.append(Signature(name, data[:4], data[4:]))
    return (text + "\n").encode("utf-8"), tuple(signatures)


def parse(raw: bytes) -> SignedNote:
    """Parse a signed checkpoint note; raise ``CheckpointFormatError`` saying what is wrong."""
    signed_text, signatures = parse_envelope(raw)
    lines = signed_text.decode("utf-8")[:-1].split("\n")
    size = number(lines[1]) if len(lines) >= 3 else None
    if size is None:
        raise CheckpointFormatError("the note does not start with an origin, a tree size and a root hash")
    try:
        root = base64.b64decode(lines[2], validate=True)
    except binascii.Error as exc:
        raise CheckpointFormatError("the root hash is not base64") from exc
    if len(root) != 32:
        raise CheckpointFormatError("the root hash is not 32 bytes")
    note = CheckpointNote(lines[0], size, root, tuple(lines[3:]))
    return SignedNote(raw, signed_text, note, signatures)
