"""Drift and reconcile, through the real CLI, against drift planted in the local AWS.

The seed grants are applied through the broker; then a target-account admin
(``local.client``: an admin of that account, not the broker) removes a permission,
widens a managed statement, plants a statement with the broker's prefix, revokes a
KMS grant and adds a foreign statement. ``drift`` must classify each exactly,
``reconcile --apply`` repair all but the foreign one, and a second ``drift`` find
every grant in force; the ledger records each repair as ``reconciled``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml
from click.testing import CliRunner

from deploy_helper.audit.drift import DriftChecker, LedgerView
from deploy_helper.audit.scheduled import stored_entries
from deploy_helper.cli import main
from deploy_helper.grants import REGISTRY
from deploy_helper.local import scenario as seed
from deploy_helper.local.server import LOCAL_REGION

if TYPE_CHECKING:
    from conftest import AwsCallLog

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario

PLANTED_SID = "DeployHelper0123456789abcdef01234567"
FOREIGN_LAMBDA_SID = "TeamAddedForServiceA"


def cli(args: list[str], sc: Scenario) -> Any:
    return CliRunner().invoke(main, args, env=sc.environ(), catch_exceptions=False)


def apply_seed(sc: Scenario) -> None:
    response = sc.client(sc.broker()).request(sc.seed_grants(), context={"pipeline": "seed"})
    assert response.ok and {r.decision for r in response.results} == {"applied"}, response


def gid(grant: dict[str, Any]) -> str:
    from deploy_helper.audit.drift import parse_spec

    spec = parse_spec(grant)
    return REGISTRY[spec.kind].grant_id(spec)


def plant_all(sc: Scenario) -> dict[str, str]:
    """Each kind of drift, made by each account's own admin; returns the ids to expect."""
    tooling, token = seed.ACCOUNTS["tooling"], seed.ACCOUNTS["token-service"]
    lam = sc.local.client("lambda", token)
    removed = gid(sc.authorizer_grant("service-a"))
    lam.remove_permission(FunctionName="token-authorizer", StatementId=removed)
    account_a = seed.ACCOUNTS["service-a"]
    lam.add_permission(
        FunctionName="token-authorizer",
        StatementId=FOREIGN_LAMBDA_SID,
        Action="lambda:InvokeFunction",
        Principal="apigateway.amazonaws.com",
        SourceArn=f"arn:aws:execute-api:{LOCAL_REGION}:{account_a}:{sc.api_ids['service-a']}/*",
    )
    s3 = sc.local.client("s3", tooling)
    policy = sc.bucket_policy()
    assert policy is not None
    widened = gid(sc.bucket_grant("service-a"))
    for statement in policy["Statement"]:
        if statement.get("Sid") == widened:
            statement["Action"] = "s3:*"  # wider: every S3 action
    policy["Statement"].append(
        {
            "Sid": PLANTED_SID,
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{seed.ACCOUNTS['service-b']}:root"},
            "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{sc.bucket}", f"arn:aws:s3:::{sc.bucket}/*"],
        }
    )
    s3.put_bucket_policy(Bucket=sc.bucket, Policy=json.dumps(policy))
    kms = sc.local.client("kms", tooling)
    revoked = gid(sc.key_grant("service-b"))
    (grant,) = [g for g in sc.key_grants() if g.get("Name") == revoked]
    kms.revoke_grant(KeyId=sc.key_arn, GrantId=grant["GrantId"])
    return {"missing-lambda": removed, "altered": widened, "unknown": PLANTED_SID, "missing-kms": revoked}


def by_status(report: dict[str, Any]) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for f in report["findings"]:
        out.setdefault(f["status"], set()).add((f["kind"], f["grant_id"]))
    return out


def test_drift_classifies_each_planted_drift_and_reconcile_repairs_all_but_foreign(scenario: Scenario) -> None:
    apply_seed(scenario)
    first = cli(["drift", "--json"], scenario)
    assert first.exit_code == 0, first.output
    assert set(by_status(json.loads(first.stdout))) == {"in-force"}

    ids = plant_all(scenario)
    foreign_before = [s for s in scenario.bucket_policy()["Statement"] if s["Sid"] == seed.FOREIGN_SID]
    result = cli(["drift", "--json"], scenario)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    found = by_status(report)
    assert found["missing"] == {("lambda-invoke", ids["missing-lambda"]), ("kms-grant", ids["missing-kms"])}
    assert found["altered"] == {("bucket-access", ids["altered"])}
    assert found["unknown-managed"] == {("bucket-access", PLANTED_SID)}
    assert found["foreign"] == {("lambda-invoke", FOREIGN_LAMBDA_SID)}
    assert len(found["in-force"]) == 3
    assert report["reads"] == 3  # one read per resource
    altered = next(f for f in report["findings"] if f["status"] == "altered")
    assert altered["live"]["Action"] == "s3:*"

    plan = cli(["reconcile", "--plan", "--json"], scenario)
    assert plan.exit_code == 0, plan.output
    assert {r["decision"] for r in json.loads(plan.stdout)} == {"would-reconcile"}
    assert by_status(json.loads(cli(["drift", "--json"], scenario).stdout)) == found  # the plan changed nothing

    repaired = cli(["reconcile", "--apply", "--json"], scenario)
    assert repaired.exit_code == 0, repaired.output
    results = json.loads(repaired.stdout)
    assert sorted((r["drift"], r["grant_id"]) for r in results) == sorted(
        [
            ("missing", ids["missing-lambda"]),
            ("missing", ids["missing-kms"]),
            ("altered", ids["altered"]),
            ("unknown-managed", PLANTED_SID),
        ]
    )
    assert {r["decision"] for r in results} == {"reconciled"}

    second = cli(["drift", "--json"], scenario)
    assert second.exit_code == 0, second.output
    after = by_status(json.loads(second.stdout))
    assert set(after) == {"in-force", "foreign"}
    assert len(after["in-force"]) == 6
    # Read back: the foreign statements were left exactly as they were.
    policy = scenario.function_policy()
    assert policy is not None
    assert FOREIGN_LAMBDA_SID in {s["Sid"] for s in policy["Statement"]}
    assert [s for s in scenario.bucket_policy()["Statement"] if s["Sid"] == seed.FOREIGN_SID] == foreign_before
    assert PLANTED_SID not in {s["Sid"] for s in scenario.bucket_policy()["Statement"]}
    # The ledger shows each repair, naming the drift it repaired.
    entries = [e.entry for e in scenario.ledger().ledger.entries()]
    outcomes = [e for e in entries if e["decision"] == "reconciled" and e["type"] == "outcome"]
    assert sorted(e["grant"]["grant_id"] for e in outcomes) == sorted(ids.values())
    reasons = {e["grant"]["grant_id"]: e["reason"] for e in outcomes}
    assert "missing" in reasons[ids["missing-lambda"]] and "missing" in reasons[ids["missing-kms"]]
    assert "altered" in reasons[ids["altered"]] and "unknown-managed" in reasons[PLANTED_SID]
    assert all(e["caller"] == "deploy-helper:reconcile" and e["authenticated"] == "internal" for e in outcomes)
    # The owners of the restored grants did not change.
    active = {g["grant_id"]: g for g in json.loads(cli(["ledger", "active", "--json"], scenario).stdout)}
    assert active[ids["missing-lambda"]]["owners"] == ["pipeline:ci-tooling/seed"]
    verify = cli(["ledger", "verify"], scenario)
    assert verify.exit_code == 0, verify.output


def test_a_grant_the_rules_no_longer_allow_is_reported_not_restored(scenario: Scenario) -> None:
    apply_seed(scenario)
    grant = scenario.authorizer_grant("service-a")
    lam = scenario.local.client("lambda", seed.ACCOUNTS["token-service"])
    lam.remove_permission(FunctionName="token-authorizer", StatementId=gid(grant))
    rules_file = scenario.policies_dir / "rules.yaml"
    rules = yaml.safe_load(rules_file.read_text())
    invoke_rule = next(r for r in rules["rules"] if r["id"] == "authorizer-invoke")
    invoke_rule["principals"]["services"][0]["source_accounts"] = ["service-b"]
    rules_file.write_text(yaml.safe_dump(rules))
    before = scenario.snapshot()

    result = cli(["reconcile", "--apply", "--json"], scenario)
    assert result.exit_code == 1
    (outcome,) = json.loads(result.stdout)
    assert outcome["decision"] == "denied" and outcome["grant_id"] == gid(grant)
    assert "authorizer-invoke" in outcome["reason"]
    assert scenario.snapshot() == before  # nothing restored, nothing else touched
    entries = [e.entry for e in scenario.ledger().ledger.entries()]
    denied = [e for e in entries if e["decision"] == "denied" and e.get("action") == "reconcile"]
    assert len(denied) == 1 and denied[0]["rule_id"] == "authorizer-invoke"
    assert cli(["drift", "--json"], scenario).exit_code == 1  # still missing: reported, not hidden


def test_drift_only_reads_and_reads_each_resource_once(
    scenario: Scenario, strict_broker: Broker, aws_calls: AwsCallLog
) -> None:
    apply_seed(scenario)
    plant_all(scenario)
    aws_calls.clear()
    checker = DriftChecker(strict_broker.sessions, strict_broker.references, clock=strict_broker.clock)
    report = checker.check(strict_broker.ledger)  # as the CLI and the scheduled check run it
    assert not report.clean and not report.errors
    assert report.counts()["missing"] == 2 and report.reads == 3
    operations = aws_calls.operations()
    reads = [op for op in operations if op != "sts.AssumeRole"]
    assert sorted(reads) == ["kms.ListGrants", "lambda.GetPolicy", "s3.GetBucketPolicy"]
    assert not aws_calls.failures()


def test_drift_filters_and_table(scenario: Scenario) -> None:
    apply_seed(scenario)
    plant_all(scenario)
    only_kms = json.loads(cli(["drift", "--kind", "kms-grant", "--json"], scenario).stdout)
    assert {f["kind"] for f in only_kms["findings"]} == {"kms-grant"} and only_kms["reads"] == 1
    only_token = json.loads(cli(["drift", "--account", seed.ACCOUNTS["token-service"], "--json"], scenario).stdout)
    assert {f["account"] for f in only_token["findings"]} == {seed.ACCOUNTS["token-service"]}
    bucket = json.loads(cli(["drift", "--resource", scenario.bucket, "--json"], scenario).stdout)
    assert {f["resource"] for f in bucket["findings"]} == {f"arn:aws:s3:::{scenario.bucket}"}
    shown = cli(["drift"], scenario)
    assert shown.exit_code == 1
    assert "unknown-managed" in shown.output and "DRIFT" in shown.output
    assert "[1/2] account" in shown.stderr and "[1/2] account" not in shown.stdout


def test_scheduled_drift_check_keeps_the_report_for_drift_last_and_publishes_metrics(scenario: Scenario) -> None:
    from deploy_helper import handler

    apply_seed(scenario)
    plant_all(scenario)
    handler.set_broker(scenario.broker())
    try:
        answer = handler.lambda_handler({"deploy_helper": "drift-check"}, None)
    finally:
        handler.set_broker(None)
    assert answer["ok"] and not answer["clean"], answer
    assert answer["counts"]["missing"] == 2 and answer["counts"]["unknown-managed"] == 1
    last = cli(["drift", "--last", "--json"], scenario)
    assert last.exit_code == 1
    kept = json.loads(last.stdout)
    assert by_status(kept)["unknown-managed"] == {("bucket-access", PLANTED_SID)}
    page = scenario.workdir / "report.html"
    made = cli(["report", "--html", str(page), "--drift", "last"], scenario)
    assert made.exit_code == 0, made.output
    assert "unknown-managed: 1" in page.read_text() and "missing: 2" in page.read_text()
    cloudwatch = scenario.local.client("cloudwatch", seed.ACCOUNTS["broker"])
    metrics = cloudwatch.list_metrics(Namespace="DeployHelper/Drift")["Metrics"]
    assert {"Missing", "Altered", "UnknownManaged", "Foreign", "InForce", "ReadErrors"} <= {
        m["MetricName"] for m in metrics
    }


def test_a_condition_removed_and_a_kms_grant_remade_wider_are_altered_and_restored(scenario: Scenario) -> None:
    apply_seed(scenario)
    token, tooling = seed.ACCOUNTS["token-service"], seed.ACCOUNTS["tooling"]
    lam = scenario.local.client("lambda", token)
    sid = gid(scenario.authorizer_grant("service-b"))
    lam.remove_permission(FunctionName="token-authorizer", StatementId=sid)
    lam.add_permission(  # same Sid, SourceArn condition gone: any API in the account may invoke
        FunctionName="token-authorizer",
        StatementId=sid,
        Action="lambda:InvokeFunction",
        Principal="apigateway.amazonaws.com",
        SourceAccount=seed.ACCOUNTS["service-b"],
    )
    kms = scenario.local.client("kms", tooling)
    name = gid(scenario.key_grant("service-a"))
    (grant,) = [g for g in scenario.key_grants() if g.get("Name") == name]
    kms.revoke_grant(KeyId=scenario.key_arn, GrantId=grant["GrantId"])
    kms.create_grant(  # same name, an extra operation
        KeyId=scenario.key_arn,
        GranteePrincipal=scenario.deploy_roles["service-a"],
        Operations=["Decrypt", "DescribeKey", "Encrypt"],
        Name=name,
    )
    found = by_status(json.loads(cli(["drift", "--json"], scenario).stdout))
    assert found["altered"] == {("lambda-invoke", sid), ("kms-grant", name)}
    assert "unknown-managed" not in found and "missing" not in found

    assert cli(["reconcile", "--apply"], scenario).exit_code == 0
    assert set(by_status(json.loads(cli(["drift", "--json"], scenario).stdout))) == {"in-force"}
    (statement,) = [s for s in scenario.function_policy()["Statement"] if s["Sid"] == sid]
    assert "ArnLike" in statement["Condition"]
    copies = [g for g in scenario.key_grants() if g.get("Name") == name]
    assert [sorted(g["Operations"]) for g in copies] == [["Decrypt", "DescribeKey"]]


def test_reconcile_never_removes_a_grant_made_after_its_view_of_the_ledger(scenario: Scenario) -> None:
    """Under the resource's lease the ledger is read again: a grant made meanwhile is not 'unknown'."""
    from deploy_helper.audit.repair import Repairer

    apply_seed(scenario)
    broker = scenario.broker()
    stale = LedgerView.of(stored_entries(broker.ledger))
    newer = {**scenario.key_grant("service-a"), "operations": ["Decrypt"]}
    assert scenario.client(broker).request([newer], context={"pipeline": "late"}).ok
    results = Repairer(broker).reconcile(stale, apply=True)
    assert results == []  # nothing drifted: the late grant is explained by the ledger as it is now
    assert gid(newer) in {g.get("Name") for g in scenario.key_grants()}


def test_terminal_markup_in_a_planted_statement_is_printed_literally(scenario: Scenario) -> None:
    apply_seed(scenario)
    policy = scenario.bucket_policy()
    assert policy is not None
    hostile = "arn:aws:iam::444444444444:role/\x1b[2J\x1b]8;;https://evil.example\x07x\u202e"
    policy["Statement"].append({"Sid": PLANTED_SID, "Effect": "Allow", "Principal": {"AWS": hostile}, "Action": "s3:*"})
    scenario.local.client("s3", seed.ACCOUNTS["tooling"]).put_bucket_policy(
        Bucket=scenario.bucket, Policy=json.dumps(policy)
    )
    shown = cli(["drift"], scenario)
    assert shown.exit_code == 1 and "unknown-managed" in shown.stdout
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout and "\x07" not in shown.stdout
    as_json = json.loads(cli(["drift", "--json"], scenario).stdout)
    (planted,) = [f for f in as_json["findings"] if f["status"] == "unknown-managed"]
    assert planted["live"]["Principal"]["AWS"] == hostile  # exact in JSON, escaped when printed


def test_a_shared_statement_widened_by_hand_is_altered_and_written_again(scenario: Scenario) -> None:
    """Grants merged into one shared statement (as compaction makes them); an admin adds a principal to it."""
    from deploy_helper.audit.drift import parse_spec
    from deploy_helper.grants.bucket_access import BucketAccess

    apply_seed(scenario)
    kind = BucketAccess()
    specs = [parse_spec(scenario.bucket_grant(s)) for s in seed.SERVICE_ACCOUNTS]
    roles = [scenario.deploy_roles[s] for s in seed.SERVICE_ACCOUNTS]
    policy = scenario.bucket_policy()
    assert policy is not None
    own = {kind.grant_id(s) for s in specs}
    merged = kind.shared_statement(specs[0], roles)
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] not in own] + [merged]
    s3 = scenario.local.client("s3", seed.ACCOUNTS["tooling"])
    s3.put_bucket_policy(Bucket=scenario.bucket, Policy=json.dumps(policy))
    assert set(by_status(json.loads(cli(["drift", "--json"], scenario).stdout))) == {"in-force"}

    intruder = "arn:aws:iam::444444444444:role/intruder"
    widened = kind.shared_statement(specs[0], [*roles, intruder])
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != merged["Sid"]] + [widened]
    s3.put_bucket_policy(Bucket=scenario.bucket, Policy=json.dumps(policy))
    report = json.loads(cli(["drift", "--json"], scenario).stdout)
    assert by_status(report)["altered"] == {("bucket-access", kind.grant_id(s)) for s in specs}

    repaired = cli(["reconcile", "--apply", "--json"], scenario)
    assert repaired.exit_code == 0, repaired.output
    assert {r["decision"] for r in json.loads(repaired.stdout)} == {"reconciled"}
    assert set(by_status(json.loads(cli(["drift", "--json"], scenario).stdout))) == {"in-force"}
    live = json.dumps(scenario.bucket_policy())
    assert intruder not in live and all(role in live for role in roles)
