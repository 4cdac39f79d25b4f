"""A local AWS that stays up: ``deploy-helper local up|env|down``.

``up`` starts the embedded AWS (``LocalAws``: a moto server in its own process),
builds the seed scenario in it with the same harness the demo and the tests use
(``scenario.build``), puts the broker's roles into the target accounts with the
operator's rollout, and writes a state directory:

- ``local.json``: the endpoint, the process that keeps the server, the scenario's
  facts and the broker's environment (``Scenario.environ()``);
- ``aws-config`` / ``aws-credentials``: a profile per seed account
  (``deploy-helper-local`` acts in the broker's account; ``deploy-helper-local-<name>``
  assumes the administrator role of that account), for ``AWS_CONFIG_FILE`` /
  ``AWS_SHARED_CREDENTIALS_FILE``;
- the scenario's keys and ``policies/``, and ``grants.yaml``: the seed grants, ready
  for ``deploy-helper request``.

The server lives as long as the ``up`` process: in the foreground until Ctrl-C, or
detached (``--detach`` starts that same process in its own session, with its output
in ``server.log``). ``down`` signals that process and removes the directory. Nothing
here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from deploy_helper.local.server import ADMIN_ROLE, LOCAL_REGION, LocalAws

if TYPE_CHECKING:
    from collections.abc import Callable

    from deploy_helper.local.scenario import Scenario

STATE_FILE = "local.json"
PROFILE = "deploy-helper-local"
DEFAULT_DIR = Path(".deploy-helper") / "local"
#: The second caller's key (``build`` keeps it in memory only); written so the scenario can be reopened.
OTHER_KEY_FILE = "ci-service-b.pem"


class LocalEnvError(Exception):
    """The local environment is not in the state a command needs; the message says what to run."""


def state_dir(given: Path | None = None) -> Path:
    """Where the environment keeps its state: ``--state-dir``, ``DEPLOY_HELPER_LOCAL_DIR`` or .deploy-helper/local."""
    chosen = given or Path(os.environ.get("DEPLOY_HELPER_LOCAL_DIR") or DEFAULT_DIR)
    return chosen.resolve()


@dataclass(frozen=True)
class LocalState:
    """What ``local.json`` holds."""

    directory: Path
    pid: int
    endpoint: str
    region: str
    accounts: dict[str, str]
    broker_env: dict[str, str]
    facts: dict[str, Any]

    @classmethod
    def read(cls, directory: Path) -> LocalState | None:
        path = directory / STATE_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(
            directory=directory,
            pid=int(data["pid"]),
            endpoint=str(data["endpoint"]),
            region=str(data["region"]),
            accounts=dict(data["accounts"]),
            broker_env=dict(data["broker_env"]),
            facts=dict(data["facts"]),
        )

    def write(self) -> None:
        data = {
            "pid": self.pid,
            "endpoint": self.endpoint,
            "region": self.region,
            "accounts": self.accounts,
            "broker_env": self.broker_env,
            "facts": self.facts,
        }
        tmp = self.directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.directory / STATE_FILE)

    def alive(self) -> bool:
        """The process that keeps the server still runs, and the server answers."""
        if not _is_up_process(self.pid):
            return False
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=3):  # noqa: S310 - loopback
                return True
        except OSError:
            return False

    def environ(self) -> dict[str, str]:
        """The variables under which every command works against this environment."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_CONFIG_FILE": str(self.directory / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.directory / "aws-credentials"),
            "AWS_PROFILE": PROFILE,
            **{k: v for k, v in self.broker_env.items() if k != "AWS_ENDPOINT_URL"},
            "DEPLOY_HELPER_CALLER": self.facts["caller"],
            "DEPLOY_HELPER_KEY_ID": self.facts["key_id"],
            "DEPLOY_HELPER_KEY_FILE": str(self.directory / "ci-tooling.pem"),
            "DEPLOY_HELPER_BROKER_ROLE_ARN": self.facts["broker_exec_role"],
            "DEPLOY_HELPER_LOCAL_GRANTS": str(self.directory / "grants.yaml"),
            "DEPLOY_HELPER_LOCAL_DIR": str(self.directory),
        }

    def shell(self) -> str:
        """``export`` lines for a POSIX shell (``eval "$(deploy-helper local env)"``)."""
        lines = [
            f"# deploy-helper local AWS at {self.endpoint} (pid {self.pid}); stop it with: deploy-helper local down",
            "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN  # the profiles below act instead",
        ]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in self.environ().items()]
        return "\n".join(lines)


def _is_up_process(pid: int) -> bool:
    """``pid`` runs, and is a deploy-helper process (never signal a stranger that reused the pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        text = cmdline.read_bytes().replace(b"\0", b" ")
        return b"deploy_helper" in text or b"deploy-helper" in text
    return True


# -- up -----------------------------------------------------------------------------------------


def build_environment(local: LocalAws, directory: Path, progress: Callable[[str], None]) -> LocalState:
    """The seed scenario on ``local``, bootstrapped, and the files that describe it."""
    from deploy_helper.local import scenario as seed
    from deploy_helper.local.demo import bootstrap_targets
    from deploy_helper.local.stacks import deploy_service_stack

    directory.mkdir(parents=True, exist_ok=True)
    sc = seed.build(local, directory, bootstrap=False)
    progress("seed scenario: accounts " + ", ".join(f"{k}={v}" for k, v in seed.ACCOUNTS.items()))
    bootstrap_targets(sc)
    progress(f"bootstrap: broker role in {len(seed.TARGET_ACCOUNTS)} target accounts")
    stack = deploy_service_stack(sc, directory)
    progress(f"service stack with a Custom::DeployHelperGrant: {stack['stack_id']}")
    _write_other_key(sc, directory)
    _write_profiles(directory, sc.accounts)
    _write_grants(directory, sc)
    return LocalState(
        directory=directory,
        pid=os.getpid(),
        endpoint=local.endpoint,
        region=LOCAL_REGION,
        accounts=dict(sc.accounts),
        broker_env=sc.environ(),
        facts={
            "caller": seed.CALLER,
            "key_id": sc.signer.key_id,
            "other_key_id": sc.other_signer.key_id,
            "broker_exec_role": seed.BROKER_EXEC_ROLE,
            "authorizer_arn": sc.authorizer_arn,
            "api_ids": sc.api_ids,
            "deploy_roles": sc.deploy_roles,
            "bucket": sc.bucket,
            "key_arn": sc.key_arn,
            "resources": sc.resources,
            "stack": stack,
        },
    )


def _write_other_key(sc: Scenario, directory: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = sc.other_signer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = directory / OTHER_KEY_FILE
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_profiles(directory: Path, accounts: dict[str, str]) -> None:
    from deploy_helper.local.server import DEFAULT_ACCOUNT

    credentials = f"[{PROFILE}]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    config = [f"[profile {PROFILE}]", f"region = {LOCAL_REGION}", ""]
    for name, account in accounts.items():
        if account == DEFAULT_ACCOUNT:
            continue
        config += [
            f"[profile {PROFILE}-{name}]",
            f"role_arn = arn:aws:iam::{account}:role/{ADMIN_ROLE}",
            f"source_profile = {PROFILE}",
            f"region = {LOCAL_REGION}",
            "",
        ]
    (directory / "aws-credentials").write_text(credentials)
    (directory / "aws-config").write_text("\n".join(config))


def _write_grants(directory: Path, sc: Scenario) -> None:
    from deploy_helper.local import scenario as seed

    grants = {
        "caller": seed.CALLER,
        "audience": seed.AUDIENCE,
        "context": {"pipeline": "local-tour"},
        "grants": [sc.authorizer_grant("service-a"), sc.bucket_grant("service-a"), sc.key_grant("service-a")],
    }
    text = "# The seed scenario's grants for service-a: deploy-helper request THIS_FILE --plan --in-process\n"
    (directory / "grants.yaml").write_text(text + yaml.safe_dump(grants, sort_keys=False))


def serve(directory: Path, progress: Callable[[str], None]) -> None:
    """Run the environment in this process until SIGTERM or Ctrl-C; clean up the state file after."""
    import threading

    stopping = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        stopping.set()

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    local = LocalAws()  # points this process's boto3 at the server: the broker and the rollout use it
    try:
        local.start()
        progress(f"local AWS (moto) listening on {local.endpoint}")
        state = build_environment(local, directory, progress)
        state.write()
        flag = _dir_flag(directory)
        progress(f'ready: eval "$(deploy-helper local env{flag})"; stop with: deploy-helper local down{flag}')
        while not stopping.wait(0.5):
            if not local.running():
                raise LocalEnvError("the local AWS server exited")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        local.stop()
        (directory / STATE_FILE).unlink(missing_ok=True)


def _dir_flag(directory: Path) -> str:
    return "" if directory == state_dir() else f" --state-dir {shlex.quote(str(directory))}"


def start_detached(directory: Path, timeout: float = 300) -> LocalState:
    """Start ``local up`` in its own session and wait until its state file says it is ready."""
    import subprocess
    import sys

    directory.mkdir(parents=True, exist_ok=True)
    log = (directory / "server.log").open("w")
    child = subprocess.Popen(  # noqa: S603 - this interpreter, our own module
        [sys.executable, "-m", "deploy_helper", "local", "up", "--state-dir", str(directory)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = LocalState.read(directory)
        if state is not None and state.pid == child.pid:
            return state
        if child.poll() is not None:
            tail = (directory / "server.log").read_text()[-800:]
            raise LocalEnvError(f"the local AWS did not start (exit {child.returncode}): {tail}")
        time.sleep(0.2)
    child.terminate()
    raise LocalEnvError(f"the local AWS did not become ready within {int(timeout)} s; see {directory / 'server.log'}")


# -- env / down ----------------------------------------------------------------------------------


def running(directory: Path) -> LocalState:
    """The running environment in ``directory``, or ``LocalEnvError`` saying how to start one."""
    state = LocalState.read(directory)
    if state is None:
        raise LocalEnvError(f"no local AWS is running (nothing in {directory}): start one with: deploy-helper local up")
    if not state.alive():
        raise LocalEnvError(
            f"the local AWS recorded in {directory} is not running any more (pid {state.pid}): "
            "clean up with: deploy-helper local down, then deploy-helper local up"
        )
    return state


#: What ``up`` (and the scenario it builds) writes in the state directory; ``down`` removes
#: only these, then the directory if nothing else is left in it.
MANAGED = (
    STATE_FILE,
    STATE_FILE + ".tmp",
    "aws-config",
    "aws-credentials",
    "grants.yaml",
    "server.log",
    "ci-tooling.pem",
    OTHER_KEY_FILE,
    "checkpoint-key.pem",
    "policies",
    "events",
)


def stop(directory: Path, timeout: float = 20) -> str:
    """Stop the environment recorded in ``directory`` and remove what it wrote; says what was done."""
    state = LocalState.read(directory)
    if state is None:
        return f"no local AWS was running (nothing in {directory})"
    message = f"the local AWS at {state.endpoint} was not running any more; cleaned up {directory}"
    if _is_up_process(state.pid):
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _is_up_process(state.pid) and not _reaped(state.pid):
            time.sleep(0.1)
        if _is_up_process(state.pid) and not _reaped(state.pid):
            os.kill(state.pid, signal.SIGKILL)
        message = f"stopped the local AWS at {state.endpoint} (pid {state.pid}); cleaned up {directory}"
    _remove_managed(directory)
    return message


def _remove_managed(directory: Path) -> None:
    import contextlib
    import shutil

    for name in MANAGED:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()  # only if nothing else is in it


def _reaped(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child (a zombie still answers kill(pid, 0))."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        status = Path(f"/proc/{pid}/stat")
        return status.exists() and status.read_text().split(") ", 1)[-1].startswith("Z")
    return done == pid


# -- reopening the scenario (demo against a running environment) ---------------------------------


def reopen(state: LocalState) -> Scenario:
    """The running environment's seed scenario, as ``scenario.build`` returned it."""
    from deploy_helper.config import BrokerConfig
    from deploy_helper.local.scenario import Scenario
    from deploy_helper.trust.signing import Ed25519Signer

    local = LocalAws(set_environ=False, endpoint=state.endpoint)
    facts = state.facts
    config = BrokerConfig.from_env({**state.broker_env, "AWS_REGION": state.region})
    return Scenario(
        local=local,
        workdir=state.directory,
        policies_dir=config.policies_dir,
        signer=Ed25519Signer.from_file(facts["key_id"], state.directory / "ci-tooling.pem"),
        other_signer=Ed25519Signer.from_file(facts["other_key_id"], state.directory / OTHER_KEY_FILE),
        authorizer_arn=facts["authorizer_arn"],
        api_ids=dict(facts["api_ids"]),
        deploy_roles=dict(facts["deploy_roles"]),
        bucket=facts["bucket"],
        key_arn=facts["key_arn"],
        config=config,
        resources=dict(facts.get("resources", {})),
    )


def find_for_endpoint(endpoint: str, directory: Path | None = None) -> LocalState | None:
    """The running ``local up`` environment serving ``endpoint``, if any."""
    state = LocalState.read(state_dir(directory))
    if state is not None and state.endpoint.rstrip("/") == endpoint.rstrip("/") and state.alive():
        return state
    return None
