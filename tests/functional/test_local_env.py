"""``deploy-helper local up|env|down`` and the README's five-minute tour, through the real CLI.

The README's tour block runs as written, in a real shell (``bash -e``) in an
empty directory: ``local up --detach`` starts the server in its own process,
``eval "$(deploy-helper local env)"`` is the only configuration every later
command gets. Before the tour's last line (``local down``), the rest of the CLI
is driven against the same environment, in-process to keep the test quick (the
same commands, reading the environment the shell ended with), and the demo's
results are read back with plain boto3 through the generated profiles.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from click.testing import CliRunner

from deploy_helper import handler
from deploy_helper.cli import main
from deploy_helper.local import scenario as seed

README = Path(__file__).resolve().parents[2] / "README.md"


def tour() -> list[str]:
    """The command lines of the README's tour block."""
    block = README.read_text().split("<!-- tour -->", 1)[1]
    body = re.search(r"```sh\n(.*?)```", block, re.S)
    assert body is not None
    return [line for line in body.group(1).splitlines() if line.strip()]


def clean_environ() -> dict[str, str]:
    """This process's environment without AWS or deploy-helper settings (the fixtures set some)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DEPLOY_HELPER_", "MOTO_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the deploy-helper script
    return env


def shell(lines: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = "set -e\n" + "\n".join(lines) + f'\nenv -0 > "{cwd}/env.out"\n'
    return subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def ended_with(cwd: Path, base: dict[str, str]) -> dict[str, str | None]:
    """The environment the shell ended with, as changes to this process's (None: unset there)."""
    after = dict(item.split("=", 1) for item in (cwd / "env.out").read_text().split("\0") if "=" in item)
    changed: dict[str, str | None] = {k: v for k, v in after.items() if base.get(k) != v}
    changed.update({k: None for k in os.environ if k.startswith(("AWS_", "DEPLOY_HELPER_")) and k not in after})
    return changed


def cli(args: list[str], env: dict[str, str | None]) -> Any:
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


def test_the_readme_tour_and_every_command_against_a_running_local_aws(tmp_path: Path) -> None:
    lines = tour()
    assert lines[0].startswith("deploy-helper local up --detach") and lines[-1] == "deploy-helper local down"
    base = clean_environ()
    ran = shell(lines[:-1], tmp_path, base)
    try:
        assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
        for shown in ("would-apply", "applied", "WHOLE", '"Status": "SUCCESS"', "demo OK"):
            assert shown in ran.stdout, shown
        env = ended_with(tmp_path, base)
        assert str(env["AWS_ENDPOINT_URL"]).startswith("http://127.0.0.1:")
        assert env["AWS_PROFILE"] == "deploy-helper-local" and env.get("AWS_ACCESS_KEY_ID") is None
        try:
            _every_command(env)
        finally:
            handler.set_broker(None)
        _results_readable_with_plain_boto3(env)
    finally:
        down = shell(lines[-1:], tmp_path, base)
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("stopped the local AWS")
    assert not (tmp_path / ".deploy-helper" / "local").exists()
    try:
        urllib.request.urlopen(str(env["AWS_ENDPOINT_URL"]), timeout=2)  # noqa: S310 - loopback
        raise AssertionError("the local AWS still answers after local down")
    except OSError:
        pass
    gone = cli(["local", "env", "--state-dir", str(tmp_path / ".deploy-helper" / "local")], {})
    assert gone.exit_code == 2 and "deploy-helper local up" in gone.output


def _every_command(env: dict[str, str | None]) -> None:
    again = cli(["local", "up", "--detach"], env)
    assert again.exit_code == 0 and again.output.startswith("already running"), again.output

    grants = str(env["DEPLOY_HELPER_LOCAL_GRANTS"])
    request = ["request", grants, "--in-process", "--json"]
    # The demo asked for the same three grants from its own pipeline: revoking ours keeps them for it.
    plan = cli([*request, "--plan", "--revoke"], env)
    assert plan.exit_code == 0, plan.output
    assert [r["decision"] for r in json.loads(plan.output)["results"]] == ["kept"] * 3
    conflicting = cli([*request, "--apply", "--revoke"], env)
    assert conflicting.exit_code == 2 and "contradict" in conflicting.output

    listed = json.loads(cli(["ledger", "list", "--json"], env).output)
    applied = [e for e in listed if e["type"] == "outcome" and e["context"].get("pipeline") == "local-tour"]
    assert [e["decision"] for e in applied] == ["applied"] * 3
    stacks = [e for e in listed if e.get("caller") == "stacks-service-a"]
    assert [e["type"] for e in stacks] == ["intent", "outcome"]  # the replayed custom-resource event

    shown = cli(["ledger", "show", str(applied[0]["seq"])], env)
    assert shown.exit_code == 0 and json.loads(shown.output)["entry"] == applied[0]

    exported = cli(["ledger", "export", "--format", "csv"], env)
    rows = list(csv.DictReader(io.StringIO(exported.output)))
    key_arn = next(e["grant"]["target"] for e in applied if e["grant"]["kind"] == "kms-grant")
    assert key_arn in {r["target"] for r in rows}  # whole ARNs in the export (tables shorten them)
    assert f"arn:aws:iam::{seed.ACCOUNTS['service-a']}:role/deploy" in {r["principal"] for r in rows}

    revoked = cli([*request, "--revoke"], env)
    assert [r["decision"] for r in json.loads(revoked.output)["results"]] == ["kept"] * 3
    verified = cli(["ledger", "verify", "--json"], env)
    assert verified.exit_code == 0 and json.loads(verified.output)["whole"] is True

    targets = [a for name in seed.TARGET_ACCOUNTS for a in ("--account", seed.ACCOUNTS[name])]
    status = cli(["bootstrap", "status", *targets, "--json"], env)
    assert status.exit_code == 0, status.output
    assert {a["state"] for a in json.loads(status.output)["accounts"]} == {"current"}


def _results_readable_with_plain_boto3(env: dict[str, str | None]) -> None:
    """The demo's grants (service-b's KMS grant: the tour asked for service-a's only) and its ledger."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.startswith(("AWS_", "DEPLOY_HELPER_"))})
    os.environ.update({k: v for k, v in env.items() if v is not None})
    try:
        tooling = boto3.Session(profile_name="deploy-helper-local-tooling")
        assert tooling.client("sts").get_caller_identity()["Account"] == seed.ACCOUNTS["tooling"]
        kms = tooling.client("kms")
        key = kms.list_keys()["Keys"][0]["KeyId"]
        grantees = {g["GranteePrincipal"] for g in kms.list_grants(KeyId=key)["Grants"]}
        assert f"arn:aws:iam::{seed.ACCOUNTS['service-b']}:role/deploy" in grantees
        ddb = boto3.Session().client("dynamodb")  # the broker's account: deploy-helper-local
        count = ddb.scan(TableName=str(env["DEPLOY_HELPER_LEDGER_TABLE"]), Select="COUNT")["Count"]
        assert count > 20  # the tour's, the custom resource's and the demo's entries
    finally:
        os.environ.clear()
        os.environ.update(saved)
