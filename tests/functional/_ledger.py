"""What the ledger tests share: raw table access, the CLI, the checkpoint objects."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from click.testing import CliRunner

from deploy_helper.cli import main

if TYPE_CHECKING:
    from deploy_helper.local.scenario import Scenario


def entries_of(sc: Scenario) -> list[dict[str, Any]]:
    return [e.entry for e in sc.ledger().ledger.entries()]


def run_cli(sc: Scenario, *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=sc.environ(), catch_exceptions=False)


def raw_table(sc: Scenario) -> Any:
    return sc.local.client("dynamodb", "123456789012")


def stored_item(sc: Scenario, seq: int) -> dict[str, Any]:
    key = {"ledger": {"S": "main"}, "seq": {"N": str(seq)}}
    return dict(raw_table(sc).get_item(TableName=sc.config.ledger_table, Key=key)["Item"])


def verify_cli(sc: Scenario) -> tuple[int, dict[str, Any]]:
    result = run_cli(sc, "ledger", "verify", "--json")
    return result.exit_code, json.loads(result.output)


def note_objects(sc: Scenario) -> tuple[Any, str, list[str]]:
    s3 = sc.local.client("s3", "123456789012")
    bucket = str(sc.config.checkpoint_bucket)
    names = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="checkpoints/main/note/")["Contents"])
    return s3, bucket, names


def public_pem(sc: Scenario, tmp_path: Any) -> str:
    key = sc.ledger().public_key
    assert key is not None
    path = tmp_path / "checkpoint-public.pem"
    path.write_text(key[1])
    return str(path)


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
