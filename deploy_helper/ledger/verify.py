"""``ledger verify``: prove that no entry was removed, altered or reordered.

Walks the chain from entry 1: every sequence number present (no gap), every
body hashing to its stored hash, every body naming its own ``seq`` and the
previous entry's hash, every body in canonical form. Then the checkpoints
(``deploy_helper.ledger.audit``): every version of every object in the
checkpoint prefix, each signed note's signature, number and chain to the one
before, the Merkle root each signed against the ledger's entries as they are
now, what the checkpointer saw change in the table's stream, and the newest
checkpoint's age. Checkpoints an auditor kept separately are checked the same way.

Intents without an outcome (a crash between the two) are reported; a re-run
of the same grant resolves them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import rfc8785

from deploy_helper.ledger import merkle
from deploy_helper.ledger.checkpoints import verify_checkpoint
from deploy_helper.ledger.store import GENESIS, entry_hash

if TYPE_CHECKING:
    from collections.abc import Iterable

    from deploy_helper.ledger.checkpoints import Checkpoint, StoredObject
    from deploy_helper.ledger.note import SignedNote
    from deploy_helper.trust.signing import Algorithm

    Key = tuple[Algorithm, str]


@dataclass
class VerifyReport:
    """The result of a verification; ``whole`` only when nothing is wrong."""

    size: int = 0
    head: str = GENESIS
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    open_intents: list[int] = field(default_factory=list)
    first_broken: int | None = None
    #: What each kind of checkpoint found proves (legacy JSON, independent signed notes).
    explanations: list[str] = field(default_factory=list)
    latest_checkpoint: dict[str, Any] | None = None
    #: Leaf hashes of the stored entries, in stored order (for proofs; not reported).
    leaves: list[bytes] = field(default_factory=list, repr=False)
    #: The signed-note checkpoints found, by number (the first version of each).
    notes: dict[int, SignedNote] = field(default_factory=dict, repr=False)

    @property
    def whole(self) -> bool:
        return not self.problems and not self.open_intents

    def as_dict(self) -> dict[str, Any]:
        return {
            "whole": self.whole,
            "size": self.size,
            "head": self.head,
            "checkpoints_verified": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "first_broken_entry": self.first_broken,
            "problems": self.problems,
            "open_intents": self.open_intents,
            "explanations": self.explanations,
        }


def verify_ledger(
    ledger: Any,
    checkpoints: Iterable[Checkpoint] = (),
    *,
    public_key: Key | None = None,
    objects: list[StoredObject] | None = None,
    keys: list[Key] | None = None,
    legacy_keys: list[Key] | None = None,
    now: float | None = None,
    max_age: float | None = None,
) -> VerifyReport:
    """Verify the entries of ``ledger`` (anything with ``entries()``), then its checkpoints.

    ``checkpoints``: legacy JSON checkpoints given directly (an auditor's kept copies);
    ``objects``: every version in the checkpoint prefix (``CheckpointStore.versions()``);
    ``keys``: the checkpointer's public keys (``public_key`` is added to them); ``legacy_keys``:
    keys that verify legacy JSON checkpoints only (the broker's old key), never a signed note.
    """
    report = VerifyReport()
    hashes: dict[int, str] = {0: GENESIS}
    expected, prev = 1, GENESIS
    open_intents: dict[int, tuple[str, str]] = {}
    broken = False
    for stored in ledger.entries():
        report.leaves.append(merkle.leaf_hash(stored.body))
        if broken:
            continue
        problem = _check_entry(stored.seq, stored.body, stored.hash, expected, prev)
        if problem:
            report.problems.append(problem)
            report.first_broken = expected
            broken = True
            continue
        entry = json.loads(stored.body)
        grant = entry.get("grant") or {}
        identity = (str(grant.get("grant_id")), str(grant.get("target")))
        if entry.get("type") == "intent":
            open_intents[stored.seq] = identity
        elif grant:
            intent = str(entry.get("intent"))
            if intent.isascii() and intent.isdigit():
                open_intents.pop(int(intent), None)
            for seq in [s for s, ident in open_intents.items() if ident == identity and s < stored.seq]:
                open_intents.pop(seq)
        hashes[stored.seq] = stored.hash
        prev, expected = stored.hash, expected + 1
    report.size, report.head = expected - 1, prev
    report.open_intents = sorted(open_intents)
    all_keys = list(keys or []) + ([public_key] if public_key else [])
    previous = None
    for checkpoint in checkpoints:
        problem = _check_checkpoint(checkpoint, previous, hashes, report, [*all_keys, *(legacy_keys or [])])
        if problem:
            report.problems.append(problem)
            break
        previous = checkpoint.digest
        report.checkpoints += 1
    if objects is not None:
        from deploy_helper.ledger.audit import audit_objects

        audit_objects(report, hashes, objects, all_keys, legacy_keys=legacy_keys, now=now, max_age=max_age)
    return report


def _check_entry(seq: int, body: bytes, stored_hash: str, expected: int, prev: str) -> str | None:
    if seq != expected:
        return f"entry {expected} is missing (the next stored entry is {seq}): an entry was removed"
    if entry_hash(body) != stored_hash:
        return f"entry {seq} does not match its stored hash: it was altered"
    try:
        entry = json.loads(body)
    except ValueError:
        return f"entry {seq} is not valid JSON: it was altered"
    if not isinstance(entry, dict) or rfc8785.dumps(entry) != body:
        return f"entry {seq} is not in canonical form: it was altered"
    if entry.get("seq") != seq:
        return f"entry {seq} holds the body of entry {entry.get('seq')}: entries were reordered"
    if entry.get("prev") != prev:
        return f"entry {seq} does not chain to entry {seq - 1}: an entry was altered, removed or reordered"
    return None


def _check_checkpoint(
    checkpoint: Checkpoint,
    previous: str | None,
    hashes: dict[int, str],
    report: VerifyReport,
    keys: list[Key],
) -> str | None:
    """A legacy JSON checkpoint; ``previous`` None: the first one seen (it may follow earlier ones)."""
    data = checkpoint.data
    if not keys:
        return f"checkpoint {checkpoint.name}: no public key to verify it with (give --public-key)"
    if not any(verify_checkpoint(checkpoint, algorithm, pem) for algorithm, pem in keys):
        return f"checkpoint {checkpoint.name}: the signature does not verify: it is forged or altered"
    if previous is not None and data.get("previous") != previous:
        return f"checkpoint {checkpoint.name}: does not chain to the checkpoint before it: a checkpoint is missing"
    size = data.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        return f"checkpoint {checkpoint.name}: its size is not a number: it is malformed"
    if size > report.size:
        return (
            f"checkpoint {checkpoint.name} covers {size} entries but the ledger holds {report.size}: "
            "the ledger was truncated"
        )
    if hashes.get(size) != data.get("head"):
        return f"entry {size} differs from what checkpoint {checkpoint.name} signed: the ledger was rewritten"
    return None
