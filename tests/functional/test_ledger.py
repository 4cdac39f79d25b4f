"""The grant ledger: entries per path, tamper detection, fail-closed writes, concurrency."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

from _ledger import entries_of, raw_table, run_cli, stored_item, verify_cli
from botocore.exceptions import ClientError

from deploy_helper.ledger.store import DynamoLedger
from deploy_helper.ledger.verify import verify_ledger
from deploy_helper.trust.signing import seal

if TYPE_CHECKING:
    from deploy_helper.local.scenario import Scenario


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
    assert client.send_envelope(envelope).ok  # the same envelope again: its first answer, no entry
    nonce = json.loads(envelope["signed"])["nonce"]
    replay = seal(
        scenario.signer,
        caller="ci-tooling",
        audience="deploy-helper:local",
        payload=client.payload([scenario.bucket_grant("service-a")], action="revoke"),
        nonce=nonce,
    )
    client.send_envelope(replay)  # the nonce again, with another payload
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


def test_deleted_entry_is_named(populated: Scenario) -> None:
    raw_table(populated).delete_item(
        TableName=populated.config.ledger_table, Key={"ledger": {"S": "main"}, "seq": {"N": "5"}}
    )
    code, report = verify_cli(populated)
    assert code == 1
    assert report["first_broken_entry"] == 5
    assert "entry 5 is missing" in report["problems"][0]


def test_changed_field_is_named(populated: Scenario) -> None:
    item = stored_item(populated, 4)
    body = json.loads(item["body"]["S"])
    body["principal"] = "arn:aws:iam::333333333333:role/admin"
    item["body"] = {"S": json.dumps(body)}
    raw_table(populated).put_item(TableName=populated.config.ledger_table, Item=item)
    code, report = verify_cli(populated)
    assert code == 1
    assert report["first_broken_entry"] == 4
    assert "altered" in report["problems"][0]


def test_changed_field_with_recomputed_hash_is_caught_by_the_chain(populated: Scenario) -> None:
    import rfc8785

    from deploy_helper.ledger.store import entry_hash

    item = stored_item(populated, 3)
    body = json.loads(item["body"]["S"])
    body["decision"] = "denied"
    raw = rfc8785.dumps(body)
    item["body"], item["hash"] = {"S": raw.decode()}, {"S": entry_hash(raw)}
    raw_table(populated).put_item(TableName=populated.config.ledger_table, Item=item)
    code, report = verify_cli(populated)
    assert code == 1
    assert report["first_broken_entry"] == 4
    assert "does not chain to entry 3" in report["problems"][0]


def test_reordered_entries_are_named(populated: Scenario) -> None:
    a, b = stored_item(populated, 6), stored_item(populated, 7)
    a_body, b_body = dict(a), dict(b)
    a_body["body"], a_body["hash"], b_body["body"], b_body["hash"] = (
        b["body"],
        b["hash"],
        a["body"],
        a["hash"],
    )
    raw_table(populated).put_item(TableName=populated.config.ledger_table, Item=a_body)
    raw_table(populated).put_item(TableName=populated.config.ledger_table, Item=b_body)
    code, report = verify_cli(populated)
    assert code == 1
    assert report["first_broken_entry"] == 6
    assert "reordered" in report["problems"][0]


def test_truncated_tail_after_checkpoint_is_named(populated: Scenario) -> None:
    size = populated.ledger().ledger.head()[0]
    for seq in (size, size - 1):
        raw_table(populated).delete_item(
            TableName=populated.config.ledger_table,
            Key={"ledger": {"S": "main"}, "seq": {"N": str(seq)}},
        )
    code, report = verify_cli(populated)
    assert code == 1
    assert report["first_broken_entry"] is None  # the chain itself is intact ...
    assert "truncated" in report["problems"][0]  # ... but the checkpoint proves entries are gone
    assert f"covers {size} entries" in report["problems"][0]


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
    code, report = verify_cli(scenario)
    assert code == 1 and report["problems"] == []
    assert report["open_intents"] == [handle.ledger.head()[0]]
    again = scenario.client().request([grant])
    assert again.results[0].decision == "applied"
    code, report = verify_cli(scenario)
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
