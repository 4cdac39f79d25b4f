"""Checking every version of every checkpoint object against the ledger's entries.

Used by ``verify_ledger`` with what ``CheckpointStore.versions()`` (or an audit
bundle) holds. Nothing here trusts an object: a malformed one, a second
version, a delete marker, a gap in the numbers, a broken chain of digests, a
signed Merkle root the entries no longer hash to, an overwrite the
checkpointer saw in the stream, and a newest checkpoint older than its
heartbeat allows are each reported as a problem naming the object and what
changed.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from deploy_helper.exceptions import CheckpointFormatError
from deploy_helper.ledger import merkle, note
from deploy_helper.ledger.checkpoints import Checkpoint
from deploy_helper.ledger.query import parse_time

if TYPE_CHECKING:
    from deploy_helper.ledger.checkpoints import StoredObject
    from deploy_helper.ledger.note import SignedNote
    from deploy_helper.ledger.verify import Key, VerifyReport

LEGACY_PROVES = (
    "{n} legacy checkpoint(s) (JSON, v1): signed with the key the broker itself used; each proves the ledger's "
    "size and hash-chain head to anyone who trusts the broker, but not against the broker's own role, "
    "and allows no inclusion or consistency proofs"
)
NOTE_PROVES = (
    "{n} independent checkpoint(s) (C2SP signed note, v2): signed by the checkpointer, whose key and bucket the "
    "broker cannot use, fed by the table's stream; each signs the RFC 9162 Merkle root over the entries, "
    "so any entry's inclusion and any two checkpoints' consistency can be proven offline, and any later "
    "rewrite of the entries it covers is detected"
)


def audit_objects(
    report: VerifyReport,
    hashes: dict[int, str],
    objects: list[StoredObject],
    keys: list[Key],
    *,
    legacy_keys: list[Key] | None = None,
    now: float | None = None,
    max_age: float | None = None,
) -> None:
    """Add to ``report`` what is wrong with the checkpoint objects, and what they prove.

    Signed notes verify with ``keys`` only; legacy JSON checkpoints also with ``legacy_keys``.
    """
    by_key: dict[str, list[StoredObject]] = defaultdict(list)
    for obj in objects:
        by_key[obj.key].append(obj)
    notes: dict[int, SignedNote] = {}
    legacy: list[Checkpoint] = []
    evidence: dict[str, str] = {}  # key -> SHA-256 of its first version
    places: dict[int, str] = {}  # checkpoint number -> the prefix its note is under
    for key, versions in sorted(by_key.items()):
        base, _, tail = key.rpartition("/")
        is_note = base.endswith("/note")
        deleted = [v for v in versions if v.deleted]
        present = [v for v in versions if not v.deleted]
        what = f"checkpoint object {key}"
        for marker in deleted:
            report.problems.append(
                f"{what} was deleted (a delete marker, version {marker.version_id}, at {marker.last_modified})"
            )
        if len(present) > 1:
            report.problems.append(
                f"{what} was overwritten: {len(present)} versions ({', '.join(v.version_id for v in present)}); "
                "the first is taken as the original"
            )
        originals: list[SignedNote] = []
        for version in present:
            body = version.body or b""
            if is_note:
                try:
                    parsed = note.parse(body)
                except CheckpointFormatError as exc:
                    report.problems.append(f"{what} (version {version.version_id}) is malformed: {exc.message}")
                    continue
                problem = _check_note(parsed, tail, keys)
                if problem:
                    report.problems.append(f"{what} (version {version.version_id}): {problem}")
                    continue
                originals.append(parsed)
                if len(originals) > 1 and parsed.raw != originals[0].raw:
                    first = originals[0].note
                    report.problems.append(
                        f"{what} (version {version.version_id}) replaces a checkpoint of {first.size} entries "
                        f"with one of {parsed.note.size}: a checkpoint was re-signed"
                    )
            elif base.endswith("/evidence") and note.number(tail.partition("-")[0]) is not None:
                evidence[key] = hashlib.sha256(body).hexdigest()
                break  # the first version is the original (more were reported above)
            elif tail.endswith(".json") and key.count("/") == 2:
                try:
                    legacy.append(Checkpoint.from_document(key, body))
                except (ValueError, KeyError, TypeError):
                    report.problems.append(f"{what} (version {version.version_id}) is malformed: not a JSON checkpoint")
                break  # legacy: one version (more were reported above)
            else:
                report.problems.append(f"{what} is not a checkpoint: an unexpected object in the checkpoint prefix")
                break
        if originals:
            number = originals[0].note.number
            if number not in notes:
                notes[number] = originals[0]
                places[number] = base.removesuffix("/note")
    _audit_legacy(report, hashes, legacy, [*keys, *(legacy_keys or [])])
    _audit_evidence(report, notes, places, evidence)
    report.notes = notes
    _audit_notes(report, hashes, notes, places, now=now, max_age=max_age)


def _audit_evidence(
    report: VerifyReport, notes: dict[int, SignedNote], places: dict[int, str], evidence: dict[str, str]
) -> None:
    """Each checkpoint that names changes keeps the stream's images of them, unaltered, beside it."""
    expected = {}
    for number, signed in notes.items():
        digest = signed.note.value("evidence")
        if digest is not None:
            expected[f"{places[number]}/evidence/{number:012d}-{digest[:16]}"] = (number, digest)
    for key, (number, digest) in sorted(expected.items()):
        if key not in evidence:
            report.problems.append(f"the evidence of checkpoint {number} ({key}) is missing")
        elif evidence[key] != digest:
            report.problems.append(f"the evidence of checkpoint {number} ({key}) differs from what it signed")
    for key in sorted(set(evidence) - set(expected)):
        report.problems.append(
            f"checkpoint object {key} is evidence no checkpoint names (a checkpointer run that stopped "
            "before its checkpoint leaves one; otherwise it was put there)"
        )


def _check_note(parsed: SignedNote, tail: str, keys: list[Key]) -> str | None:
    if not keys:
        return "no public key to verify it with (give --public-key)"
    if not any(parsed.verify(parsed.note.origin, algorithm, pem) for algorithm, pem in keys):
        return "the signature does not verify: it is forged or altered"
    try:
        number = parsed.note.number
    except CheckpointFormatError as exc:
        return exc.message
    if note.number(tail) != number:
        return f"holds checkpoint {number} under another checkpoint's name: checkpoints were moved"
    return None


def _audit_legacy(report: VerifyReport, hashes: dict[int, str], legacy: list[Checkpoint], keys: list[Key]) -> None:
    from deploy_helper.ledger.verify import _check_checkpoint

    previous = "0" * 64
    for checkpoint in legacy:
        problem = _check_checkpoint(checkpoint, previous, hashes, report, keys)
        if problem:
            report.problems.append(problem)
            return
        previous = checkpoint.digest
        report.checkpoints += 1
    if legacy:
        report.explanations.append(LEGACY_PROVES.format(n=len(legacy)))


def _audit_notes(
    report: VerifyReport,
    hashes: dict[int, str],
    notes: dict[int, SignedNote],
    places: dict[int, str],
    *,
    now: float | None,
    max_age: float | None,
) -> None:
    if not notes:
        if max_age is not None and report.size:
            report.problems.append(
                "there is no independent checkpoint of the ledger: the checkpointer has not run, "
                "or its checkpoints were removed"
            )
        return
    roots = _roots_at(report.leaves, {n.note.size for n in notes.values()})
    last_good = 0
    previous: SignedNote | None = None
    last_number = 0
    for number in sorted(notes):
        current = notes[number]
        if number > last_number + 1:
            missing = f"{last_number + 1}" if number == last_number + 2 else f"{last_number + 1}..{number - 1}"
            report.problems.append(f"checkpoint {missing} is missing: a gap in the checkpoint sequence")
            previous = None
        last_number = number
        statement = current.note
        expected_previous = previous.digest if previous is not None else None
        stated = statement.value("previous") or ""
        if number == 1 and not (stated == note.GENESIS or stated.startswith("legacy ")):
            report.problems.append("checkpoint 1 does not start the sequence: earlier checkpoints are missing")
        elif expected_previous is not None and stated != expected_previous:
            report.problems.append(
                f"checkpoint {number} does not chain to checkpoint {number - 1}: one of them was replaced"
            )
        if previous is not None and statement.origin != previous.note.origin:
            report.problems.append(
                f"checkpoint {number} names another log ({statement.origin!r}) than checkpoint {number - 1} "
                f"({previous.note.origin!r})"
            )
        if previous is not None and statement.size < previous.note.size:
            report.problems.append(
                f"checkpoint {number} covers fewer entries ({statement.size}) than checkpoint {number - 1} "
                f"({previous.note.size}): the ledger was truncated"
            )
        size = statement.size
        if size > len(report.leaves):
            report.problems.append(
                f"checkpoint {number} covers {size} entries but the ledger holds {len(report.leaves)}: "
                "the ledger was truncated"
            )
        elif roots[size] != statement.root:
            report.problems.append(
                f"entries {last_good + 1}..{size} differ from what checkpoint {number} signed "
                f"(Merkle root over {size} entries): the ledger was rewritten after checkpoint {number}"
            )
        else:
            last_good = max(last_good, size)
            chain_head = statement.value("chain-head")
            if chain_head is not None and size in hashes and hashes[size] != chain_head:
                report.problems.append(f"entry {size}'s hash differs from the chain head checkpoint {number} signed")
        for line in statement.values("changed"):
            seq, kind, old, new = (line.split() + ["-"] * 4)[:4]
            verb = "deleted" if kind == "REMOVE" else "overwritten"
            digest = statement.value("evidence")
            kept = f"{places[number]}/evidence/{number:012d}-{digest[:16]}" if digest else None
            report.problems.append(
                f"entry {seq} was {verb} in the table ({kind}, seen by the checkpointer in the table's stream, "
                f"recorded in checkpoint {number}): "
                + (
                    f"its hash was {old}, now {new}"
                    if old != new
                    else f"its body is unchanged ({old}), other attributes"
                )
                + (f"; the entry as it was is kept in {kept}" if kept else "")
            )
        for line in statement.values("unchained"):
            report.problems.append(
                f"the checkpointer could not take entry {line.split()[0]} into checkpoint {number}: "
                f"it does not chain ({line.split()[-1]})"
            )
        report.checkpoints += 1
        previous = current
    newest = notes[max(notes)]
    report.latest_checkpoint = {
        "number": max(notes),
        "size": newest.note.size,
        "root": base64.b64encode(newest.note.root).decode("ascii"),
        "time": newest.note.value("time"),
    }
    report.explanations.append(NOTE_PROVES.format(n=len(notes)))
    _check_age(report, newest, now=now, max_age=max_age)


def _check_age(report: VerifyReport, newest: SignedNote, *, now: float | None, max_age: float | None) -> None:
    stamp = parse_time(newest.note.value("time") or "")
    heartbeat = note.number(newest.note.value("heartbeat"))
    allowed = max_age if max_age is not None else (2 * heartbeat + 300 if heartbeat is not None else None)
    if stamp is None or allowed is None:
        return
    age = (time.time() if now is None else now) - stamp.timestamp()
    if age > allowed:
        report.problems.append(
            f"the newest checkpoint ({newest.note.number}, at {newest.note.value('time')}) is {int(age)} s old, "
            f"more than the heartbeat allows ({int(allowed)} s): checkpointing stopped or newer checkpoints "
            "were removed"
        )


def _roots_at(leaves: list[bytes], sizes: set[int]) -> dict[int, bytes]:
    """The Merkle root over the first *s* leaves for each wanted size *s*, in one pass."""
    compact = merkle.CompactRange()
    roots = {0: merkle.EMPTY_ROOT} if 0 in sizes else {}
    for leaf in leaves:
        compact.append(leaf)
        if compact.size in sizes:
            roots[compact.size] = compact.root()
    return roots
