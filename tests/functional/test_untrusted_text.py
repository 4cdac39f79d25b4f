"""Text from outside is printed literally by every command (DESIGN §6, last row).

An attacker who may invoke the function plants rich markup (``[/]`` crashed
``ledger list``; ``[link=…]`` changed what a table shows), ANSI escape sequences, a
carriage return, a bell and a bidirectional override in what the broker records:
through the real handler, as an event that is no envelope at all (its unknown field
is named in the refusal), as an authentic request with a grant kind that does not
exist, and as a forged custom-resource event (its StackId and RequestId are recorded
as claimed). Then the auditor runs the real CLI. Every command must exit normally,
show the markup as the characters it is, escape the control characters visibly, and
let none of them reach the terminal; ``--json`` stays valid JSON with the exact values.
"""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from click.testing import CliRunner
from test_attacks import payload, signed

from deploy_helper import handler
from deploy_helper.cli import main

if TYPE_CHECKING:
    from click.testing import Result

    from deploy_helper.execution.broker import Broker
    from deploy_helper.local.scenario import Scenario

MARKUP = ("[/]", "[link=https://evil.example]x[/link]", "[bold red]")
CONTROL = "\x1b[2J\x1b]8;;https://evil.example\x07\r\u202e"
PAYLOAD = "".join(MARKUP) + "alarm" + CONTROL
#: How the control characters must be shown, and the characters that must never be printed.
ESCAPED = ("\\x1b[2J", "\\x1b]8;;https://evil.example\\x07", "\\r", "\\u202e")
RAW = ("\x1b", "\x07", "\r", "\u202e")
REASON_COLUMN = 10  # of ledger list's table


def _cli(scenario: Scenario, *args: str, **env: str) -> Result:
    return CliRunner().invoke(main, list(args), env={**scenario.environ(), **env})


def _column(table: str, index: int) -> str:
    """One column of a rich table, its folded lines joined and all whitespace dropped."""
    pieces = [line.split("│")[index + 1] for line in table.splitlines() if line.count("│") > index]
    return "".join("".join(pieces).split())


def _compact(value: str) -> str:
    return "".join(value.split())


def _printed_literally(output: str) -> None:
    for raw in RAW:
        assert raw not in output, f"{raw!r} reached the terminal"


@pytest.fixture
def planted(scenario: Scenario, strict_broker: Broker) -> list[dict[str, Any]]:
    """The attacker's three refusals, sent through the real handler; their ledger entries."""
    handler.set_broker(strict_broker)
    before = scenario.snapshot()
    start = strict_broker.ledger.head()[0]  # type: ignore[attr-defined]
    grant = {**scenario.authorizer_grant("service-a"), "kind": PAYLOAD}
    events: list[Any] = [
        {PAYLOAD: PAYLOAD},
        signed(scenario.signer, payload([grant])),
        {
            "RequestType": "Create",
            "ResponseURL": "https://evil.example/answer",
            "StackId": PAYLOAD,
            "RequestId": PAYLOAD,
            "LogicalResourceId": PAYLOAD,
            "ResourceType": "Custom::DeployHelperGrant",
            "ResourceProperties": {"ServiceToken": PAYLOAD},
        },
    ]
    for event in events:
        response = handler.lambda_handler(json.loads(json.dumps(event)), None)
        assert response["ok"] is False, response
    entries = [e.entry for e in strict_broker.ledger.entries(start=start + 1)]  # type: ignore[attr-defined]
    assert [(e["type"], e["decision"]) for e in entries] == [("refusal", "denied")] * 3
    # the attack reached the ledger: the raw text is what the commands below must print safely
    assert CONTROL in entries[0]["reason"] and CONTROL in entries[1]["reason"]
    assert entries[2]["key_id"] == PAYLOAD
    assert scenario.snapshot() == before
    return entries


def test_ledger_list_shows_the_text_and_obeys_none_of_it(scenario: Scenario, planted: list[dict[str, Any]]) -> None:
    result = _cli(scenario, "ledger", "list")
    assert result.exit_code == 0, result.output
    assert result.exception is None
    _printed_literally(result.output)
    reasons = _column(result.output, REASON_COLUMN)
    for text in (*MARKUP, *ESCAPED):
        assert _compact(text) in reasons, text
    assert "alarm" in reasons


def test_on_a_colour_terminal_only_the_commands_own_styles_are_sent(
    scenario: Scenario, planted: list[dict[str, Any]]
) -> None:
    result = _cli(scenario, "ledger", "list", FORCE_COLOR="1")
    assert result.exit_code == 0, result.output
    assert "\x1b[1m" in result.output  # the header's own bold: escapes are being written
    for sequence in ("\x1b[2J", "\x1b]8;", "\x07", "\r", "\u202e"):
        assert sequence not in result.output
    assert _compact("[link=https://evil.example]x[/link]") in _column(result.output, REASON_COLUMN)


def test_json_output_keeps_the_exact_values(scenario: Scenario, planted: list[dict[str, Any]]) -> None:
    listed = _cli(scenario, "ledger", "list", "--json")
    assert listed.exit_code == 0
    _printed_literally(listed.output)
    assert [e["reason"] for e in json.loads(listed.output)[-3:]] == [e["reason"] for e in planted]
    for entry in planted:
        shown = _cli(scenario, "ledger", "show", str(entry["seq"]))
        assert shown.exit_code == 0
        _printed_literally(shown.output)
        assert json.loads(shown.output)["entry"] == entry
    exported = _cli(scenario, "ledger", "export")
    assert exported.exit_code == 0
    _printed_literally(exported.output)
    assert [json.loads(line) for line in exported.output.splitlines()][-3:] == planted


def test_csv_export_escapes_control_characters(scenario: Scenario, planted: list[dict[str, Any]]) -> None:
    exported = _cli(scenario, "ledger", "export", "--format", "csv")
    assert exported.exit_code == 0, exported.output
    _printed_literally(exported.output)
    rows = list(csv.DictReader(io.StringIO(exported.output)))[-3:]
    for row in rows[:2]:
        assert all(text in row["reason"] for text in (*MARKUP, *ESCAPED))
    assert rows[2]["key_id"].startswith("".join(MARKUP) + "alarm\\x1b[2J")


def test_request_prints_the_brokers_refusal_literally(scenario: Scenario, tmp_path: Any) -> None:
    """The caller's own CLI: a refusal that quotes the request is shown, not obeyed."""
    grants = tmp_path / "grants.yaml"
    grant = {**scenario.authorizer_grant("service-a"), "kind": PAYLOAD}
    grants.write_text(yaml.safe_dump({"caller": "ci-tooling", "audience": "deploy-helper:local", "grants": [grant]}))
    key = ["--key-id", "ci-tooling-local", "--key-file", str(scenario.workdir / "ci-tooling.pem"), "--in-process"]
    key.append("--apply")  # request needs an explicit mode
    result = _cli(scenario, "request", str(grants), *key)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    _printed_literally(result.output)
    assert "refused (invalid-request)" in result.output
    for text in (*MARKUP, *ESCAPED):
        assert _compact(text) in _compact(result.output)  # the line may wrap
    as_json = _cli(scenario, "request", str(grants), "--json", *key)
    _printed_literally(as_json.output)
    assert PAYLOAD in json.loads(as_json.output)["error"]["message"]


def test_policies_check_prints_a_hostile_file_literally(tmp_path: Any) -> None:
    """A policies change under review cannot hide its errors from the reviewer's terminal."""
    (tmp_path / "callers.yaml").write_text("version: 1\ncallers: {}\n")
    rules = {"version": 1, "organization": {"accounts": {PAYLOAD: "111111111111"}}, "rules": []}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    result = CliRunner().invoke(main, ["policies", "check", str(tmp_path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    _printed_literally(result.output)
    for text in (*MARKUP, *ESCAPED[:2], "\\u202e"):  # the error lines are split at the '\r'
        assert _compact(text) in _compact(result.output)
