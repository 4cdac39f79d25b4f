"""The grant ledger: entries per path, tamper detection, fail-closed writes, concurrency."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from deploy_helper.cli import main
from deploy_helper.ledger.store import DynamoLedger
from deploy_helper.ledger.verify import verify_ledger

if TYPE_CHECKING:
    from deploy_helper.local.scenario import Scenario


def entries_of(sc: Scenario) -> list[dict[str, Any]]:
    return [e.entry for e in sc.ledger().ledger.entries()]


def run_cli(sc: Scenario, *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=sc.environ(), catch_exceptions=False)


# -- entries for every path ---------------------------------------------------


def test_apply_writes_intent_then_outcome_with_digests(scenario: Scenario) -> None:
    client = scenario.client()
    context = {"pipeline": "svc-a-deploy", "execution_id": "exec-42", "commit": "0a1b2c3d"}
    response = client.request([scenario.bucket_grant("service-a")], context=context)
    assert response.results[0].decision == "applied"
    entries = [e for e in entries_of(scenario) if e["type"] != "refusal"]
    assert [e["type"] for e in entries] == ["intent", "outcome"]
    intent, outcome = entries
    for e in entries:
        assert e["caller"] == "ci-tooling"
        assert e["key_id"] == "ci-tooling-local"
        assert e["request_id"] == response.request_id
        assert e["context"] == context
        assert e["rule_id"] == "artifact-read"
        assert e["grant"]["kind"] == "bucket-access"
        assert e["grant"]["target"] == f"arn:aws:s3:::{scenario.bucket}"
        assert e["grant"]["principal"] == scenario.deploy_roles["service-a"]
        assert e["policy_before"].startswith("sha256:") and e["policy_after"].startswith("sha256:")
        assert e["policy_before"] != e["policy_after"]
    assert outcome["intent"] == str(intent["seq"])
    assert outcome["decision"] == "applied"
    assert outcome["prev"] != intent["prev"]
    assert response.results[0].ledger_entry == str(outcome["seq"])


def test_unchanged_absent_denied_and_plan_are_single_decisions(scenario: Scenario) -> None:
    client = scenario.client()
    grant = scenario.key_grant("service-a")
    client.request([grant])
    start = len(entries_of(scenario))
    client.request([grant])  # unchanged
    client.request([grant], dry_run=True, action="revoke")  # would-revoke
    foreign = {**grant, "grantee": "arn:aws:iam::333333333333:role/admin"}
    client.request([foreign])  # denied by the rule's roles
    client.request([grant], action="revoke")
    client.request([grant], action="revoke")  # absent
    new = entries_of(scenario)[start:]
    summary = [(e["type"], e["decision"]) for e in new]
    assert summary == [
        ("decision", "unchanged"),
        ("decision", "would-revoke"),
        ("decision", "denied"),
        ("intent", "revoked"),
        ("outcome", "revoked"),
        ("decision", "absent"),
    ]
    denied = new[2]
    assert denied["rule_id"] == "artifact-decrypt"
    assert "principal" in denied["reason"]
    assert new[0]["policy_before"] == new[0]["policy_after"]


def test_refusals_are_recorded_without_secrets(scenario: Scenario) -> None:
    client = scenario.client()
    client.request([scenario.bucket_grant("service-a")])
    envelope = client.sent[-1]
    client.send_envelope(envelope)  # replay
    tampered = dict(
        envelope,
        signed=envelope["signed"].replace("333333333333:role/deploy", "444444444444:role/deploy"),
    )
    assert tampered["signed"] != envelope["signed"]
    client.send_envelope(tampered)
    refusals = [e for e in entries_of(scenario) if e["type"] == "refusal"]
    assert [r["reason"].split(":")[0] for r in refusals] == ["replayed", "bad-signature"]
    assert all(r["decision"] == "denied" for r in refusals)
    assert refusals[0]["caller"] == "ci-tooling"
    assert refusals[0]["authenticated"] is True  # replay: the signature was valid, the nonce was not
    assert refusals[1]["authenticated"] is False
    raw = "".join(e.body.decode() for e in scenario.ledger().ledger.entries())
    assert envelope["signature"] not in raw
    assert "SecretAccessKey" not in raw and "SessionToken" not in raw


def test_unreachable_target_is_recorded_as_failed(scenario: Scenario) -> None:
    iam = scenario.local.client("iam", "333333333333")
    grant = scenario.bucket_grant("service-a")
    # make the target account unbootstrapped by removing its broker role (strictness checks the role exists)
    from deploy_helper.local import strict_aws

    session = scenario.local.base_session()
    strict_aws.install(session, scenario.local)
    iam.delete_role(RoleName="deploy-helper-broker") if False else None
    tooling_iam = scenario.local.client("iam", "111111111111")
    tooling_iam.delete_role(RoleName="deploy-helper-broker")
    response = scenario.client(scenario.broker(session=session)).request([grant])
    assert response.results[0].decision == "failed"
    assert "bootstrap" in response.results[0].reason
    last = entries_of(scenario)[-1]
    assert (last["type"], last["decision"]) == ("decision", "failed")
    assert "not bootstrapped" in last["reason"]


# -- fail closed ---------------------------------------------------------------


def test_unwritable_ledger_changes_nothing(scenario: Scenario) -> None:
    session = scenario.local.base_session()
    table = scenario.config.ledger_table

    def refuse(params: dict[str, Any], **_: Any) -> None:
        tables = {params.get("TableName")} | {
            action.get("Put", {}).get("TableName") for action in params.get("TransactItems", [])
        }
        if table in tables:
            raise ClientError(
                {"Error": {"Code": "AccessDeniedException", "Message": "not authorized to perform dynamodb:PutItem"}},
                "PutItem",
            )

    session.events.register("before-parameter-build.dynamodb.PutItem", refuse)
    session.events.register("before-parameter-build.dynamodb.TransactWriteItems", refuse)
    before = scenario.snapshot()
    response = scenario.client(scenario.broker(session=session)).request(scenario.seed_grants())
    assert response.ok  # authenticated and authorized ...
    assert {r.decision for r in response.results} == {"failed"}  # ... but nothing applied
    assert all("ledger" in r.reason and "no change was made" in r.reason for r in response.results)
    assert scenario.snapshot() == before
    assert entries_of(scenario) == []


# -- tampering -------------------------------------------------------------------


@pytest.fixture
def populated(scenario: Scenario) -> Scenario:
    client = scenario.client()
    client.request(scenario.seed_grants())
    client.request([scenario.bucket_grant("service-b")], action="revoke")
    assert scenario.checkpoint()["checkpoint"] == 1  # the checkpointer, fed by the table's stream
    result = run_cli(scenario, "ledger", "verify", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["whole"] is True
    return scenario


def _raw(sc: Scenario) -> Any:
    return sc.local.client("dynamodb", "123456789012")


def _item(sc: Scenario, seq: int) -> dict[str, Any]:
    key = {"ledger": {"S": "main"}, "seq": {"N": str(seq)}}
    return dict(_raw(sc).get_item(TableName=sc.config.ledger_table, Key=key)["Item"])


def _verify(sc: Scenario) -> tuple[int, dict[str, Any]]:
    result = run_cli(sc, "ledger", "verify", "--json")
    return result.exit_code, json.loads(result.output)


def test_deleted_entry_is_named(populated: Scenario) -> None:
    _raw(populated).delete_item(
        TableName=populated.config.ledger_table, Key={"ledger": {"S": "main"}, "seq": {"N": "5"}}
    )
    code, report = _verify(populated)
    assert code == 1
    assert report["first_broken_entry"] == 5
    assert "entry 5 is missing" in report["problems"][0]


def test_changed_field_is_named(populated: Scenario) -> None:
    item = _item(populated, 4)
    body = json.loads(item["body"]["S"])
    body["principal"] = "arn:aws:iam::333333333333:role/admin"
    item["body"] = {"S": json.dumps(body)}
    _raw(populated).put_item(TableName=populated.config.ledger_table, Item=item)
    code, report = _verify(populated)
    assert code == 1
    assert report["first_broken_entry"] == 4
    assert "altered" in report["problems"][0]


def test_changed_field_with_recomputed_hash_is_caught_by_the_chain(populated: Scenario) -> None:
    import rfc8785

    from deploy_helper.ledger.store import entry_hash

    item = _item(populated, 3)
    body = json.loads(item["body"]["S"])
    body["decision"] = "denied"
    raw = rfc8785.dumps(body)
    item["body"], item["hash"] = {"S": raw.decode()}, {"S": entry_hash(raw)}
    _raw(populated).put_item(TableName=populated.config.ledger_table, Item=item)
    code, report = _verify(populated)
    assert code == 1
    assert report["first_broken_entry"] == 4
    assert "does not chain to entry 3" in report["problems"][0]


def test_reordered_entries_are_named(populated: Scenario) -> None:
    a, b = _item(populated, 6), _item(populated, 7)
    a_body, b_body = dict(a), dict(b)
    a_body["body"], a_body["hash"], b_body["body"], b_body["hash"] = (
        b["body"],
        b["hash"],
        a["body"],
        a["hash"],
    )
    _raw(populated).put_item(TableName=populated.config.ledger_table, Item=a_body)
    _raw(populated).put_item(TableName=populated.config.ledger_table, Item=b_body)
    code, report = _verify(populated)
    assert code == 1
    assert report["first_broken_entry"] == 6
    assert "reordered" in report["problems"][0]


def test_truncated_tail_after_checkpoint_is_named(populated: Scenario) -> None:
    size = populated.ledger().ledger.head()[0]
    for seq in (size, size - 1):
        _raw(populated).delete_item(
            TableName=populated.config.ledger_table,
            Key={"ledger": {"S": "main"}, "seq": {"N": str(seq)}},
        )
    code, report = _verify(populated)
    assert code == 1
    assert report["first_broken_entry"] is None  # the chain itself is intact ...
    assert "truncated" in report["problems"][0]  # ... but the checkpoint proves entries are gone
    assert f"covers {size} entries" in report["problems"][0]


def _notes(sc: Scenario) -> tuple[Any, str, list[str]]:
    s3 = sc.local.client("s3", "123456789012")
    bucket = str(sc.config.checkpoint_bucket)
    names = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="checkpoints/main/note/")["Contents"])
    return s3, bucket, names


def test_forged_checkpoint_signature_is_named(populated: Scenario) -> None:
    s3, bucket, names = _notes(populated)
    raw = s3.get_object(Bucket=bucket, Key=names[-1])["Body"].read()
    text, _, _signature = raw.rpartition(b" ")
    s3.put_object(Bucket=bucket, Key=names[-1], Body=text + b" " + base64.b64encode(b"\x01" * 68) + b"\n")
    code, report = _verify(populated)
    assert code == 1
    assert any(names[-1] in p and "overwritten: 2 versions" in p for p in report["problems"])
    assert any(names[-1] in p and "forged" in p for p in report["problems"])


def test_overwritten_checkpoint_version_is_named_even_if_validly_signed(populated: Scenario) -> None:
    """Someone holding the key re-signs checkpoint 1 over different contents: the first version stays."""
    from deploy_helper.ledger import note

    s3, bucket, names = _notes(populated)
    original = note.parse(s3.get_object(Bucket=bucket, Key=names[0])["Body"].read())
    handle = populated.ledger()
    assert handle.checkpointer is not None and handle.public_key is not None
    forged = note.CheckpointNote(original.note.origin, 3, original.note.root, original.note.extensions)
    s3.put_object(
        Bucket=bucket,
        Key=names[0],
        Body=note.sign(forged, original.note.origin, handle.checkpointer.signer, handle.public_key[1]),
    )
    code, report = _verify(populated)
    assert code == 1
    assert any("overwritten: 2 versions" in p for p in report["problems"])
    assert any(f"replaces a checkpoint of {original.note.size} entries with one of 3" in p for p in report["problems"])


def test_deleted_checkpoint_version_is_named(populated: Scenario) -> None:
    populated.checkpoint()
    populated.checkpoint()
    s3, bucket, names = _notes(populated)
    assert len(names) == 3
    s3.delete_object(Bucket=bucket, Key=names[1])  # a delete marker hides checkpoint 2 from plain reads
    code, report = _verify(populated)
    assert code == 1
    assert any(names[1] in p and "was deleted (a delete marker" in p for p in report["problems"])
    # A version removed outright (Object Lock refuses this in AWS during retention) leaves a gap.
    versions = s3.list_object_versions(Bucket=bucket, Prefix=names[1])
    for version in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
        s3.delete_object(Bucket=bucket, Key=names[1], VersionId=version["VersionId"])
    code, report = _verify(populated)
    assert code == 1
    assert "checkpoint 2 is missing: a gap in the checkpoint sequence" in report["problems"]


def test_stale_heartbeat_is_named(populated: Scenario) -> None:
    import time

    populated.checkpoint(clock=lambda: time.time() - 3 * 3600)  # the last checkpoint, three hours ago
    code, report = _verify(populated)
    assert code == 1
    assert any("checkpoint (2" in p and "more than the heartbeat allows (2100 s)" in p for p in report["problems"])
    result = run_cli(populated, "ledger", "verify", "--json", "--max-age", str(4 * 3600))
    assert result.exit_code == 0, result.output


def test_malformed_objects_are_reported_and_crash_nothing(populated: Scenario) -> None:
    s3, bucket, _ = _notes(populated)
    s3.put_object(Bucket=bucket, Key="checkpoints/main/note/000000000007", Body=b"\xff\x00 not a note")
    s3.put_object(Bucket=bucket, Key="checkpoints/main/stray.txt", Body=b"hello")
    s3.put_object(Bucket=bucket, Key="checkpoints/main/000000000003-x.json", Body=b"{not json")
    assert populated.checkpoint()["checkpoint"] == 2  # the checkpointer goes on
    code, report = _verify(populated)
    assert code == 1
    problems = " | ".join(report["problems"])
    assert "note/000000000007 (version" in problems and "is malformed: the note is not UTF-8" in problems
    assert "stray.txt is not a checkpoint" in problems
    assert "000000000003-x.json (version" in problems and "not a JSON checkpoint" in problems
    assert report["checkpoints_verified"] == 2


def test_overwritten_entry_is_seen_in_the_stream_and_named(populated: Scenario, caplog: Any) -> None:
    import logging

    item = _item(populated, 3)
    before, original = item["hash"]["S"], item["body"]["S"]
    body = json.loads(item["body"]["S"])
    body["decision"] = "denied"
    item["body"] = {"S": json.dumps(body)}
    _raw(populated).put_item(TableName=populated.config.ledger_table, Item=item)
    with caplog.at_level(logging.WARNING, logger="deploy_helper.checkpointer"):
        assert populated.checkpoint()["changes"] == 1
    assert [r.getMessage() for r in caplog.records] == ["ledger entry changed"]
    assert caplog.records[0].seq == 3 and caplog.records[0].change == "MODIFY"  # type: ignore[attr-defined]
    code, report = _verify(populated)
    assert code == 1
    evidence = "checkpoints/main/evidence/000000000002"
    assert any(
        p.startswith("entry 3 was overwritten in the table (MODIFY")
        and f"its hash was {before}" in p
        and p.endswith(f"the entry as it was is kept in {evidence}")
        for p in report["problems"]
    )
    s3, bucket, _ = _notes(populated)
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
    code, report = _verify(populated)
    assert any(evidence in p and "was deleted (a delete marker" in p for p in report["problems"])


def test_open_intent_is_reported_and_a_rerun_settles_it(scenario: Scenario) -> None:
    session = scenario.local.base_session()

    def crash(**_: Any) -> None:
        raise RuntimeError("the process died here")

    session.events.register("before-call.s3.PutBucketPolicy", crash)
    grant = scenario.bucket_grant("service-a")
    response = scenario.client(scenario.broker(session=session)).request([grant])
    assert response.results[0].decision == "failed"
    # simulate a crash that lost the outcome too: append an intent by hand, as the broker would
    handle = scenario.ledger()
    intents = [e for e in entries_of(scenario) if e["type"] == "intent"]
    assert intents
    stray = {k: v for k, v in intents[-1].items() if k not in ("seq", "prev")}
    handle.ledger.append(stray)
    code, report = _verify(scenario)
    assert code == 1 and report["problems"] == []
    assert report["open_intents"] == [handle.ledger.head()[0]]
    again = scenario.client().request([grant])
    assert again.results[0].decision == "applied"
    code, report = _verify(scenario)
    assert code == 0, report


# -- concurrency -----------------------------------------------------------------


def test_twenty_concurrent_writers_make_one_chain(scenario: Scenario) -> None:
    table = scenario.config.ledger_table
    assert table is not None
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def writer(n: int) -> None:
        ledger = DynamoLedger(scenario.local.client("dynamodb", "123456789012"), table)
        try:
            barrier.wait()
            for i in range(50):
                ledger.append({"type": "decision", "writer": n, "i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ledger = scenario.ledger().ledger
    report = verify_ledger(ledger)
    assert report.problems == [] and report.size == 1000
    seen = {(e.entry["writer"], e.entry["i"]) for e in ledger.entries()}
    assert len(seen) == 1000


# -- auditor CLI -------------------------------------------------------------------


def test_list_show_export_active(populated: Scenario, tmp_path: Any) -> None:
    result = run_cli(populated, "ledger", "list", "--json", "--account", "444444444444", "--decision", "revoked")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert rows and all(r["decision"] == "revoked" for r in rows)
    assert {r["grant"]["kind"] for r in rows} == {"bucket-access"}
    shown = run_cli(populated, "ledger", "show", str(rows[0]["seq"]))
    assert json.loads(shown.output)["entry"]["seq"] == rows[0]["seq"]
    out = tmp_path / "ledger.csv"
    exported = run_cli(
        populated,
        "ledger",
        "export",
        "--format",
        "csv",
        "--output",
        str(out),
        "--caller",
        "ci-tooling",
    )
    assert exported.exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("id,time,type,decision") and len(lines) > 5
    jsonl = run_cli(populated, "ledger", "export", "--format", "jsonl", "--resource", "token-authorizer")
    assert all(json.loads(line)["grant"]["kind"] == "lambda-invoke" for line in jsonl.output.splitlines())
    active = json.loads(run_cli(populated, "ledger", "active", "--json").output)
    assert len(active) == 5  # six applied, service-b's bucket read revoked
    assert not any(
        g["kind"] == "bucket-access" and g["principal"].startswith("arn:aws:iam::444444444444") for g in active
    )
    human = run_cli(populated, "ledger", "list", "--since", "2000-01-01")
    assert human.exit_code == 0 and "ledger entries" in human.output


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
    from deploy_helper import checkpointer, handler

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
    _, _, names = _notes(scenario)
    assert len(names) == 2
    code, report = _verify(scenario)
    assert code == 0  # the refusal after the last checkpoint is covered by the next one
    assert report["checkpoints_verified"] == 2 and report["problems"] == []


# -- proofs, kept checkpoints, bundles, migration -------------------------------------


def _public_pem(sc: Scenario, tmp_path: Any) -> str:
    key = sc.ledger().public_key
    assert key is not None
    path = tmp_path / "checkpoint-public.pem"
    path.write_text(key[1])
    return str(path)


def test_prove_prints_an_inclusion_proof_checked_offline(populated: Scenario, tmp_path: Any) -> None:
    result = run_cli(populated, "ledger", "prove", "5", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["verified"] is True and document["entry"] == 5
    assert json.loads(document["body"])["seq"] == 5
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(document))
    pem = _public_pem(populated, tmp_path)
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
        _raw(populated).put_item(
            TableName=populated.config.ledger_table, Item={**_item(populated, seq), "x": {"S": "1"}}
        )
    assert populated.checkpoint() == {"ok": True, "checkpoint": 4, "size": size, "changes": size}
    code, report = _verify(populated)
    named = {int(p.split()[1]) for p in report["problems"] if "was overwritten in the table (MODIFY" in p}
    assert code == 1 and named == set(range(1, size + 1))


def test_checkpoint_command_writes_the_next_checkpoint(populated: Scenario) -> None:
    result = run_cli(populated, "ledger", "checkpoint", "--json")
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)
    assert written["checkpoint"] == 2 and written["size"] == len(entries_of(populated))
    assert "\nprevious " in written["note"] and "\n\n\u2014 deploy-helper.local/ledger/main " in written["note"]
    code, report = _verify(populated)
    assert code == 0 and report["checkpoints_verified"] == 2


def test_verify_since_a_kept_checkpoint(populated: Scenario, tmp_path: Any) -> None:
    import rfc8785

    from deploy_helper.ledger.store import GENESIS, entry_hash

    s3, bucket, names = _notes(populated)
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
        _raw(populated).put_item(TableName=populated.config.ledger_table, Item=item)
    code, report = _verify(populated)
    assert code == 1 and report["first_broken_entry"] is None  # the chain alone would not show it
    result = run_cli(populated, "ledger", "verify", "--json", "--since", str(kept))
    problems = json.loads(result.output)["problems"]
    assert any("is not consistent with your checkpoint 1" in p for p in problems)
    assert any(p.startswith("entries 1..") and "differ from what checkpoint 1 signed" in p for p in problems)


NO_AWS = {
    "AWS_ACCESS_KEY_ID": None,
    "AWS_SECRET_ACCESS_KEY": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_PROFILE": None,
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens: any AWS call would fail
    "DEPLOY_HELPER_LEDGER_TABLE": None,
    "DEPLOY_HELPER_CHECKPOINT_BUCKET": None,
    "DEPLOY_HELPER_CHECKPOINT_KEY": None,
}


def test_bundle_verifies_offline_with_aws_credentials_unset(populated: Scenario, tmp_path: Any) -> None:
    out = tmp_path / "bundle"
    result = run_cli(populated, "ledger", "bundle", "--out", str(out))
    assert result.exit_code == 0, result.output
    pem = _public_pem(populated, tmp_path)
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


def test_migration_adds_the_first_independent_checkpoint_without_rewriting(scenario: Scenario) -> None:
    import rfc8785

    from deploy_helper.ledger.checkpoints import checkpoint_input
    from deploy_helper.ledger.entries import now_iso
    from deploy_helper.signing import Ed25519Signer, b64url

    scenario.client().request(scenario.seed_grants())
    handle = scenario.ledger()
    size, head = handle.ledger.head()
    before = [(e.seq, e.body) for e in handle.ledger.entries()]
    # A checkpoint as the broker wrote them before the checkpointer existed (legacy JSON).
    body = rfc8785.dumps(
        {"ledger": "main", "size": size, "head": head, "time": now_iso(0), "key_id": "old", "previous": "0" * 64}
    )
    signer = Ed25519Signer.from_file("old", scenario.workdir / "checkpoint-key.pem")
    legacy = {"checkpoint": json.loads(body), "signature": b64url(signer.sign(checkpoint_input(body)))}
    s3 = scenario.local.client("s3", "123456789012")
    name = f"checkpoints/main/{size:012d}-19700101T000000.000Z.json"
    s3.put_object(Bucket=str(scenario.config.checkpoint_bucket), Key=name, Body=json.dumps(legacy).encode())
    scenario.checkpoint()
    assert [(e.seq, e.body) for e in handle.ledger.entries()] == before  # no entry rewritten
    _, bucket, names = _notes(scenario)
    first = s3.get_object(Bucket=bucket, Key=names[0])["Body"].read().decode()
    assert f"previous legacy {hashlib.sha256(body).hexdigest()}" in first
    code, report = _verify(scenario)
    assert code == 0, report
    assert report["checkpoints_verified"] == 2
    kinds = " ".join(report["explanations"])
    assert "1 legacy checkpoint(s)" in kinds and "not against the broker's own role" in kinds
    assert "1 independent checkpoint(s)" in kinds and "RFC 9162 Merkle root" in kinds


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
        _raw(scenario).transact_write_items(TransactItems=[put(2), put(1)])  # entry 1 exists: all or nothing
    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert stream.records() == []
    assert ledger.head()[0] == 1
    _raw(scenario).put_item(TableName=table, Item=_item(scenario, 1))  # changes nothing: no record, as in AWS
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
        Handler="deploy_helper.checkpointer.lambda_handler",
        Code={"ZipFile": seed._lambda_zip()},
    )
    stream_arn = _raw(scenario).describe_table(TableName=table)["Table"]["LatestStreamArn"]
    lam.create_event_source_mapping(EventSourceArn=stream_arn, FunctionName="checkpointer", StartingPosition="LATEST")
    response = scenario.client().request([scenario.bucket_grant("service-a")])
    assert response.results[0].decision == "applied"  # appends succeed ...
    from deploy_helper.local.stream import LedgerStream

    records = LedgerStream(scenario.local, table).records()  # ... and the stream still holds them
    assert [int(r["dynamodb"]["Keys"]["seq"]["N"]) for r in records] == [e["seq"] for e in entries_of(scenario)]


def test_a_forged_stream_event_cannot_put_entries_into_a_checkpoint(populated: Scenario) -> None:
    """Whoever can invoke the checkpointer (an account administrator) can cause a checkpoint, not an entry."""
    from deploy_helper.checkpointer import handle

    handle_ = populated.ledger()
    assert handle_.checkpointer is not None
    size = handle_.ledger.head()[0]
    fake = {"ledger": {"S": "main"}, "seq": {"N": str(size + 1)}}
    record = {"eventName": "INSERT", "dynamodb": {"Keys": fake, "NewImage": {**fake, "body": {"S": "{}"}}}}
    answer = handle({"Records": [record]}, handle_.checkpointer)
    assert (answer["size"], answer["changes"]) == (size, 0)  # entries come from the table, never the event
    code, report = _verify(populated)
    assert code == 0 and report["size"] == size and report["latest_checkpoint"]["size"] == size


def test_an_auditor_with_only_the_public_key_file_verifies(populated: Scenario, tmp_path: Any) -> None:
    pem = _public_pem(populated, tmp_path)
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
    assert len(_notes(populated)[2]) == 41
