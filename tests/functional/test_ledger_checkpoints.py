"""Independent checkpoints: every tamper kind, the stream, proofs, kept checkpoints, bundles, migration."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

import pytest
from _ledger import (
    NO_AWS,
    entries_of,
    note_objects,
    public_pem,
    raw_table,
    run_cli,
    stored_item,
    verify_cli,
)
from botocore.exceptions import ClientError
from click.testing import CliRunner

from deploy_helper.cli import main

if TYPE_CHECKING:
    from deploy_helper.local.scenario import Scenario


def test_forged_checkpoint_signature_is_named(populated: Scenario) -> None:
    s3, bucket, names = note_objects(populated)
    raw = s3.get_object(Bucket=bucket, Key=names[-1])["Body"].read()
    text, _, _signature = raw.rpartition(b" ")
    s3.put_object(Bucket=bucket, Key=names[-1], Body=text + b" " + base64.b64encode(b"\x01" * 68) + b"\n")
    code, report = verify_cli(populated)
    assert code == 1
    assert any(names[-1] in p and "overwritten: 2 versions" in p for p in report["problems"])
    assert any(names[-1] in p and "forged" in p for p in report["problems"])


def test_overwritten_checkpoint_version_is_named_even_if_validly_signed(populated: Scenario) -> None:
    """Someone holding the key re-signs checkpoint 1 over different contents: the first version stays."""
    from deploy_helper.ledger import note

    s3, bucket, names = note_objects(populated)
    original = note.parse(s3.get_object(Bucket=bucket, Key=names[0])["Body"].read())
    handle = populated.ledger()
    assert handle.checkpointer is not None and handle.public_key is not None
    forged = note.CheckpointNote(original.note.origin, 3, original.note.root, original.note.extensions)
    s3.put_object(
        Bucket=bucket,
        Key=names[0],
        Body=note.sign(forged, original.note.origin, handle.checkpointer.signer, handle.public_key[1]),
    )
    code, report = verify_cli(populated)
    assert code == 1
    assert any("overwritten: 2 versions" in p for p in report["problems"])
    assert any(f"replaces a checkpoint of {original.note.size} entries with one of 3" in p for p in report["problems"])


def test_deleted_checkpoint_version_is_named(populated: Scenario) -> None:
    populated.checkpoint()
    populated.checkpoint()
    s3, bucket, names = note_objects(populated)
    assert len(names) == 3
    s3.delete_object(Bucket=bucket, Key=names[1])  # a delete marker hides checkpoint 2 from plain reads
    code, report = verify_cli(populated)
    assert code == 1
    assert any(names[1] in p and "was deleted (a delete marker" in p for p in report["problems"])
    # A version removed outright (Object Lock refuses this in AWS during retention) leaves a gap.
    versions = s3.list_object_versions(Bucket=bucket, Prefix=names[1])
    for version in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
        s3.delete_object(Bucket=bucket, Key=names[1], VersionId=version["VersionId"])
    code, report = verify_cli(populated)
    assert code == 1
    assert "checkpoint 2 is missing: a gap in the checkpoint sequence" in report["problems"]


def test_stale_heartbeat_is_named(populated: Scenario) -> None:
    import time

    populated.checkpoint(clock=lambda: time.time() - 3 * 3600)  # the last checkpoint, three hours ago
    code, report = verify_cli(populated)
    assert code == 1
    assert any("checkpoint (2" in p and "more than the heartbeat allows (2100 s)" in p for p in report["problems"])
    result = run_cli(populated, "ledger", "verify", "--json", "--max-age", str(4 * 3600))
    assert result.exit_code == 0, result.output


def test_malformed_objects_are_reported_and_crash_nothing(populated: Scenario) -> None:
    s3, bucket, _ = note_objects(populated)
    s3.put_object(Bucket=bucket, Key="checkpoints/main/note/000000000007", Body=b"\xff\x00 not a note")
    s3.put_object(Bucket=bucket, Key="checkpoints/main/stray.txt", Body=b"hello")
    s3.put_object(Bucket=bucket, Key="checkpoints/main/000000000003-x.json", Body=b"{not json")
    assert populated.checkpoint()["checkpoint"] == 2  # the checkpointer goes on
    code, report = verify_cli(populated)
    assert code == 1
    problems = " | ".join(report["problems"])
    assert "note/000000000007 (version" in problems and "is malformed: the note is not UTF-8" in problems
    assert "stray.txt is not a checkpoint" in problems
    assert "000000000003-x.json (version" in problems and "not a JSON checkpoint" in problems
    assert report["checkpoints_verified"] == 2


def test_overwritten_entry_is_seen_in_the_stream_and_named(populated: Scenario, caplog: Any) -> None:
    import logging

    item = stored_item(populated, 3)
    before, original = item["hash"]["S"], item["body"]["S"]
    body = json.loads(item["body"]["S"])
    body["decision"] = "denied"
    item["body"] = {"S": json.dumps(body)}
    raw_table(populated).put_item(TableName=populated.config.ledger_table, Item=item)
    with caplog.at_level(logging.WARNING, logger="deploy_helper.entry.checkpointer"):
        assert populated.checkpoint()["changes"] == 1
    assert [r.getMessage() for r in caplog.records] == ["ledger entry changed"]
    assert caplog.records[0].seq == 3 and caplog.records[0].change == "MODIFY"  # type: ignore[attr-defined]
    code, report = verify_cli(populated)
    assert code == 1
    s3, bucket, _ = note_objects(populated)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="checkpoints/main/evidence/000000000002-")["Contents"]
    assert len(listed) == 1
    evidence = listed[0]["Key"]
    assert any(
        p.startswith("entry 3 was overwritten in the table (MODIFY")
        and f"its hash was {before}" in p
        and p.endswith(f"the entry as it was is kept in {evidence}")
        for p in report["problems"]
    )
    kept = json.loads(s3.get_object(Bucket=bucket, Key=evidence)["Body"].read())
    assert kept == [
        {
            "seq": 3,
            "change": "MODIFY",
            "old_hash": before,
            "new_hash": hashlib.sha256(item["body"]["S"].encode()).hexdigest(),
            "old_body": original,
            "new_body": item["body"]["S"],
        }
    ]
    s3.delete_object(Bucket=bucket, Key=evidence)
    code, report = verify_cli(populated)
    assert any(evidence in p and "was deleted (a delete marker" in p for p in report["problems"])


def test_checkpoints_signed_with_kms_verify_offline(scenario: Scenario) -> None:
    from dataclasses import replace

    from deploy_helper.ledger import note
    from deploy_helper.ledger.setup import open_ledger

    kms = scenario.local.client("kms", "123456789012")
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    scenario.client().request([scenario.key_grant("service-a")])
    handle = open_ledger(
        scenario.local.base_session(),
        table=str(scenario.config.ledger_table),
        bucket=scenario.config.checkpoint_bucket,
        checkpoint_key=f"kms:{key}",
        region="us-east-1",
    )
    assert handle.checkpointer is not None and handle.public_key is not None
    algorithm, public = handle.public_key
    assert algorithm == "ecdsa-p256-sha256"
    written = handle.checkpointer.write()
    assert written.note.size == handle.ledger.head()[0]
    assert written.verify(written.note.origin, algorithm, public)
    altered = replace(written, text=written.text.replace(b"\ncheckpoint 1\n", b"\ncheckpoint 2\n"))
    assert not altered.verify(written.note.origin, algorithm, public)
    local_key = scenario.ledger().public_key
    assert local_key is not None and not written.verify(written.note.origin, *local_key)
    assert note.parse(written.raw).signatures[0].key_id == note.key_id(written.note.origin, algorithm, public)


def test_heartbeat_goes_to_the_checkpointer_not_the_broker(scenario: Scenario, monkeypatch: Any) -> None:
    from deploy_helper import handler
    from deploy_helper.entry import checkpointer

    for name, value in scenario.environ().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEPLOY_HELPER_LEDGER_ORIGIN", "deploy-helper.local/ledger/main")
    monkeypatch.setattr(checkpointer, "_checkpointer", None)
    first = checkpointer.lambda_handler(checkpointer.HEARTBEAT_EVENT, None)
    second = checkpointer.lambda_handler(checkpointer.HEARTBEAT_EVENT, None)
    assert (first["checkpoint"], second["checkpoint"]) == (1, 2)
    assert first["size"] == second["size"] == 0  # nothing happened: a heartbeat all the same
    assert checkpointer.lambda_handler({"deploy_helper": "checkpoint"}, None)["ok"] is False  # anything else: ignored
    # The broker no longer writes checkpoints: the old heartbeat event is a malformed request to it.
    handler.set_broker(scenario.broker())
    try:
        refused = handler.lambda_handler({"deploy_helper": "checkpoint-heartbeat"}, None)
    finally:
        handler.set_broker(None)
    assert refused["ok"] is False
    assert entries_of(scenario)[-1]["decision"] == "denied"
    _, _, names = note_objects(scenario)
    assert len(names) == 2
    code, report = verify_cli(scenario)
    assert code == 0  # the refusal after the last checkpoint is covered by the next one
    assert report["checkpoints_verified"] == 2 and report["problems"] == []


def test_prove_prints_an_inclusion_proof_checked_offline(populated: Scenario, tmp_path: Any) -> None:
    result = run_cli(populated, "ledger", "prove", "5", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["verified"] is True and document["entry"] == 5
    assert json.loads(document["body"])["seq"] == 5
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(document))
    pem = public_pem(populated, tmp_path)
    offline = CliRunner().invoke(main, ["ledger", "check-proof", str(proof_file), "--public-key", pem], env=NO_AWS)
    assert offline.exit_code == 0, offline.output
    document["body"] = document["body"].replace('"seq":5', '"seq":5,"x":1')
    proof_file.write_text(json.dumps(document))
    offline = CliRunner().invoke(main, ["ledger", "check-proof", str(proof_file), "--public-key", pem], env=NO_AWS)
    assert offline.exit_code == 1 and "entry 5 as given is not in the tree" in offline.output
    too_new = run_cli(populated, "ledger", "prove", "500")
    assert too_new.exit_code == 1 and "not covered by checkpoint 1" in too_new.output


def test_every_change_is_named_however_many(populated: Scenario) -> None:
    ledger = populated.ledger().ledger
    for _ in range(6):
        ledger.append({"type": "decision", "decision": "unchanged"})
    populated.checkpoint()
    size = ledger.head()[0]
    assert size > 16  # more changes than one checkpoint note holds
    for seq in range(1, size + 1):  # an attribute beside the body: still an overwrite
        raw_table(populated).put_item(
            TableName=populated.config.ledger_table, Item={**stored_item(populated, seq), "x": {"S": "1"}}
        )
    assert populated.checkpoint() == {"ok": True, "checkpoint": 4, "size": size, "changes": size}
    code, report = verify_cli(populated)
    named = {int(p.split()[1]) for p in report["problems"] if "was overwritten in the table (MODIFY" in p}
    assert code == 1 and named == set(range(1, size + 1))


def test_a_run_that_stopped_between_checkpoint_and_head_is_taken_up_by_the_next(populated: Scenario) -> None:
    from deploy_helper.exceptions import LedgerError
    from deploy_helper.ledger.setup import open_ledger
    from deploy_helper.local.scenario import CHECKPOINT_ORIGIN

    session = populated.local.base_session()

    def die_before_the_head(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].startswith("checkpoint-head/"):
            raise RuntimeError("the function timed out here")

    session.events.register("before-parameter-build.s3.PutObject", die_before_the_head)
    opened = open_ledger(
        session,
        table=str(populated.config.ledger_table),
        bucket=populated.config.checkpoint_bucket,
        checkpoint_key=populated.config.checkpoint_key,
        region="us-east-1",
        origin=CHECKPOINT_ORIGIN,
    )
    assert opened.checkpointer is not None
    populated.ledger().ledger.append({"type": "decision", "decision": "unchanged"})
    with pytest.raises(RuntimeError):
        opened.checkpointer.write()  # checkpoint 2 is stored, the head still says 1
    assert len(note_objects(populated)[2]) == 2
    populated.ledger().ledger.append({"type": "decision", "decision": "unchanged"})
    assert populated.checkpoint()["checkpoint"] == 3  # 2 is taken up, not rewritten; 3 follows it
    code, report = verify_cli(populated)
    assert code == 0, report
    assert report["checkpoints_verified"] == 3
    # A checkpoint found in the way that does not follow the head is not taken up.
    s3, bucket, _ = note_objects(populated)
    s3.put_object(Bucket=bucket, Key="checkpoints/main/note/000000000004", Body=b"not ours")
    with pytest.raises(LedgerError, match="checkpoint 4 exists but is malformed"):
        populated.checkpoint()


def test_checkpoint_command_writes_the_next_checkpoint(populated: Scenario) -> None:
    result = run_cli(populated, "ledger", "checkpoint", "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert written["checkpoint"] == 2 and written["size"] == len(entries_of(populated))
    assert "\nprevious " in written["note"] and "\n\n\u2014 deploy-helper.local/ledger/main " in written["note"]
    code, report = verify_cli(populated)
    assert code == 0 and report["checkpoints_verified"] == 2


def test_verify_since_a_kept_checkpoint(populated: Scenario, tmp_path: Any) -> None:
    import rfc8785

    from deploy_helper.ledger.store import GENESIS, entry_hash

    s3, bucket, names = note_objects(populated)
    kept = tmp_path / "kept-1.note"
    kept.write_bytes(s3.get_object(Bucket=bucket, Key=names[0])["Body"].read())
    populated.client().request([populated.bucket_grant("service-b")])
    populated.checkpoint()
    result = run_cli(populated, "ledger", "verify", "--json", "--since", str(kept))
    assert result.exit_code == 0, result.output
    # Rewrite entry 2 and re-chain everything after it: the chain is whole again, the proof is not.
    prev = GENESIS
    for stored in list(populated.ledger().ledger.entries()):
        body = json.loads(stored.body)
        if stored.seq == 2:
            body["reason"] = "nothing to see"
        body["prev"] = prev
        raw = rfc8785.dumps(body)
        prev = entry_hash(raw)
        item = {
            "ledger": {"S": "main"},
            "seq": {"N": str(stored.seq)},
            "body": {"S": raw.decode()},
            "hash": {"S": prev},
        }
        raw_table(populated).put_item(TableName=populated.config.ledger_table, Item=item)
    code, report = verify_cli(populated)
    assert code == 1 and report["first_broken_entry"] is None  # the chain alone would not show it
    result = run_cli(populated, "ledger", "verify", "--json", "--since", str(kept))
    problems = json.loads(result.output)["problems"]
    assert any("is not consistent with your checkpoint 1" in p for p in problems)
    assert any(p.startswith("entries 1..") and "differ from what checkpoint 1 signed" in p for p in problems)


def test_pulled_copies_catch_a_checkpoint_replaced_by_whoever_holds_the_key(populated: Scenario, tmp_path: Any) -> None:
    """An account administrator can re-sign and (after Object Lock's retention) replace: your copies still tell."""
    from deploy_helper.ledger import note

    kept = tmp_path / "kept"
    pulled = run_cli(populated, "ledger", "pull", "--out", str(kept), "--json")
    assert json.loads(pulled.output) == {"added": [1], "differ": [], "held": 1}
    populated.checkpoint()
    pulled = run_cli(populated, "ledger", "pull", "--out", str(kept), "--json")
    assert json.loads(pulled.output) == {"added": [2], "differ": [], "held": 2}
    assert run_cli(populated, "ledger", "verify", "--since", str(kept)).exit_code == 0
    # Checkpoint 1 replaced outright: every version removed, a re-signed one (over fewer entries) put back.
    s3, bucket, names = note_objects(populated)
    original = note.parse((kept / "000000000001").read_bytes())
    for version in s3.list_object_versions(Bucket=bucket, Prefix=names[0])["Versions"]:
        s3.delete_object(Bucket=bucket, Key=names[0], VersionId=version["VersionId"])
    handle = populated.ledger()
    assert handle.checkpointer is not None and handle.public_key is not None
    forged = note.CheckpointNote(original.note.origin, 3, original.note.root, original.note.extensions)
    s3.put_object(
        Bucket=bucket,
        Key=names[0],
        Body=note.sign(forged, original.note.origin, handle.checkpointer.signer, handle.public_key[1]),
    )
    pulled = run_cli(populated, "ledger", "pull", "--out", str(kept), "--json")
    assert pulled.exit_code == 1 and json.loads(pulled.output)["differ"] == [1]
    assert (kept / "000000000001").read_bytes() == original.raw  # your copy is never replaced
    result = run_cli(populated, "ledger", "verify", "--json", "--since", str(kept))
    problems = json.loads(result.output)["problems"]
    assert "000000000001: the stored checkpoint 1 differs from your copy (it signs 3 entries, yours 14): " \
        "the stored one was replaced" in problems  # fmt: skip


def test_bundle_verifies_offline_with_aws_credentials_unset(populated: Scenario, tmp_path: Any) -> None:
    out = tmp_path / "bundle"
    result = run_cli(populated, "ledger", "bundle", "--out", str(out))
    assert result.exit_code == 0, result.output
    pem = public_pem(populated, tmp_path)
    offline = CliRunner().invoke(
        main, ["ledger", "verify", "--bundle", str(out), "--public-key", pem, "--json"], env=NO_AWS
    )
    assert offline.exit_code == 0, offline.output
    report = json.loads(offline.output)
    assert report["whole"] and report["checkpoints_verified"] == 1 and report["size"] > 10
    # A bundle edited after export: the changed entry and the manifest both say so.
    lines = (out / "entries.jsonl").read_text().splitlines()
    entry = json.loads(lines[3])
    entry["body"] = entry["body"].replace('"type":"', '"type":"x')
    lines[3] = json.dumps(entry)
    (out / "entries.jsonl").write_text("\n".join(lines) + "\n")
    offline = CliRunner().invoke(main, ["ledger", "verify", "--bundle", str(out), "--json"], env=NO_AWS)
    assert offline.exit_code == 1
    problems = json.loads(offline.output)["problems"]
    assert "the bundle's file entries.jsonl does not match its manifest hash" in problems[0]
    assert any("entry 4 does not match its stored hash" in p for p in problems)


def test_migration_adds_the_first_independent_checkpoint_without_rewriting(scenario: Scenario, tmp_path: Any) -> None:
    import rfc8785
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from deploy_helper.ledger import note
    from deploy_helper.ledger.checkpoints import checkpoint_input
    from deploy_helper.ledger.entries import now_iso
    from deploy_helper.trust.signing import Ed25519Signer, b64url, generate_ed25519

    scenario.client().request(scenario.seed_grants())
    handle = scenario.ledger()
    size, head = handle.ledger.head()
    before = [(e.seq, e.body) for e in handle.ledger.entries()]
    # A checkpoint as the broker wrote them before the checkpointer existed (legacy JSON).
    body = rfc8785.dumps(
        {"ledger": "main", "size": size, "head": head, "time": now_iso(0), "key_id": "old", "previous": "0" * 64}
    )
    old_private, old_public = generate_ed25519()  # the key the broker held: not the checkpointer's
    signer = Ed25519Signer("old", load_pem_private_key(old_private, None))
    (tmp_path / "old.pem").write_bytes(old_public)
    legacy = {"checkpoint": json.loads(body), "signature": b64url(signer.sign(checkpoint_input(body)))}
    s3 = scenario.local.client("s3", "123456789012")
    name = f"checkpoints/main/{size:012d}-19700101T000000.000Z.json"
    s3.put_object(Bucket=str(scenario.config.checkpoint_bucket), Key=name, Body=json.dumps(legacy).encode())
    scenario.checkpoint()
    assert [(e.seq, e.body) for e in handle.ledger.entries()] == before  # no entry rewritten
    _, bucket, names = note_objects(scenario)
    first = s3.get_object(Bucket=bucket, Key=names[0])["Body"].read().decode()
    assert f"previous legacy {hashlib.sha256(body).hexdigest()}" in first
    code, report = verify_cli(scenario)
    assert code == 1 and any(name in p and "does not verify" in p for p in report["problems"])  # which key?
    result = run_cli(scenario, "ledger", "verify", "--json", "--legacy-public-key", str(tmp_path / "old.pem"))
    report = json.loads(result.output)
    assert result.exit_code == 0, report
    assert report["checkpoints_verified"] == 2
    kinds = " ".join(report["explanations"])
    assert "1 legacy checkpoint(s)" in kinds and "not against the broker's own role" in kinds
    assert "1 independent checkpoint(s)" in kinds and "RFC 9162 Merkle root" in kinds
    # The broker's old key never vouches for a signed note: one it signed is refused.
    forged = note.CheckpointNote(note.parse(first.encode()).note.origin, 1, b"\x00" * 32, ("checkpoint 2",))
    s3.put_object(
        Bucket=bucket,
        Key="checkpoints/main/note/000000000002",
        Body=note.sign(forged, forged.origin, signer, old_public.decode()),
    )
    result = run_cli(scenario, "ledger", "verify", "--json", "--legacy-public-key", str(tmp_path / "old.pem"))
    assert any("note/000000000002" in p and "forged" in p for p in json.loads(result.output)["problems"])


def test_a_refused_transaction_leaves_no_stream_record(scenario: Scenario) -> None:
    """The local AWS, like DynamoDB, streams only what a transaction committed."""
    from deploy_helper.local.stream import LedgerStream

    table = str(scenario.config.ledger_table)
    ledger = scenario.ledger().ledger
    ledger.append({"type": "decision"})
    stream = LedgerStream(scenario.local, table)
    assert [r["eventName"] for r in stream.records()] == ["INSERT"]

    def put(seq: int) -> dict[str, Any]:
        item = {"ledger": {"S": "main"}, "seq": {"N": str(seq)}, "body": {"S": "{}"}, "hash": {"S": "x"}}
        return {"Put": {"TableName": table, "Item": item, "ConditionExpression": "attribute_not_exists(seq)"}}

    with pytest.raises(ClientError) as refused:
        raw_table(scenario).transact_write_items(TransactItems=[put(2), put(1)])  # entry 1 exists: all or nothing
    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert stream.records() == []
    assert ledger.head()[0] == 1
    raw_table(scenario).put_item(
        TableName=table, Item=stored_item(scenario, 1)
    )  # changes nothing: no record, as in AWS
    assert stream.records() == []
    ledger.append({"type": "decision"})
    assert [(r["eventName"], r["dynamodb"]["Keys"]["seq"]["N"]) for r in stream.records()] == [("INSERT", "2")]


def test_a_stream_mapping_in_the_local_aws_keeps_records_for_the_checkpointer(scenario: Scenario) -> None:
    """As when the broker is created from template.yaml: the checkpointer's mapping is on the stream."""
    from deploy_helper.local import scenario as seed

    table = str(scenario.config.ledger_table)
    role = seed._role(scenario.local, "123456789012", "checkpointer", "lambda.amazonaws.com")
    lam = scenario.local.client("lambda", "123456789012")
    lam.create_function(
        FunctionName="checkpointer",
        Runtime="python3.12",
        Role=role,
        Handler="deploy_helper.entry.checkpointer.lambda_handler",
        Code={"ZipFile": seed._lambda_zip()},
    )
    stream_arn = raw_table(scenario).describe_table(TableName=table)["Table"]["LatestStreamArn"]
    lam.create_event_source_mapping(EventSourceArn=stream_arn, FunctionName="checkpointer", StartingPosition="LATEST")
    response = scenario.client().request([scenario.bucket_grant("service-a")])
    assert response.results[0].decision == "applied"  # appends succeed ...
    from deploy_helper.local.stream import LedgerStream

    records = LedgerStream(scenario.local, table).records()  # ... and the stream still holds them
    assert [int(r["dynamodb"]["Keys"]["seq"]["N"]) for r in records] == [e["seq"] for e in entries_of(scenario)]


def test_a_forged_stream_event_cannot_put_entries_into_a_checkpoint(populated: Scenario) -> None:
    """Whoever can invoke the checkpointer (an account administrator) can cause a checkpoint, not an entry."""
    from deploy_helper.entry.checkpointer import handle

    handle_ = populated.ledger()
    assert handle_.checkpointer is not None
    size = handle_.ledger.head()[0]
    fake = {"ledger": {"S": "main"}, "seq": {"N": str(size + 1)}}
    record = {"eventName": "INSERT", "dynamodb": {"Keys": fake, "NewImage": {**fake, "body": {"S": "{}"}}}}
    answer = handle({"Records": [record]}, handle_.checkpointer)
    assert (answer["size"], answer["changes"]) == (size, 0)  # entries come from the table, never the event
    code, report = verify_cli(populated)
    assert code == 0 and report["size"] == size and report["latest_checkpoint"]["size"] == size


def test_an_auditor_with_only_the_public_key_file_verifies(populated: Scenario, tmp_path: Any) -> None:
    pem = public_pem(populated, tmp_path)
    env = {**populated.environ(), "DEPLOY_HELPER_CHECKPOINT_KEY": f"file:{pem}"}
    result = CliRunner().invoke(main, ["ledger", "verify", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["checkpoints_verified"] == 1
    refused = CliRunner().invoke(main, ["ledger", "checkpoint"], env=env)
    assert refused.exit_code == 2 and "--checkpoint-key" in refused.output  # it cannot sign


def test_a_checkpoint_write_never_lists_and_costs_the_same_however_many_exist(populated: Scenario) -> None:
    from deploy_helper.ledger.setup import open_ledger
    from deploy_helper.local.scenario import CHECKPOINT_ORIGIN

    session = populated.local.base_session()
    calls: list[str] = []
    session.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    opened = open_ledger(
        session,
        table=str(populated.config.ledger_table),
        bucket=populated.config.checkpoint_bucket,
        checkpoint_key=populated.config.checkpoint_key,
        region="us-east-1",
        origin=CHECKPOINT_ORIGIN,
    )
    assert opened.checkpointer is not None
    per_write = []
    for _ in range(40):
        calls.clear()
        opened.checkpointer.write()
        per_write.append(list(calls))
    assert per_write == [["GetObject", "PutObject", "PutObject"]] * 40  # head, note, head: never a listing
    assert len(note_objects(populated)[2]) == 41
