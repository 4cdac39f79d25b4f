"""``deploy-helper local up|env|down``: a local AWS to work in, driven through the real CLI.

``local up --detach`` and ``local down`` run as real subprocesses (the server must
outlive the command that started it); ``local env`` is evaluated by a real shell,
and the variables it sets are the only configuration every other command gets.
Those commands run in-process (click's runner) to keep the test quick: they are
the same CLI, reading the same environment. Afterwards the demo, pointed at the
running environment by ``AWS_ENDPOINT_URL``, leaves its grants and ledger there,
read back with plain boto3 through the generated profiles.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import urllib.request
from typing import TYPE_CHECKING, Any

import boto3
from click.testing import CliRunner

from deploy_helper import handler
from deploy_helper.cli import main
from deploy_helper.local import scenario as seed

if TYPE_CHECKING:
    from pathlib import Path


def clean_environ() -> dict[str, str]:
    """This process's environment without any AWS or deploy-helper setting (the fixtures set some)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DEPLOY_HELPER_", "MOTO_"))}


def deploy_helper(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy_helper", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def sourced(state: Path, base: dict[str, str]) -> dict[str, str | None]:
    """What ``eval "$(deploy-helper local env)"`` does to a shell's environment."""
    script = f'eval "$("{sys.executable}" -m deploy_helper local env --state-dir "{state}")" && env -0'
    shell = subprocess.run(["bash", "-c", script], capture_output=True, env=base, timeout=120, check=True)
    after = dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if "=" in item)
    changed: dict[str, str | None] = {k: v for k, v in after.items() if base.get(k) != v}
    # Everything else this test process has (the fixtures' AWS_* variables) is gone in that shell.
    changed.update({k: None for k in os.environ if k.startswith(("AWS_", "DEPLOY_HELPER_")) and k not in after})
    return changed


def cli(args: list[str], env: dict[str, str | None]) -> Any:
    result = CliRunner().invoke(main, args, env=env, catch_exceptions=False)
    return result


def test_local_up_env_then_every_command_then_down(tmp_path: Path) -> None:
    state = tmp_path / "local"
    base = clean_environ()
    up = deploy_helper("local", "up", "--detach", "--state-dir", str(state), env=base)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert "local AWS at http://127.0.0.1:" in up.stdout
        again = deploy_helper("local", "up", "--detach", "--state-dir", str(state), env=base)
        assert again.returncode == 0 and again.stdout.startswith("already running"), again.stdout

        env = sourced(state, base)
        assert env["AWS_ENDPOINT_URL"] and env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        assert env["AWS_PROFILE"] == "deploy-helper-local" and env.get("AWS_ACCESS_KEY_ID") is None
        grants = str(env["DEPLOY_HELPER_LOCAL_GRANTS"])
        try:
            _drive(grants, env, tmp_path)
        finally:
            handler.set_broker(None)
        _demo_leaves_its_results(env)
    finally:
        down = deploy_helper("local", "down", "--state-dir", str(state), env=base)
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("stopped the local AWS")
    assert not state.exists()
    endpoint = str(env["AWS_ENDPOINT_URL"])
    try:
        urllib.request.urlopen(endpoint, timeout=2)  # noqa: S310 - loopback
        raise AssertionError("the local AWS still answers after local down")
    except OSError:
        pass
    gone = cli(["local", "env", "--state-dir", str(state)], {})
    assert gone.exit_code == 2 and "deploy-helper local up" in gone.output


def _drive(grants: str, env: dict[str, str | None], tmp_path: Path) -> None:
    request = ["request", grants, "--in-process", "--json"]
    plan = cli([*request, "--plan"], env)
    assert plan.exit_code == 0, plan.output
    assert [r["decision"] for r in json.loads(plan.output)["results"]] == ["would-apply"] * 3

    applied = cli([*request, "--apply"], env)
    assert applied.exit_code == 0, applied.output
    results = json.loads(applied.output)["results"]
    assert [r["decision"] for r in results] == ["applied"] * 3
    key_arn = next(r["target"] for r in results if r["kind"] == "kms-grant")

    listed = cli(["ledger", "list", "--json", "--decision", "applied"], env)
    assert listed.exit_code == 0, listed.output
    assert len([e for e in json.loads(listed.output) if e["type"] == "outcome"]) == 3

    shown = cli(["ledger", "show", "1"], env)
    assert shown.exit_code == 0 and json.loads(shown.output)["hash"]

    exported = cli(["ledger", "export", "--format", "csv"], env)
    rows = list(csv.DictReader(io.StringIO(exported.output)))
    assert key_arn in {r["target"] for r in rows}  # whole ARNs in the export (tables shorten them)
    assert f"arn:aws:iam::{seed.ACCOUNTS['service-a']}:role/deploy" in {r["principal"] for r in rows}

    verified = cli(["ledger", "verify", "--json"], env)
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["whole"] is True

    revoked = cli([*request, "--revoke"], env)
    assert [r["decision"] for r in json.loads(revoked.output)["results"]] == ["revoked"] * 3

    # A custom-resource event of the service stack `local up` deployed, replayed through the real handler.
    replayed = cli(["local", "invoke", f"{env['DEPLOY_HELPER_LOCAL_DIR']}/events/create.json"], env)
    assert replayed.exit_code == 0, replayed.output
    cfn = json.loads(replayed.output)["cloudformation_response"]
    assert (cfn["Status"], cfn["Data"]["Decision"]) == ("SUCCESS", "applied")
    stacks = [e for e in json.loads(cli(["ledger", "list", "--json"], env).output) if e["caller"] == "stacks-service-a"]
    assert [e["type"] for e in stacks] == ["intent", "outcome"]

    targets = [a for name in seed.TARGET_ACCOUNTS for a in ("--account", seed.ACCOUNTS[name])]
    status = cli(["bootstrap", "status", *targets, "--json"], env)
    assert status.exit_code == 0, status.output
    assert {a["state"] for a in json.loads(status.output)["accounts"]} == {"current"}


def _demo_leaves_its_results(env: dict[str, str | None]) -> None:
    demo = cli(["demo", "--json"], env)
    assert demo.exit_code == 0, demo.output[-2000:]
    report = json.loads(demo.output)
    assert report["endpoint"] == env["AWS_ENDPOINT_URL"]
    # Read back with plain boto3 through the generated profiles, as a user would.
    environ = {k: v for k, v in env.items() if v is not None}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({**clean_environ_of(saved), **environ})
    try:
        tooling = boto3.Session(profile_name="deploy-helper-local-tooling")
        assert tooling.client("sts").get_caller_identity()["Account"] == seed.ACCOUNTS["tooling"]
        policy = json.loads(
            tooling.client("s3").get_bucket_policy(Bucket=f"dh-artifacts-{seed.ACCOUNTS['tooling']}")["Policy"]
        )
        applied = {r["grant_id"] for r in report["applied"] if r["kind"] == "bucket-access"}
        sids = {s["Sid"] for s in policy["Statement"]}
        assert len(applied & sids) == 1  # service-a's read stays; the demo revoked service-b's
        ledger = boto3.Session().client("dynamodb")
        items = ledger.scan(TableName=str(env["DEPLOY_HELPER_LEDGER_TABLE"]), Select="COUNT")["Count"]
        assert items >= len(report["audit_trail"]) > 0
    finally:
        os.environ.clear()
        os.environ.update(saved)


def clean_environ_of(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(("AWS_", "DEPLOY_HELPER_", "MOTO_"))}
