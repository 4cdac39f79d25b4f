"""Signed-note checkpoints: the reference vector, and malformed objects that must never crash verify."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from deploy_helper.exceptions import CheckpointFormatError
from deploy_helper.ledger import merkle, note
from deploy_helper.ledger.audit import audit_objects
from deploy_helper.ledger.checkpoints import StoredObject
from deploy_helper.ledger.verify import VerifyReport
from deploy_helper.trust.signing import Ed25519Signer

# The example key and note of the Go reference implementation of signed notes
# (golang.org/x/mod/sumdb/note, note_test.go): verifier key
# "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW" and signer key
# "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz".
GO_KEY_ID = "c74f20a3"
GO_PUBLIC = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
GO_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_TEXT = b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIGNATURE = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
GO_NOTE = GO_TEXT + b"\n\xe2\x80\x94 PeterNeumann " + GO_SIGNATURE.encode() + b"\n"


def _pem(key: Ed25519PrivateKey) -> str:
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public.decode("ascii")


def test_key_ids_and_signatures_match_the_go_reference_note() -> None:
    key = Ed25519PrivateKey.from_private_bytes(GO_SEED)
    assert key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == GO_PUBLIC
    pem = _pem(key)
    assert note.key_id("PeterNeumann", "ed25519", pem).hex() == GO_KEY_ID
    signature = Ed25519Signer("go", key).sign(GO_TEXT)
    blob = base64.b64encode(note.key_id("PeterNeumann", "ed25519", pem) + signature).decode()
    assert blob == GO_SIGNATURE  # Ed25519 is deterministic: byte for byte the reference note
    text, signatures = note.parse_envelope(GO_NOTE)
    assert text == GO_TEXT and note.verify_signatures(text, signatures, "PeterNeumann", "ed25519", pem)
    text, signatures = note.parse_envelope(GO_NOTE.replace(b"cryptography", b"cryptographY"))
    assert not note.verify_signatures(text, signatures, "PeterNeumann", "ed25519", pem)


def test_a_checkpoint_round_trips_and_its_text_is_the_tlog_checkpoint_shape() -> None:
    key = Ed25519PrivateKey.generate()
    statement = note.CheckpointNote("example.com/log", 7, merkle.EMPTY_ROOT, ("checkpoint 3", "previous genesis"))
    raw = note.sign(statement, "example.com/log", Ed25519Signer("k", key), _pem(key))
    lines = raw.decode().split("\n")
    assert lines[:3] == ["example.com/log", "7", base64.b64encode(merkle.EMPTY_ROOT).decode()]
    assert lines[5] == "" and lines[6].startswith("\u2014 example.com/log ")
    parsed = note.parse(raw)
    assert parsed.note == statement and parsed.note.number == 3
    assert parsed.verify("example.com/log", "ed25519", _pem(key))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_parse_refuses_garbage_with_a_reason_and_nothing_else(raw: bytes) -> None:
    try:
        note.parse(raw)
    except CheckpointFormatError as exc:
        assert exc.message


ROOT = base64.b64encode(b"\x00" * 32).decode()
lines = st.sampled_from(["o", "7", "²", "", "checkpoint 1", "checkpoint ³", "previous genesis", "heartbeat ٣",
                         ROOT, "\u2014 o AAAAAAAA", "\u2014 o", "time x"])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["note/000000000001", "note/x", "stray", "1-x.json"]),
                          st.booleans(), st.lists(lines, max_size=9).map("\n".join))))  # fmt: skip
def test_verify_reports_any_malformed_checkpoint_object_and_never_crashes(
    objects: list[tuple[str, bool, str]],
) -> None:
    key = Ed25519PrivateKey.generate()
    stored = [
        StoredObject(f"checkpoints/main/{name}", str(i), "2026-01-01", deleted, None if deleted else body.encode())
        for i, (name, deleted, body) in enumerate(objects)
    ]
    report = VerifyReport(leaves=[merkle.leaf_hash(b"x")], size=1)
    audit_objects(report, {0: "0" * 64}, stored, [("ed25519", _pem(key))], now=0.0)
    if any(not deleted for _, deleted, _ in objects):
        assert report.problems  # nothing here is a valid checkpoint: each is reported
