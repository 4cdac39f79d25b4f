"""What an auditor checks without AWS: inclusion proofs, consistency from a kept checkpoint, audit bundles.

An audit bundle (``ledger bundle --out DIR``) is a directory:

- ``entries.jsonl`` — every entry as stored: ``{"seq", "hash", "body"}`` with
  ``body`` the exact text that was hashed;
- ``checkpoints/NNNNNN`` — every version of every object in the checkpoint
  prefix, byte for byte (delete markers are listed in the manifest only);
- ``keys/<n>.pem`` — the checkpoint public keys as the exporter saw them;
- ``manifest.json`` — what each file is (key, version, time) and its SHA-256.

The manifest's hashes only catch a bundle damaged in transit: what makes the
bundle trustworthy is the checkpoints' signatures, checked against the
auditor's own copy of the public key (``--public-key``) where they have one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploy_helper.exceptions import CheckpointFormatError, LedgerError
from deploy_helper.ledger import merkle, note
from deploy_helper.ledger.checkpoints import StoredObject
from deploy_helper.ledger.entries import now_iso
from deploy_helper.ledger.query import parse_time
from deploy_helper.ledger.store import StoredEntry

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from deploy_helper.ledger.verify import Key, VerifyReport

BUNDLE_FORMAT = "deploy-helper-audit-bundle/v1"


# -- proofs ----------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def inclusion(leaves: list[bytes], bodies: dict[int, bytes], seq: int, signed: note.SignedNote) -> dict[str, Any]:
    """An inclusion proof of entry ``seq`` in the tree a checkpoint signed, checked before it is returned."""
    size = signed.note.size
    if not 1 <= seq <= size:
        raise LedgerError(
            f"entry {seq} is not covered by checkpoint {signed.note.number} ({size} entries): "
            "prove it against a later checkpoint, or wait for the next one"
        )
    proof = merkle.inclusion_proof(leaves[:size], seq - 1)
    return {
        "entry": seq,
        "leaf_index": seq - 1,
        "tree_size": size,
        "leaf_hash": b64(leaves[seq - 1]),
        "proof": [b64(p) for p in proof],
        "body": bodies[seq].decode("utf-8"),
        "checkpoint": signed.raw.decode("utf-8"),
        "verified": merkle.verify_inclusion(seq - 1, size, leaves[seq - 1], proof, signed.note.root),
    }


def check_inclusion(document: dict[str, Any], keys: list[Key]) -> list[str]:
    """What is wrong with a proof document from ``ledger prove`` (empty: it holds), with no AWS access."""
    try:
        signed = note.parse(str(document["checkpoint"]).encode("utf-8"))
        body = str(document["body"]).encode("utf-8")
        index, size = int(document["leaf_index"]), int(document["tree_size"])
        proof = [base64.b64decode(p, validate=True) for p in document["proof"]]
    except (KeyError, TypeError, ValueError, CheckpointFormatError) as exc:
        return [f"the proof document is malformed: {exc}"]
    problems = []
    if not any(signed.verify(signed.note.origin, algorithm, pem) for algorithm, pem in keys):
        problems.append("the checkpoint's signature does not verify with the given key")
    if size != signed.note.size:
        problems.append(f"the proof is for a tree of {size} entries, the checkpoint signs {signed.note.size}")
    if not merkle.verify_inclusion(index, size, merkle.leaf_hash(body), proof, signed.note.root):
        problems.append(f"entry {index + 1} as given is not in the tree the checkpoint signed")
    return problems


def check_since(kept_raw: bytes, report: VerifyReport, keys: list[Key]) -> list[str]:
    """Check a checkpoint the auditor kept: theirs and the bucket's agree, and the newest extends it."""
    try:
        kept = note.parse(kept_raw)
        number = kept.note.number
    except CheckpointFormatError as exc:
        return [f"your kept checkpoint is malformed: {exc.message}"]
    if not any(kept.verify(kept.note.origin, algorithm, pem) for algorithm, pem in keys):
        return [f"your kept checkpoint {number} does not verify with the checkpoint key"]
    problems = []
    stored = report.notes.get(number)
    if stored is None:
        problems.append(f"checkpoint {number}, which you kept, is no longer among the stored checkpoints")
    elif stored.raw != kept.raw:
        problems.append(
            f"the stored checkpoint {number} differs from your copy (it signs {stored.note.size} entries, "
            f"yours {kept.note.size}): the stored one was replaced"
        )
    if not report.notes:
        return [*problems, "there is no stored checkpoint to check your kept one against"]
    newest = report.notes[max(report.notes)]
    if newest.note.size < kept.note.size:
        return [*problems, "the newest checkpoint covers fewer entries than yours: the ledger was truncated"]
    if newest.note.size > len(report.leaves):
        return [*problems, "the ledger holds fewer entries than the newest checkpoint: it was truncated"]
    proof = merkle.consistency_proof(report.leaves[: newest.note.size], kept.note.size)
    if not merkle.verify_consistency(kept.note.size, newest.note.size, kept.note.root, newest.note.root, proof):
        problems.append(
            f"the newest checkpoint ({newest.note.number}) is not consistent with your checkpoint {number}: "
            f"entries 1..{kept.note.size} were rewritten since you kept it"
        )
    return problems


# -- bundles ---------------------------------------------------------------------------


@dataclass
class Bundle:
    """An audit bundle read back from a directory."""

    stored: list[StoredEntry]
    objects: list[StoredObject]
    keys: list[Key]
    created: float
    problems: list[str] = field(default_factory=list)
    legacy_keys: list[Key] = field(default_factory=list)
    heartbeat: int | None = None

    def entries(self, start: int = 1) -> Iterator[StoredEntry]:
        return iter([e for e in self.stored if e.seq >= start])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(
    out: Path,
    entries: Iterable[StoredEntry],
    objects: list[StoredObject],
    keys: list[Key],
    *,
    ledger: str,
    legacy_keys: list[Key] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Write an audit bundle into ``out`` (created; must be empty if it exists); return the manifest."""
    if out.exists() and any(out.iterdir()):
        raise LedgerError(f"{out} is not empty: give a new directory for the bundle")
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "keys").mkdir(exist_ok=True)
    files: dict[str, str] = {}
    lines = [json.dumps({"seq": e.seq, "hash": e.hash, "body": e.body.decode("utf-8")}) for e in entries]
    data = ("\n".join(lines) + "\n" if lines else "").encode("utf-8")
    (out / "entries.jsonl").write_bytes(data)
    files["entries.jsonl"] = _sha(data)
    listed = []
    for index, obj in enumerate(objects):
        item: dict[str, Any] = {
            "key": obj.key,
            "version_id": obj.version_id,
            "last_modified": obj.last_modified,
            "deleted": obj.deleted,
        }
        if obj.body is not None:
            name = f"checkpoints/{index:06d}"
            (out / name).write_bytes(obj.body)
            files[name] = _sha(obj.body)
            item["file"] = name
        listed.append(item)
    key_list = []
    roles = [("checkpointer", k) for k in keys] + [("legacy", k) for k in legacy_keys or []]
    for index, (role, (algorithm, pem)) in enumerate(roles):
        name = f"keys/{index}.pem"
        (out / name).write_text(pem, encoding="ascii")
        files[name] = _sha(pem.encode("ascii"))
        key_list.append({"algorithm": algorithm, "file": name, "role": role})
    manifest = {
        "format": BUNDLE_FORMAT,
        "ledger": ledger,
        "created": now_iso(time.time() if now is None else now),
        "entries": len(lines),
        "checkpoint_objects": listed,
        "keys": key_list,
        "files": files,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def read_bundle(path: Path) -> Bundle:
    """Read a bundle; damaged or missing files are problems, not crashes."""
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LedgerError(f"{path} is not an audit bundle (manifest.json cannot be read: {exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise LedgerError(f"{path}/manifest.json is not a {BUNDLE_FORMAT} manifest")
    problems: list[str] = []
    files = manifest.get("files") or {}

    def read(name: str) -> bytes | None:
        try:
            data = (path / name).read_bytes()
        except OSError:
            problems.append(f"the bundle's file {name} is missing")
            return None
        if files.get(name) != _sha(data):
            problems.append(f"the bundle's file {name} does not match its manifest hash: it was changed after export")
        return data

    stored = []
    raw = read("entries.jsonl") or b""
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), start=1):
        try:
            item = json.loads(line)
            stored.append(StoredEntry(int(item["seq"]), str(item["body"]).encode("utf-8"), str(item["hash"])))
        except (ValueError, KeyError, TypeError):
            problems.append(f"line {number} of entries.jsonl is not an entry")
    objects = []
    for item in manifest.get("checkpoint_objects") or []:
        body = read(item["file"]) if item.get("file") else None
        objects.append(
            StoredObject(
                str(item["key"]), str(item["version_id"]), str(item["last_modified"]), bool(item["deleted"]), body
            )
        )
    keys: list[Key] = []
    legacy_keys: list[Key] = []
    for item in manifest.get("keys") or []:
        pem = read(item["file"])
        if pem is not None and item.get("algorithm") in ("ed25519", "ecdsa-p256-sha256"):
            (legacy_keys if item.get("role") == "legacy" else keys).append((item["algorithm"], pem.decode("ascii")))
    created = parse_time(str(manifest.get("created", "")))
    stamp = created.timestamp() if created else time.time()
    return Bundle(stored, objects, keys, stamp, problems, legacy_keys)
