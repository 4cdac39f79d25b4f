"""``deploy-helper report --html``, opened in a real headless Chromium (Debian's package).

Chromium is driven by its own ``--dump-dom`` and ``--screenshot`` with console
messages logged to stderr: the page must render without a console error (its CSP
forbids any load, so an attempt to reach the network would also show up there), the
graph must have one node per account with grants, and the screenshot is kept in
``tests/artifacts/`` (ignored by git; CI keeps the folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner

from deploy_helper.audit.report import ReportData, render
from deploy_helper.cli import main
from deploy_helper.local import scenario as seed

if TYPE_CHECKING:
    from deploy_helper.local.scenario import Scenario

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CONSOLE_ERROR = re.compile(r"CONSOLE.*(error|uncaught|refused)|Uncaught|Refused to", re.IGNORECASE)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


def run_chromium(page: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1280,2200",
        *mode,
        page.resolve().as_uri(),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE_ERROR.search(line)]


class Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[str] = []
        self.edges: list[dict[str, str]] = []
        self.ids: dict[str, str] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "g" and "node" in a.get("class", "").split():
            self.nodes.append(a.get("data-account", ""))
        if tag == "path" and "edge" in a.get("class", "").split():
            self.edges.append(a)
        self._current = a.get("id")

    def handle_data(self, data: str) -> None:
        if self._current and data.strip():
            self.ids.setdefault(self._current, data.strip())


def test_the_console_check_sees_an_error(tmp_path: Path) -> None:
    """The check below can fail: a page that throws is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><body><script>throw new Error('boom')</script></body></html>")
    result = run_chromium(page, tmp_path, "--dump-dom")
    assert console_errors(result.stderr), result.stderr[-2000:]


def test_report_renders_in_chromium_with_one_node_per_account(scenario: Scenario, tmp_path: Path) -> None:
    env = scenario.environ()
    client = scenario.client(scenario.broker())
    assert client.request(scenario.seed_grants(), context={"pipeline": "seed"}).ok
    expiring = {**scenario.key_grant("service-a"), "operations": ["Decrypt"], "ttl": "2h", "ticket": "CHG-9"}
    assert client.request([expiring]).results[0].decision == "applied"
    lam = scenario.local.client("lambda", seed.ACCOUNTS["token-service"])
    from deploy_helper.audit.drift import parse_spec
    from deploy_helper.grants import kind_of

    spec = parse_spec(scenario.authorizer_grant("service-b"))
    lam.remove_permission(FunctionName="token-authorizer", StatementId=kind_of(spec).grant_id(spec))
    policy = scenario.bucket_policy()
    assert policy is not None
    planted = {"Sid": "DeployHelperPlantedForTheReport", "Effect": "Allow", "Principal": "*", "Action": "s3:*"}
    policy["Statement"].append(planted)
    scenario.local.client("s3", seed.ACCOUNTS["tooling"]).put_bucket_policy(
        Bucket=scenario.bucket, Policy=json.dumps(policy)
    )
    runner = CliRunner()
    assert runner.invoke(main, ["ledger", "checkpoint"], env=env, catch_exceptions=False).exit_code == 0
    out = tmp_path / "report.html"
    made = runner.invoke(main, ["report", "--html", str(out), "--drift", "live"], env=env, catch_exceptions=False)
    assert made.exit_code == 0, made.output

    result = run_chromium(out, tmp_path, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert console_errors(result.stderr) == []
    dom = Dom()
    dom.feed(result.stdout)
    accounts = {seed.ACCOUNTS[n] for n in ("tooling", "token-service", "service-a", "service-b")}
    assert sorted(dom.nodes) == sorted(accounts)  # one node per account with grants
    assert len(dom.edges) == 7
    drifted = [e for e in dom.edges if "drifted" in e["class"].split()]
    assert [(e["data-kind"], e["data-drift"]) for e in drifted] == [("lambda-invoke", "missing")]
    assert [e["data-kind"] for e in dom.edges if "expiring" in e["class"].split()] == ["kms-grant"]
    assert dom.ids["ledger-status"] == "WHOLE"
    assert 'class="finding-unknown-managed"' in result.stdout and "DeployHelperPlantedForTheReport" in result.stdout
    assert re.fullmatch(r"checkpoint \d+: \d+ entries, root .+", dom.ids["checkpoint"]), dom.ids["checkpoint"]

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    taken = run_chromium(out, tmp_path, f"--screenshot={shot}")
    assert taken.returncode == 0 and console_errors(taken.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_untrusted_text_in_the_ledger_is_escaped(tmp_path: Path) -> None:
    hostile = '<script>alert(1)</script><img src="https://example.invalid/x">'
    grant: dict[str, Any] = {
        "grant_id": "DeployHelperabc",
        "kind": "bucket-access",
        "account": "111111111111",
        "target": "arn:aws:s3:::b",
        "principal": "arn:aws:iam::333333333333:role/deploy",
        "caller": hostile,
        "ticket": hostile,
        "owners": [hostile],
        "spec": {},
    }
    page = render(ReportData(time="t", active=[grant], now=0))
    assert "<script>" not in page and "<img" not in page
    path = tmp_path / "hostile.html"
    path.write_text(page)
    result = run_chromium(path, tmp_path, "--dump-dom")
    assert console_errors(result.stderr) == [] and "<script>alert" not in result.stdout
    assert json.dumps(hostile)  # the value itself is shown, escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in result.stdout
