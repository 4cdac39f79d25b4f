"""Signed checkpoints of the ledger, written by the checkpointer into an Object Lock bucket.

Layout under ``checkpoints/<ledger>/`` in the checkpoint bucket:

- ``note/<number, 12 digits>`` — checkpoint *number* as a C2SP signed note
  (``deploy_helper.ledger.note``): the ledger's size, its RFC 9162 Merkle root,
  the hash-chain head, the previous checkpoint's digest and any overwrite or
  deletion of an entry the checkpointer saw in the table's stream. Each is
  written once (``If-None-Match: *``); a second version or a delete marker is
  evidence of tampering.
- ``evidence/<number>-<digest>`` — beside a checkpoint that names changes: the stream's
  images (old and new body) of each overwritten or deleted entry, as JSON;
  the checkpoint signs its SHA-256.
- ``<size>-<time>.json`` — legacy checkpoints (before the checkpointer): JSON
  signed by the broker's own key over the size and chain head only.

``checkpoint-head/<ledger>.json`` (outside that prefix) is the checkpointer's
head pointer: the last checkpoint's number and digest, and the Merkle tree's
compact range. Writing checkpoint *n+1* reads the head, the entries appended
since, and writes two objects: O(1) in the number of checkpoints, O(log n) in
entries plus the new ones. Nothing here ever lists the checkpoints. A run that
stopped after a checkpoint but before the head is taken up by the next run
(the checkpoint is checked and adopted, never rewritten).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import rfc8785
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy_helper.exceptions import CheckpointFormatError, LedgerError
from deploy_helper.ledger import merkle, note
from deploy_helper.ledger.entries import now_iso
from deploy_helper.ledger.store import GENESIS as CHAIN_GENESIS
from deploy_helper.ledger.store import entry_hash
from deploy_helper.trust.signing import verify_message

if TYPE_CHECKING:
    from deploy_helper.ledger.store import DynamoLedger, StoredEntry
    from deploy_helper.trust.signing import Algorithm, Signer

LEGACY_DOMAIN = b"deploy-helper/checkpoint/v1\n"
DEFAULT_HEARTBEAT = 900


def note_key(ledger: str, number: int) -> str:
    return f"checkpoints/{ledger}/note/{number:012d}"


def head_key(ledger: str) -> str:
    return f"checkpoint-head/{ledger}.json"


# -- legacy JSON checkpoints (read and verified, never written) ----------------------


def checkpoint_input(body: bytes) -> bytes:
    return LEGACY_DOMAIN + hashlib.sha256(body).hexdigest().encode("ascii")


@dataclass(frozen=True)
class Checkpoint:
    """A legacy JSON checkpoint: ``{"checkpoint": BODY, "signature": B64URL}``."""

    name: str
    body: bytes
    signature: bytes

    @property
    def data(self) -> dict[str, Any]:
        value = json.loads(self.body)
        return value if isinstance(value, dict) else {}

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()

    @classmethod
    def from_document(cls, name: str, raw: bytes) -> Checkpoint:
        from deploy_helper.trust.signing import b64url_decode

        doc = json.loads(raw)
        return cls(name, rfc8785.dumps(doc["checkpoint"]), b64url_decode(str(doc.get("signature", ""))))


def verify_checkpoint(checkpoint: Checkpoint, algorithm: Algorithm, public_key_pem: str) -> bool:
    return verify_message(algorithm, public_key_pem, checkpoint_input(checkpoint.body), checkpoint.signature)


# -- the checkpointer ------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """An overwrite (MODIFY) or deletion (REMOVE) of an entry, as the table's stream showed it."""

    seq: int
    kind: str
    old_hash: str
    new_hash: str
    #: The item's body before and after, as the stream showed them (kept as evidence).
    old_body: str | None = None
    new_body: str | None = None

    def line(self) -> str:
        return f"changed {self.seq} {self.kind} {self.old_hash or '-'} {self.new_hash or '-'}"

    def evidence(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "change": self.kind,
            "old_hash": self.old_hash,
            "new_hash": self.new_hash,
            "old_body": self.old_body,
            "new_body": self.new_body,
        }


def evidence_key(ledger: str, number: int, digest: str) -> str:
    """Named by its digest too: a run that stopped before its checkpoint leaves no name taken."""
    return f"checkpoints/{ledger}/evidence/{number:012d}-{digest[:16]}"


class _Taken(LedgerError):
    """The object to be written once already exists (another run wrote it)."""


class Head(BaseModel):
    """The checkpointer's head pointer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    checkpoint: int = Field(ge=0)
    digest: str
    size: int = Field(ge=0)
    chain_head: str
    frontier: list[str]
    time: str


class Checkpointer:
    """Writes the next checkpoint of one ledger; the only writer of the checkpoint bucket."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        ledger: DynamoLedger,
        signer: Signer,
        public_pem: str,
        *,
        origin: str | None = None,
        heartbeat: int = DEFAULT_HEARTBEAT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.ledger = ledger
        self.signer = signer
        self.public_pem = public_pem
        self.origin = origin or f"deploy-helper/ledger/{ledger.ledger}"
        self.heartbeat = heartbeat
        self.clock = clock
        self.s3_requests = 0  # for the benchmark: requests one write makes

    def _get(self, key: str) -> bytes | None:
        self.s3_requests += 1
        try:
            return bytes(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise LedgerError(f"cannot read s3://{self.bucket}/{key}: {exc}") from exc

    def _put(self, key: str, body: bytes, *, once: bool) -> None:
        self.s3_requests += 1
        extra = {"IfNoneMatch": "*"} if once else {}
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="text/plain", **extra)
        except ClientError as exc:
            if once and exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                raise _Taken(f"s3://{self.bucket}/{key} exists already") from exc
            raise LedgerError(f"cannot write s3://{self.bucket}/{key}: {exc}") from exc
        except BotoCoreError as exc:
            raise LedgerError(f"cannot write s3://{self.bucket}/{key}: {exc}") from exc

    def read_head(self) -> Head | None:
        raw = self._get(head_key(self.ledger.ledger))
        if raw is None:
            return None
        try:
            return Head.model_validate_json(raw)
        except ValidationError as exc:
            raise LedgerError(
                f"the checkpoint head s3://{self.bucket}/{head_key(self.ledger.ledger)} is malformed"
            ) from exc

    def _legacy_previous(self) -> str:
        """Migration: the digest of the newest legacy checkpoint, read once (no head yet)."""
        prefix = f"checkpoints/{self.ledger.ledger}/"
        names: list[str] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self._s3.list_objects_v2(**kwargs)
            names.extend(o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json"))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        for name in sorted(names, reverse=True):
            raw = self._get(name)
            try:
                return "legacy " + Checkpoint.from_document(name, raw or b"").digest
            except (ValueError, KeyError, TypeError):
                continue
        return note.GENESIS

    def write(self, changes: Iterable[Change] = ()) -> note.SignedNote:
        """Extend the tree with the entries appended since the last checkpoint; sign and store the next one.

        Every change is named: more than fit one note go into as many further
        checkpoints as they need (each of the same tree), the last one returned.
        """
        listed = list(changes)
        size = note.MAX_CHANGE_LINES
        written = self._write(listed[:size])
        for start in range(size, len(listed), size):
            written = self._write(listed[start : start + size])
        return written

    def _state(self) -> tuple[merkle.CompactRange, str, int, str]:
        """The tree, chain head, number and digest of the last checkpoint, from the head pointer."""
        head = self.read_head()
        if head is None:
            return merkle.CompactRange(), CHAIN_GENESIS, 0, self._legacy_previous()
        try:
            nodes = [base64.b64decode(n, validate=True) for n in head.frontier]
        except ValueError as exc:
            raise LedgerError("the checkpoint head's compact range is not base64") from exc
        frontier = merkle.CompactRange(head.size, nodes)
        if not frontier.is_valid():
            raise LedgerError("the checkpoint head's compact range does not fit its size")
        return frontier, head.chain_head, head.checkpoint, head.digest

    def _extend(self, frontier: merkle.CompactRange, chain_head: str, upto: int | None = None) -> tuple[str, list[str]]:
        """Take the entries after the tree's size into it (up to ``upto``); the new chain head and problems."""
        for stored in self.ledger.entries(frontier.size + 1):
            if upto is not None and stored.seq > upto:
                break
            problem = _absorbable(stored, frontier.size + 1, chain_head)
            if problem:
                return chain_head, [problem]
            frontier.append(merkle.leaf_hash(stored.body))
            chain_head = stored.hash
        return chain_head, []

    def _adopt(self, number: int, frontier: merkle.CompactRange, chain_head: str, previous: str) -> None:
        """A run stopped after writing checkpoint ``number`` but before the head: point the head at it."""
        raw = self._get(note_key(self.ledger.ledger, number)) or b""
        try:
            found = note.parse(raw)
        except CheckpointFormatError as exc:
            raise LedgerError(
                f"checkpoint {number} exists but is malformed ({exc.message}); see ledger verify"
            ) from exc
        if (
            not found.verify(self.origin, self.signer.algorithm, self.public_pem)
            or found.note.value("previous") != previous
        ):
            raise LedgerError(
                f"checkpoint {number} exists but does not follow checkpoint {number - 1}; see ledger verify"
            )
        chain_head, _ = self._extend(frontier, chain_head, upto=found.note.size)
        if frontier.size != found.note.size or frontier.root() != found.note.root:
            raise LedgerError(f"checkpoint {number} exists but the entries it covers changed; see ledger verify")
        self._put_head(number, raw, frontier, chain_head, found.note.value("time") or "")

    def _put_head(self, number: int, raw: bytes, frontier: merkle.CompactRange, chain_head: str, now: str) -> None:
        head = Head(
            checkpoint=number,
            digest=hashlib.sha256(raw).hexdigest(),
            size=frontier.size,
            chain_head=chain_head,
            frontier=[base64.b64encode(n).decode("ascii") for n in frontier.nodes],
            time=now,
        )
        self._put(head_key(self.ledger.ledger), head.model_dump_json().encode(), once=False)

    def _write(self, changes: list[Change], *, retry: bool = True) -> note.SignedNote:
        frontier, chain_head, number, previous = self._state()
        before = (frontier.copy(), chain_head)
        chain_head, problems = self._extend(frontier, chain_head)
        lines = [change.line() for change in changes]
        if changes:  # what the stream showed, bodies included, beside the checkpoint that names it
            evidence = json.dumps([change.evidence() for change in changes], indent=1).encode()
            digest = hashlib.sha256(evidence).hexdigest()
            self._put(evidence_key(self.ledger.ledger, number + 1, digest), evidence, once=True)
            lines.append(f"evidence {digest}")
        now = now_iso(self.clock())
        checkpoint = note.CheckpointNote(
            self.origin,
            frontier.size,
            frontier.root(),
            (
                f"checkpoint {number + 1}",
                f"previous {previous}",
                f"chain-head {chain_head}",
                f"time {now}",
                f"heartbeat {self.heartbeat}",
                *lines,
                *problems,
            ),
        )
        raw = note.sign(checkpoint, self.origin, self.signer, self.public_pem)
        try:
            self._put(note_key(self.ledger.ledger, number + 1), raw, once=True)
        except _Taken:
            if not retry:
                raise
            self._adopt(number + 1, *before, previous)
            return self._write(changes, retry=False)
        self._put_head(number + 1, raw, frontier, chain_head, now)
        return note.parse(raw)


def _absorbable(stored: StoredEntry, expected: int, prev: str) -> str | None:
    """Why the checkpointer cannot take this entry into the tree (it stops there), or None."""
    if stored.seq != expected:
        return f"unchained {expected} missing"
    if entry_hash(stored.body) != stored.hash:
        return f"unchained {stored.seq} hash"
    try:
        body = json.loads(stored.body)
    except ValueError:
        return f"unchained {stored.seq} json"
    if not isinstance(body, dict) or body.get("prev") != prev or body.get("seq") != stored.seq:
        return f"unchained {stored.seq} prev"
    return None


# -- reading every version ----------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    """One version of an object in the checkpoint prefix (a delete marker has no body)."""

    key: str
    version_id: str
    last_modified: str
    deleted: bool
    body: bytes | None


class CheckpointStore:
    """Reads every version of every object under a ledger's checkpoint prefix."""

    def __init__(self, s3: Any, bucket: str, ledger: str) -> None:
        self._s3 = s3
        self.bucket = bucket
        self.ledger = ledger

    @property
    def prefix(self) -> str:
        return f"checkpoints/{self.ledger}/"

    def versions(self) -> list[StoredObject]:
        """Every version and delete marker, per key oldest first."""
        listed: list[tuple[str, int, dict[str, Any], bool]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        position = 0
        try:
            while True:
                page = self._s3.list_object_versions(**kwargs)
                for version in page.get("Versions", []):
                    listed.append((version["Key"], position, version, False))
                    position += 1
                for marker in page.get("DeleteMarkers", []):
                    listed.append((marker["Key"], position, marker, True))
                    position += 1
                if not page.get("IsTruncated"):
                    break
                kwargs["KeyMarker"] = page["NextKeyMarker"]
                kwargs["VersionIdMarker"] = page.get("NextVersionIdMarker", "")
        except (ClientError, BotoCoreError) as exc:
            raise LedgerError(f"cannot list the versions in s3://{self.bucket}/{self.prefix}: {exc}") from exc
        out = []
        for key, _, version, deleted in sorted(
            listed, key=lambda item: (item[0], str(item[2].get("LastModified", "")), -item[1])
        ):
            body = None
            if not deleted:
                response = self._s3.get_object(Bucket=self.bucket, Key=key, VersionId=version["VersionId"])
                body = bytes(response["Body"].read())
            modified: Any = version.get("LastModified")
            out.append(
                StoredObject(
                    key,
                    str(version.get("VersionId")),
                    modified.isoformat() if hasattr(modified, "isoformat") else str(modified),
                    deleted,
                    body,
                )
            )
        return out
