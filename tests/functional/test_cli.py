"""The CLI as users run it: keys, policies check, request (plan/apply/revoke), KMS signing, demo."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml
from click.testing import CliRunner

from deploy_helper.cli import main
from deploy_helper.trust.signing import KmsSigner, public_pem_from_der

if TYPE_CHECKING:
    from pathlib import Path

    from deploy_helper.local.scenario import Scenario


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def write_grants(sc: Scenario, path: Path, grants: list[dict[str, Any]], owner: str | None = None) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "caller": "ci-tooling",
                "audience": "deploy-helper:local",
                "context": {"pipeline": "${env:PIPELINE}"},
                **({"owner": owner} if owner else {}),
                "grants": grants,
            }
        )
    )
    return path


def test_help_teaches() -> None:
    result = invoke(["--help"])
    assert result.exit_code == 0
    for command in ("demo", "request", "ledger", "keys", "policies"):
        assert command in result.output
    assert "Examples" in invoke(["request", "--help"]).output


def test_keys_generate_then_policies_check(tmp_path: Path) -> None:
    result = invoke(
        [
            "keys",
            "generate",
            "--caller",
            "ci-x",
            "--key-id",
            "ci-x-1",
            "--account",
            "111111111111",
            "--out-dir",
            str(tmp_path),
            "--json",
        ]
    )
    assert result.exit_code == 0
    out = json.loads(result.output)
    assert (tmp_path / "ci-x-1.pem").stat().st_mode & 0o777 == 0o600
    block = out["register"]["ci-x"]
    assert block["keys"][0]["algorithm"] == "ed25519"
    again = invoke(["keys", "generate", "--caller", "ci-x", "--key-id", "ci-x-1", "--out-dir", str(tmp_path)])
    assert again.exit_code != 0 and "exists" in again.output
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "callers.yaml").write_text(yaml.safe_dump({"version": 1, "callers": {"ci-x": block}}))
    (policies / "rules.yaml").write_text(
        yaml.safe_dump({"version": 1, "organization": {"accounts": {"tooling": "111111111111"}}, "rules": []})
    )
    ok = invoke(["policies", "check", str(policies)])
    assert ok.exit_code == 0, ok.output
    assert "1 caller(s), 1 key(s)" in ok.output


def test_policies_check_names_file_and_line(tmp_path: Path) -> None:
    policies = tmp_path / "p"
    policies.mkdir()
    (policies / "callers.yaml").write_text("version: 1\ncallers: {}\n")
    (policies / "rules.yaml").write_text(
        "version: 1\n"
        "organization:\n"
        "  accounts: {tooling: '111111111111'}\n"
        "rules:\n"
        "  - id: r1\n"
        "    callers: [ci-x]\n"
        "    kind: bucket-access\n"
        "    targets: ['arn:aws:s3:::b-*']\n"
        "    target_accounts: [tooling]\n"
        "    principals: {roles: ['arn:aws:iam::*:role/x'], role_accounts: [tooling]}\n"
        "    access: [admin]\n"
    )
    result = invoke(["policies", "check", str(policies)])
    assert result.exit_code == 1
    assert f"{policies / 'rules.yaml'}:11: rules.0.access.0" in result.output
    (policies / "rules.yaml").write_text((policies / "rules.yaml").read_text().replace("[admin]", "[read]"))
    result = invoke(["policies", "check", str(policies), "--json"])
    errors = json.loads(result.output)["errors"]
    assert result.exit_code == 1
    assert any(":6: rules.0.callers.0: caller 'ci-x' is not registered" in e for e in errors)


def test_repository_policies_are_valid() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = invoke(["policies", "check", str(root / "policies")])
    assert result.exit_code == 0, result.output


def test_request_plan_apply_revoke_through_the_cli(scenario: Scenario, tmp_path: Path) -> None:
    env = {**scenario.environ(), "PIPELINE": "svc-a-deploy"}
    grants = write_grants(scenario, tmp_path / "grants.yaml", [scenario.bucket_grant("service-a")])
    key = ["--key-id", "ci-tooling-local", "--key-file", str(scenario.workdir / "ci-tooling.pem"), "--in-process"]
    plan = invoke(["request", str(grants), "--plan", *key], env)
    assert plan.exit_code == 0, plan.output
    assert "would-apply" in plan.output and "+" in plan.output  # table and diff
    assert scenario.bucket_grant("service-a")["principal"] not in json.dumps(scenario.bucket_policy())
    applied = invoke(["request", str(grants), "--apply", "--json", *key], env)
    assert applied.exit_code == 0
    body = json.loads(applied.output)
    assert [r["decision"] for r in body["results"]] == ["applied"]
    assert scenario.bucket_grant("service-a")["principal"] in json.dumps(scenario.bucket_policy())
    revoked = invoke(["request", str(grants), "--revoke", "--json", *key], env)
    assert [r["decision"] for r in json.loads(revoked.output)["results"]] == ["revoked"]
    entries = [e.entry for e in scenario.ledger().ledger.entries()]
    assert {e["context"].get("pipeline") for e in entries if e["type"] == "outcome"} == {"svc-a-deploy"}


def test_two_grants_files_owning_one_grant_keep_it_until_both_revoke(scenario: Scenario, tmp_path: Path) -> None:
    env = {**scenario.environ(), "PIPELINE": "svc-a-deploy"}
    grant = scenario.bucket_grant("service-a")
    key = ["--json", "--key-id", "ci-tooling-local", "--key-file", str(scenario.workdir / "ci-tooling.pem")]
    files = [
        write_grants(scenario, tmp_path / "deploy.yaml", [grant]),  # owner: the context's pipeline
        write_grants(scenario, tmp_path / "artifacts.yaml", [grant], owner="artifact-store"),
    ]

    def run(path: Path, mode: str) -> tuple[int, str]:
        result = invoke(["request", str(path), mode, *key, "--in-process"], env)
        return result.exit_code, json.loads(result.output)["results"][0]["decision"]

    assert [run(f, "--apply") for f in files] == [(0, "applied"), (0, "unchanged")]
    assert run(files[0], "--revoke") == (0, "kept")
    assert grant["principal"] in json.dumps(scenario.bucket_policy())
    assert run(files[1], "--revoke") == (0, "revoked")
    assert grant["principal"] not in json.dumps(scenario.bucket_policy())
    outcomes = [e.entry for e in scenario.ledger().ledger.entries() if e.entry["type"] == "outcome"]
    assert [(e["decision"], e["owner"], e["owners"]) for e in outcomes] == [
        ("applied", "pipeline:ci-tooling/svc-a-deploy", ["pipeline:ci-tooling/svc-a-deploy"]),
        (
            "unchanged",
            "pipeline:ci-tooling/artifact-store",
            ["pipeline:ci-tooling/artifact-store", "pipeline:ci-tooling/svc-a-deploy"],
        ),
        ("kept", "pipeline:ci-tooling/svc-a-deploy", ["pipeline:ci-tooling/artifact-store"]),
        ("revoked", "pipeline:ci-tooling/artifact-store", []),
    ]


def test_request_exits_non_zero_on_a_denied_grant_and_says_why(scenario: Scenario, tmp_path: Path) -> None:
    bad = {**scenario.bucket_grant("service-a"), "access": "write"}
    grants = write_grants(scenario, tmp_path / "grants.yaml", [bad])
    env = {**scenario.environ(), "PIPELINE": "p"}
    result = invoke(
        [
            "request",
            str(grants),
            "--apply",
            "--json",
            "--key-id",
            "ci-tooling-local",
            "--key-file",
            str(scenario.workdir / "ci-tooling.pem"),
            "--in-process",
        ],
        env,
    )
    assert result.exit_code == 1
    row = json.loads(result.output)["results"][0]
    assert row["decision"] == "denied" and "artifact-read" in row["reason"] and "access" in row["reason"]


def test_unset_placeholder_is_a_clear_error(scenario: Scenario, tmp_path: Path) -> None:
    grants = write_grants(scenario, tmp_path / "grants.yaml", [scenario.bucket_grant("service-a")])
    env = {k: v for k, v in scenario.environ().items()}
    result = CliRunner().invoke(
        main,
        [
            "request",
            str(grants),
            "--apply",
            "--key-id",
            "x",
            "--key-file",
            str(scenario.workdir / "ci-tooling.pem"),
            "--in-process",
        ],
        env=env,
    )
    assert result.exit_code == 2  # the grants file cannot be completed: a configuration error
    assert "PIPELINE is not set" in result.output


def test_kms_signed_request_is_accepted_and_verified_offline(scenario: Scenario, tmp_path: Path) -> None:
    kms = scenario.local.client("kms", "111111111111")
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    public = public_pem_from_der(kms.get_public_key(KeyId=key["KeyId"])["PublicKey"])
    callers_path = scenario.policies_dir / "callers.yaml"
    callers = yaml.safe_load(callers_path.read_text())
    window = {k: callers["callers"]["ci-tooling"]["keys"][0][k] for k in ("not_before", "not_after")}
    callers["callers"]["ci-tooling"]["keys"].append(
        {"id": "ci-tooling-kms", "algorithm": "ecdsa-p256-sha256", "public_key": public, **window}
    )
    callers_path.write_text(yaml.safe_dump(callers))
    calls: list[str] = []
    session = scenario.local.base_session()
    session.events.register("before-call.kms", lambda model, **_: calls.append(model.name))
    broker = scenario.broker(session=session)
    signer = KmsSigner(key_id="ci-tooling-kms", kms_key_id=key["Arn"], client=kms)
    response = scenario.client(broker, signer=signer).request([scenario.key_grant("service-a")])
    assert response.ok and response.results[0].decision == "applied"
    assert "Verify" not in calls and "GetPublicKey" not in calls  # verification is offline
    other = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    forged = KmsSigner(key_id="ci-tooling-kms", kms_key_id=other["Arn"], client=kms)
    refused = scenario.client(broker, signer=forged).request([scenario.key_grant("service-b")])
    assert refused.error is not None and refused.error.code == "bad-signature"


def test_demo_json_reports_grants_and_refused_attacks(tmp_path: Path) -> None:
    """The real command in its own process (moto's state is per process), on its own loopback server."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DEPLOY_HELPER_"))}
    result = subprocess.run(
        [sys.executable, "-m", "deploy_helper", "demo", "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [r["decision"] for r in report["applied"]] == ["applied"] * 6
    assert [(r["kind"], r["decision"]) for r in report["shared"]] == [("ecr-pull", "applied")] * 2 + [
        ("sqs-send", "applied")
    ] * 2
    assert report["verified"]["image_repository_shared"] and report["verified"]["events_queue_shared"]
    assert all(a["refused"] for a in report["attacks"]) and len(report["attacks"]) >= 3
    assert report["attacks_changed_nothing"] is True
    assert all(report["verified"].values())
    assert report["ledger"]["whole"] is True
