"""Every command answers a configuration or connection problem with one line, never a traceback.

The cases are parametrized over the click command tree itself: a command added to
the CLI without an entry in ``COMMANDS`` fails ``test_every_command_is_covered``.
Each command runs in-process (CliRunner) with the environment of one fault:

- no region, no credentials, a malformed AWS config file (boto3's own configuration);
- the endpoint down (``AWS_ENDPOINT_URL`` on a loopback port nothing listens on);
- access denied (a loopback server that answers every AWS call as AWS answers a
  principal without permission, in each protocol's wire format);
- a malformed YAML input and a missing input file, for the commands that read one.

Exit status 2 for configuration and usage problems, 1 for refusals.
"""

from __future__ import annotations

import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import TYPE_CHECKING, Any

import click
import pytest
from click.testing import CliRunner

from deploy_helper.cli import main
from deploy_helper.trust.signing import generate_ed25519

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

EXTERNAL_ID = "cli-errors-external-id-0000000000001"


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command a user can run: leaves, and groups that run on their own."""
    if isinstance(command, click.Group):
        if command.invoke_without_command and path:
            yield path
        for name, sub in command.commands.items():
            yield from walk(sub, (*path, name))
    else:
        yield path


# -- the commands and their arguments ------------------------------------------------------------

AWS = ("no-region", "no-credentials", "bad-aws-config", "endpoint-down", "access-denied")


def _key(tmp: Path) -> str:
    path = tmp / "ci.pem"
    if not path.exists():
        path.write_bytes(generate_ed25519()[0])
    return str(path)


def _public(tmp: Path) -> str:
    path = tmp / "checkpointer.pub.pem"
    if not path.exists():
        path.write_bytes(generate_ed25519()[1])
    return str(path)


def _grants(tmp: Path) -> str:
    path = tmp / "grants.yaml"
    grants = [{"kind": "bucket-access", "bucket": "dh-artifacts-x", "account": "111111111111"}]
    grants[0].update(principal="arn:aws:iam::333333333333:role/deploy", access="read")
    path.write_text(json.dumps({"caller": "ci-tooling", "audience": "deploy-helper:test", "grants": grants}))
    return str(path)


def _accounts(tmp: Path) -> str:
    path = tmp / "accounts.yaml"
    path.write_text("accounts: ['111111111111']\n")
    return str(path)


LEDGER = ["--table", "deploy-helper-ledger"]
BOOTSTRAP = ["--broker-role-arn", "arn:aws:iam::123456789012:role/broker-fn", "--external-id", EXTERNAL_ID]

#: command path -> (arguments, the faults that apply, the file argument to break if any)
COMMANDS: dict[tuple[str, ...], tuple[Callable[[Path], list[str]], tuple[str, ...], str | None]] = {
    ("demo",): (lambda t: ["--json"], ("endpoint-down", "access-denied"), None),
    ("request",): (
        lambda t: [_grants(t), "--plan", "--function", "deploy-helper", "--key-id", "k", "--key-file", _key(t)],
        AWS,
        "grants",
    ),
    ("ledger", "list"): (lambda t: LEDGER, AWS, None),
    ("ledger", "show"): (lambda t: ["1", *LEDGER], AWS, None),
    ("ledger", "export"): (lambda t: [*LEDGER, "--format", "csv"], AWS, None),
    ("ledger", "verify"): (lambda t: LEDGER, AWS, None),
    ("ledger", "active"): (lambda t: LEDGER, AWS, None),
    ("ledger", "prove"): (lambda t: ["1", *LEDGER, "--bucket", "checkpoints"], AWS, None),
    ("ledger", "check-proof"): (lambda t: [_event(t), "--public-key", _public(t)], (), "event"),
    ("ledger", "bundle"): (lambda t: [*LEDGER, "--bucket", "checkpoints", "--out", str(t / "bundle")], AWS, None),
    ("ledger", "pull"): (lambda t: [*LEDGER, "--bucket", "checkpoints", "--out", str(t / "pulled")], AWS, None),
    ("ledger", "checkpoint"): (
        lambda t: [*LEDGER, "--bucket", "checkpoints", "--checkpoint-key", f"file:{_key(t)}"],
        AWS,
        None,
    ),
    ("keys", "generate"): (
        lambda t: ["--caller", "ci", "--key-id", "ci-kms", "--kms-key-id", "alias/ci", "--out-dir", str(t)],
        AWS,
        None,
    ),
    ("policies", "check"): (lambda t: [str(t / "policies")], (), "policies"),
    ("bootstrap",): (lambda t: ["--accounts", _accounts(t), *BOOTSTRAP, "--plan"], AWS, "accounts"),
    ("bootstrap", "status"): (lambda t: ["--accounts", _accounts(t)], AWS, "accounts"),
    # kinds: from the registry alone, no AWS and no file
    ("kinds",): (lambda t: ["--json"], (), None),
    # local: no AWS configuration is read; `local env` without a running environment says what to run
    ("local", "up"): (lambda t: [], (), None),
    ("local", "env"): (lambda t: ["--state-dir", str(t / "none")], ("not-running",), None),
    ("local", "down"): (lambda t: ["--state-dir", str(t / "none")], (), None),
    ("local", "invoke"): (lambda t: [_event(t)], (), "event"),
    ("drift",): (lambda t: LEDGER, AWS, None),
    ("reconcile",): (lambda t: ["--plan", *LEDGER], AWS, None),
    ("report",): (lambda t: ["--html", str(t / "report.html"), *LEDGER, "--drift", "none"], AWS, None),
}


def _event(tmp: Path) -> str:
    path = tmp / "event.json"
    path.write_text(json.dumps({"signed": "{}", "signature": "x"}))
    return str(path)


def test_every_command_is_covered() -> None:
    assert set(walk(main)) == set(COMMANDS)


# -- the faults -------------------------------------------------------------------------------------


class DenyEverything(BaseHTTPRequestHandler):
    """Answers every AWS call with access denied, in the caller's protocol."""

    #: The SigV4 credential scopes of the requests received (they name the region).
    scopes: list[str] = []  # shared by the handler instances of one server

    def _answer(self) -> None:
        self.scopes.append(self.headers.get("Authorization", "").split("Credential=")[-1].split(",")[0])
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        message = "User: arn:aws:iam::123456789012:user/nobody is not authorized to perform this action"
        if self.headers.get("X-Amz-Target"):  # JSON protocol (DynamoDB, KMS)
            status, ctype = 400, "application/x-amz-json-1.1"
            body = json.dumps({"__type": "AccessDeniedException", "message": message}).encode()
            extra = {}
        elif self.path.startswith("/2015-03-31/"):  # Lambda (REST-JSON)
            status, ctype = 403, "application/json"
            body = json.dumps({"Message": message}).encode()
            extra = {"x-amzn-ErrorType": "AccessDeniedException"}
        else:  # query (STS, CloudFormation) and REST-XML (S3)
            status, ctype = 403, "text/xml"
            body = (
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>"
                f"<Message>{message}</Message></Error><RequestId>1</RequestId></ErrorResponse>"
            ).encode()
            extra = {}
        self.send_response(status)
        for name, value in {"Content-Type": ctype, "Content-Length": str(len(body)), **extra}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def deny_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), DenyEverything)
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def environment(fault: str, tmp: Path, deny: str) -> dict[str, str | None]:
    """boto3's configuration for ``fault``, isolated from the machine's own."""
    (tmp / "empty-config").write_text("")
    env: dict[str, str | None] = {
        "AWS_CONFIG_FILE": str(tmp / "empty-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-credentials"),
        "AWS_PROFILE": None,
        "AWS_DEFAULT_PROFILE": None,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": None,
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": None,
        "AWS_WEB_IDENTITY_TOKEN_FILE": None,
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE00",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": None,
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": None,
        "AWS_ENDPOINT_URL": deny,
        "DEPLOY_HELPER_LOCAL_DIR": str(tmp / "local"),
    }
    env.update({k: None for k in ("DEPLOY_HELPER_LEDGER_TABLE", "DEPLOY_HELPER_FUNCTION", "DEPLOY_HELPER_AUDIENCE")})
    if fault == "no-region":
        env.update(AWS_REGION=None, AWS_DEFAULT_REGION=None)
    elif fault == "no-credentials":
        env.update(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    elif fault == "bad-aws-config":
        (tmp / "bad-config").write_text("[default\nregion = eu-west-1\n")
        env.update(AWS_CONFIG_FILE=str(tmp / "bad-config"), AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None)
    elif fault == "endpoint-down":
        env.update(AWS_ENDPOINT_URL=closed_port())
    return env


#: fault -> (exit status, what the one line must say)
EXPECTED = {
    "no-region": (2, "no AWS region: set AWS_REGION"),
    "no-credentials": (2, "no usable AWS credentials"),
    "bad-aws-config": (2, "AWS_CONFIG_FILE"),
    "endpoint-down": (2, "cannot reach AWS"),
    "access-denied": (1, "access denied"),
    "malformed-yaml": (2, "YAML"),
    "missing-file": (2, "does not exist"),
    "not-running": (2, "deploy-helper local up"),
}


def _break(what: str, fault: str, args: list[str], tmp: Path) -> list[str]:
    """``args`` with the command's input file made malformed or missing."""
    if what == "policies":
        policies = tmp / "policies"
        if fault == "malformed-yaml":
            policies.mkdir(exist_ok=True)
            (policies / "callers.yaml").write_text("callers: [unclosed\n")
            (policies / "rules.yaml").write_text("version: 1\nrules: {\n")
        return args
    files = {"grants": _grants(tmp), "accounts": _accounts(tmp), "event": _event(tmp)}
    path = files[what]
    if fault == "malformed-yaml":
        with open(path, "w") as fh:
            fh.write("grants: [unclosed\n  - {kind: ")
        return args
    return [str(tmp / "missing.yaml") if a == path else a for a in args]


CASES = [
    pytest.param(path, fault, id=f"{' '.join(path)}:{fault}")
    for path, (_, faults, file_arg) in COMMANDS.items()
    for fault in (*faults, *(("malformed-yaml", "missing-file") if file_arg else ()))
]


@pytest.mark.parametrize(("path", "fault"), CASES)
def test_one_line_and_an_exit_status_never_a_traceback(
    path: tuple[str, ...], fault: str, tmp_path: Path, deny_endpoint: str
) -> None:
    build, _, file_arg = COMMANDS[path]
    args = build(tmp_path)
    if fault in ("malformed-yaml", "missing-file"):
        assert file_arg is not None
        args = _break(file_arg, fault, args, tmp_path)
    result = CliRunner().invoke(main, [*path, *args], env=environment(fault, tmp_path, deny_endpoint))
    output = result.output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    status, says = EXPECTED[fault]
    if path == ("policies", "check"):  # its job is to report the files' problems: one per line, exit 1
        status, says = (1, "missing" if fault == "missing-file" else "YAML")
    if file_arg == "event" and fault == "malformed-yaml":
        says = "not JSON"
    assert result.exit_code == status, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    if path != ("policies", "check"):
        assert len(errors) == 1, output
        assert says in errors[0], output
        assert len(output.strip().splitlines()) <= (4 if "Usage:" in output else 1), output
    else:
        assert says in output


def test_aws_region_and_aws_default_region_and_the_option_are_all_honoured(tmp_path: Path, deny_endpoint: str) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "--region"):
        env = environment("no-region", tmp_path, deny_endpoint)
        option = ["--region", "eu-west-1"] if name == "--region" else []
        if not option:
            env[name] = "eu-west-1"
        DenyEverything.scopes.clear()
        result = CliRunner().invoke(main, [*option, "ledger", "list", *LEDGER], env=env)
        assert result.exit_code == 1, result.output
        assert "access denied" in result.output  # it got as far as asking AWS ...
        assert DenyEverything.scopes and all("/eu-west-1/dynamodb/" in s for s in DenyEverything.scopes)  # there


def test_bootstrap_with_the_endpoint_down_is_one_line_at_once(tmp_path: Path, deny_endpoint: str) -> None:
    """Not one failure per account after retries: the first call fails, and nothing else is tried."""
    accounts = tmp_path / "many.yaml"
    accounts.write_text("accounts: [" + ", ".join(f"'{100000000000 + i}'" for i in range(20)) + "]\n")
    env = {**environment("endpoint-down", tmp_path, deny_endpoint), "AWS_MAX_ATTEMPTS": None}
    result = CliRunner().invoke(main, ["bootstrap", "--accounts", str(accounts), *BOOTSTRAP, "--plan"], env=env)
    assert result.exit_code == 2
    assert result.output.count("cannot reach AWS") == 1
    assert "100000000019" not in result.output


def test_the_ledger_commands_say_where_the_ledger_is_missing(tmp_path: Path, deny_endpoint: str) -> None:
    env = environment("access-denied", tmp_path, deny_endpoint)
    result = CliRunner().invoke(main, ["ledger", "list"], env=env)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: no ledger table: pass --table or set DEPLOY_HELPER_LEDGER_TABLE")


def test_local_down_removes_only_what_local_up_wrote(tmp_path: Path) -> None:
    """A state directory the user pointed elsewhere keeps everything that is not the environment's."""
    from deploy_helper.local.environment import MANAGED, STATE_FILE

    state = {"pid": 2**22 + 4321, "endpoint": "http://127.0.0.1:9", "region": "us-east-1"}
    state.update(accounts={}, broker_env={}, facts={})
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "rules.yaml").write_text("version: 1\n")
    (tmp_path / "aws-config").write_text("")
    (tmp_path / "notes.txt").write_text("the user's own")
    result = CliRunner().invoke(main, ["local", "down", "--state-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "was not running any more" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert "notes.txt" not in MANAGED
