"""``ledger verify``: prove that no entry was removed, altered or reordered.

Walks the chain from entry 1: every sequence number present (no gap), every
body hashing to its stored hash, every body naming its own ``seq`` and the
previous entry's hash, every body in canonical form. Then the checkpoints:
each signature valid, each chained to the one before (none missing), and the
ledger still holding, at each checkpoint's size, exactly the head hash it
signed (no truncation, no rewrite of the tail). Checkpoints an auditor kept
separately can be passed in and are checked the same way.

Intents without an outcome (a crash between the two) are reported; a re-run
of the same grant resolves them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import rfc8785

from deploy_helper.ledger.checkpoints import GENESIS as CHECKPOINT_GENESIS
from deploy_helper.ledger.checkpoints import verify_checkpoint
from deploy_helper.ledger.store import GENESIS, entry_hash

if TYPE_CHECKING:
    from collections.abc import Iterable

    from deploy_helper.ledger.checkpoints import Checkpoint
    from deploy_helper.ledger.store import DynamoLedger
    from deploy_helper.signing import Algorithm


@dataclass
class VerifyReport:
    """The result of a verification; ``whole`` only when nothing is wrong."""

    size: int = 0
    head: str = GENESIS
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    open_intents: list[int] = field(default_factory=list)
    first_broken: int | None = None

    @property
    def whole(self) -> bool:
        return not self.problems and not self.open_intents

    def as_dict(self) -> dict[str, Any]:
        return {
            "whole": self.whole,
            "size": self.size,
            "head": self.head,
            "checkpoints_verified": self.checkpoints,
            "first_broken_entry": self.first_broken,
            "problems": self.problems,
            "open_intents": self.open_intents,
        }


def verify_ledger(
    ledger: DynamoLedger,
    checkpoints: Iterable[Checkpoint] = (),
    *,
    public_key: tuple[Algorithm, str] | None = None,
) -> VerifyReport:
    report = VerifyReport()
    hashes: dict[int, str] = {0: GENESIS}
    expected, prev = 1, GENESIS
    open_intents: dict[int, tuple[str, str]] = {}
    for stored in ledger.entries():
        problem = _check_entry(stored.seq, stored.body, stored.hash, expected, prev)
        if problem:
            report.problems.append(problem)
            report.first_broken = expected
            break
        entry = json.loads(stored.body)
        grant = entry.get("grant") or {}
        identity = (str(grant.get("grant_id")), str(grant.get("target")))
        if entry.get("type") == "intent":
            open_intents[stored.seq] = identity
        elif grant:
            intent = entry.get("intent")
            if intent is not None:
                open_intents.pop(int(intent), None)
            for seq in [s for s, ident in open_intents.items() if ident == identity and s < stored.seq]:
                open_intents.pop(seq)
        hashes[stored.seq] = stored.hash
        prev, expected = stored.hash, expected + 1
    report.size, report.head = expected - 1, prev
    report.open_intents = sorted(open_intents)
    previous = CHECKPOINT_GENESIS
    for checkpoint in checkpoints:
        problem = _check_checkpoint(checkpoint, previous, hashes, report, public_key)
        if problem:
            report.problems.append(problem)
            break
        previous = checkpoint.digest
        report.checkpoints += 1
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
    previous: str,
    hashes: dict[int, str],
    report: VerifyReport,
    public_key: tuple[Algorithm, str] | None,
) -> str | None:
    data = checkpoint.data
    if public_key is None:
        return f"checkpoint {checkpoint.name}: no public key to verify it with (give --public-key)"
    if not verify_checkpoint(checkpoint, public_key[0], public_key[1]):
        return f"checkpoint {checkpoint.name}: the signature does not verify: it is forged or altered"
    if data.get("previous") != previous:
        return f"checkpoint {checkpoint.name}: does not chain to the checkpoint before it: a checkpoint is missing"
    size = int(data.get("size", -1))
    if size > report.size:
        return (
            f"checkpoint {checkpoint.name} covers {size} entries but the ledger holds {report.size}: "
            "the ledger was truncated"
        )
    if hashes.get(size) != data.get("head"):
        return f"entry {size} differs from what checkpoint {checkpoint.name} signed: the ledger was rewritten"
    return None
