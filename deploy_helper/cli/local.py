"""``deploy-helper local up|env|down``: a local AWS with the broker in it, to work in."""

from __future__ import annotations

import json
from pathlib import Path

import click

from deploy_helper.cli.errors import CliError, ConfigError
from deploy_helper.cli.output import console, json_option

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DEPLOY_HELPER_LOCAL_DIR",
    help="Where the environment keeps its state, keys and profiles "
    "(env DEPLOY_HELPER_LOCAL_DIR; default ./.deploy-helper/local).",
)


@click.group(
    "local",
    epilog="""
\b
Examples:
  deploy-helper local up --detach
  eval "$(deploy-helper local env)"
  deploy-helper request "$DEPLOY_HELPER_LOCAL_GRANTS" --plan --in-process
  deploy-helper request "$DEPLOY_HELPER_LOCAL_GRANTS" --apply --in-process
  deploy-helper ledger list
  deploy-helper local down
""",
)
def local() -> None:
    """A local AWS (moto, on 127.0.0.1) with the broker set up in it, kept running to work in.

    `local up` builds the seed scenario the demo uses (a tooling, a token-service
    and two service accounts, the broker's tables, keys, policies and roles);
    `local env` prints the settings under which every other command works
    against it unchanged: AWS_ENDPOINT_URL, a profile per account
    (deploy-helper-local for the broker's account, deploy-helper-local-NAME for
    the others) and the broker's DEPLOY_HELPER_* variables.

    The local AWS cannot run Lambda functions: `request --in-process` runs the
    broker's real handler in the CLI's process, with the same variables.
    """


@local.command(
    "up",
    epilog="""
\b
Examples:
  deploy-helper local up                 # in the foreground, until Ctrl-C
  deploy-helper local up --detach        # in the background; stop it with: deploy-helper local down
  deploy-helper local up --detach --state-dir /tmp/dh-local
""",
)
@state_dir_option
@click.option("--detach", is_flag=True, help="Run in the background and return once it is ready.")
def up(state_dir: Path | None, detach: bool) -> None:
    """Start the local AWS with the broker set up in it (says so if it already runs)."""
    from deploy_helper.local.environment import LocalEnvError, LocalState, serve, start_detached
    from deploy_helper.local.environment import state_dir as resolve

    directory = resolve(state_dir)
    existing = LocalState.read(directory)
    if existing is not None and existing.alive():
        click.echo(
            f"already running: the local AWS at {existing.endpoint} (pid {existing.pid}, state in {directory}); "
            "stop it with: deploy-helper local down"
        )
        return
    if existing is not None:
        from deploy_helper.local.environment import stop

        stop(directory)  # a stale state from a process that is gone
    err = console(stderr=True)
    try:
        if detach:
            state = start_detached(directory)
            click.echo(
                f"local AWS at {state.endpoint} (pid {state.pid}); state, keys and profiles in {directory}\n"
                f'next: eval "$(deploy-helper local env{_flag(state_dir)})"; '
                f"stop with: deploy-helper local down{_flag(state_dir)}"
            )
            return
        serve(directory, lambda message: err.print(f"[bold cyan]•[/bold cyan] {message}", markup=True))
    except LocalEnvError as exc:
        raise CliError(str(exc)) from exc


@local.command(
    "env",
    epilog="""
\b
Examples:
  eval "$(deploy-helper local env)"
  deploy-helper local env --json
  env $(deploy-helper local env --json | jq -r 'to_entries[] | "\\(.key)=\\(.value)"') deploy-helper ledger list
""",
)
@state_dir_option
@json_option
def env(state_dir: Path | None, as_json: bool) -> None:
    """Print the settings that point every command at the running local AWS (export lines)."""
    from deploy_helper.local.environment import LocalEnvError, running
    from deploy_helper.local.environment import state_dir as resolve

    try:
        state = running(resolve(state_dir))
    except LocalEnvError as exc:
        raise ConfigError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(state.environ(), indent=2))
    else:
        click.echo(state.shell())


@local.command(
    "down",
    epilog="""
\b
Examples:
  deploy-helper local down
  deploy-helper local down --state-dir /tmp/dh-local
""",
)
@state_dir_option
def down(state_dir: Path | None) -> None:
    """Stop the local AWS and remove its state, keys and profiles (nothing else is touched)."""
    from deploy_helper.local.environment import state_dir as resolve
    from deploy_helper.local.environment import stop

    click.echo(stop(resolve(state_dir)))


def _flag(state_dir: Path | None) -> str:
    return f" --state-dir {state_dir}" if state_dir else ""


@local.command(
    "invoke",
    epilog="""
\b
Examples:
  deploy-helper local invoke "$DEPLOY_HELPER_LOCAL_DIR/events/create.json"
  deploy-helper local invoke saved-envelope.json

\b
The event runs through deploy_helper.handler.lambda_handler in this process,
configured by the DEPLOY_HELPER_* variables (eval "$(deploy-helper local env)").
A custom-resource event's answer, which CloudFormation would receive at the
event's ResponseURL, is caught on 127.0.0.1 instead and printed with the
handler's own answer. Exit status 1 when the answer is a failure.
""",
)
@click.argument("event_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def invoke(event_file: Path) -> None:
    """Replay a Lambda event (a custom-resource event or a signed request) through the real handler."""
    from deploy_helper.local.stacks import invoke as run

    try:
        event = json.loads(event_file.read_text())
    except ValueError as exc:
        raise ConfigError(f"{event_file}: not JSON: {exc}") from exc
    result = run(event)
    click.echo(json.dumps(result, indent=2))
    cfn = result.get("cloudformation_response")
    answer = result.get("answer") or {}
    failed = cfn.get("Status") != "SUCCESS" if cfn is not None else not answer.get("ok", False)
    raise SystemExit(1 if failed else 0)
