"""``deploy-helper bootstrap``: put the broker's roles into target accounts.

The logic lives in :mod:`account_bootstrap.rollout`; this module turns options
into its arguments and its results into a progress bar, a summary table,
``--json`` and an exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from account_bootstrap import BOOTSTRAP_VERSION, DEFAULT_BROKER_ROLE_NAME, DEFAULT_READER_ROLE_NAME
from account_bootstrap.rollout import (
    DEFAULT_ADMIN_ROLE,
    DEFAULT_STACK_NAME,
    DEFAULT_STACK_SET_NAME,
    AccountEntry,
    AccountResult,
    AccountStatus,
    AssumeRoleSessions,
    BootstrapError,
    BootstrapParameters,
    Count,
    RolloutReport,
    bootstrap_accounts,
    bootstrap_organization,
    load_accounts_file,
    status_accounts,
    status_organization,
)
from deploy_helper.cli.output import literal, text

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import boto3
    from rich.text import Text

_STYLE = {
    "succeeded": "green",
    "unchanged": "dim",
    "planned": "cyan",
    "failed": "bold red",
    "skipped": "yellow",
    "current": "green",
    "outdated": "yellow",
    "newer": "yellow",
    "pending": "yellow",
    "not-bootstrapped": "red",
    "error": "bold red",
}
_CHANGE_WORDS = {
    "create": "create",
    "update": "update",
    "recreate": "recreate",
    "none": "-",
    None: "?",
}


class _CountType(click.ParamType):
    name = "N|N%"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Count:
        if isinstance(value, Count):
            return value
        try:
            return Count.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


COUNT = _CountType()


def _session(ctx: click.Context, region: str | None) -> boto3.Session:
    """The operator's session: injected through ``ctx.obj['boto3_session']`` or boto3's defaults."""
    injected = ctx.obj.get("boto3_session") if isinstance(ctx.obj, dict) else None
    if injected is not None:
        return injected
    from deploy_helper.cli.errors import aws_session

    return aws_session(region)


def _region(session: boto3.Session, region: str | None) -> str:
    """The region to work in, once the session is known to reach AWS."""
    chosen = region or session.region_name
    if not chosen:
        raise click.UsageError("no AWS region: set AWS_REGION or pass --region")
    from deploy_helper.cli.errors import preflight

    # No credentials, no endpoint, no access: one line now, not one failure per account.
    preflight(session, chosen)
    return chosen


def _client_config() -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "adaptive", "max_attempts": 10}, connect_timeout=10, read_timeout=60)


def _targets(ous: Sequence[str], accounts_file: Path | None, account_ids: Sequence[str]) -> list[AccountEntry] | None:
    """None for the StackSets path; the accounts for the per-account path."""
    if ous and (accounts_file or account_ids):
        raise click.UsageError("choose one path: --ou (StackSets) or --accounts/--account (account by account)")
    if ous:
        return None
    if not accounts_file and not account_ids:
        raise click.UsageError(
            "say where to deploy: --ou OU_ID (StackSets, Organizations) or --accounts FILE / --account ID"
        )
    entries: list[AccountEntry] = []
    if accounts_file:
        try:
            entries = load_accounts_file(accounts_file)
        except BootstrapError as exc:
            raise click.BadParameter(str(exc), param_hint="--accounts") from exc
    known = {entry.id for entry in entries}
    for account in account_ids:
        try:
            entry = AccountEntry(id=account)
        except ValueError as exc:
            raise click.BadParameter(f"{account!r} is not a 12-digit AWS account id", param_hint="--account") from exc
        if entry.id not in known:
            entries.append(entry)
            known.add(entry.id)
    return entries


class _Progress:
    """A progress bar on a terminal, one line per account otherwise (CI logs); both on stderr."""

    def __init__(self, err: Console, title: str, total: int) -> None:
        self.err = err
        self.total = total
        self.done = 0
        self.bar: Progress | None = None
        self.task: Any = None
        self.title = title

    def __enter__(self) -> _Progress:
        if self.err.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[last]}", markup=False),
                console=self.err,
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(self.title, total=self.total or None, last="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def start(self, total: int) -> None:
        """Set the number of accounts once it is known."""
        self.total = total
        if self.bar is not None:
            self.bar.update(self.task, total=total or None)

    def __call__(self, result: AccountResult) -> None:
        self.done += 1
        word = f"{result.outcome} ({_CHANGE_WORDS[result.change]})"
        if self.bar is not None:
            self.bar.update(self.task, advance=1, last=literal(f"{result.account} {word}"))
        else:
            self.err.print(text(f"[{self.done}/{self.total or '?'}] {result.account} {word}"))


def _report_table(report: RolloutReport) -> Table:
    title = "Bootstrap plan" if report.plan else "Bootstrap"
    table = Table(title=text(f"{title} (version {report.version}, {report.mode})"), title_justify="left")
    for column in ("Account", "Name", "Change", "Result", "Version", "Detail"):
        table.add_column(column, overflow="fold")
    for result in report.results:
        table.add_row(
            text(result.account),
            text(result.name),
            text(_CHANGE_WORDS[result.change]),
            text(result.outcome, _STYLE.get(result.outcome, "")),
            text(result.version),
            text(result.message),
        )
    return table


def _emit_report(report: RolloutReport, as_json: bool, out: Console, err: Console) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        if report.stack_set_change is not None:
            out.print(text(f"Stack set: {_CHANGE_WORDS[report.stack_set_change]}"))
        out.print(_report_table(report))
        for note in report.notes:
            out.print(text(f"Note: {note}"))
        out.print(text(report.summary()))
    if report.failed:
        lines = "\n".join(literal(f"  {r.account}: {r.outcome}: {r.message}") for r in report.failed)
        err.print(
            f"bootstrap failed in {len(report.failed)} account(s):\n{lines}\n"
            "Fix the cause and re-run the same command; "
            "accounts already done are left as they are.",
            highlight=False,
            markup=False,
        )
        raise SystemExit(1)


def _consoles() -> tuple[Console, Console]:
    """Consoles that read no markup from strings: what they print may quote AWS or a file."""
    plain: dict[str, Any] = {"markup": False, "emoji": False, "highlight": False}
    return Console(file=sys.stdout, soft_wrap=False, **plain), Console(file=sys.stderr, **plain)


def _options(*options: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[..., Any]:
    """One decorator for several click options, listed in the order they are shown."""

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return apply


_target_options = _options(
    click.option(
        "--ou",
        "ous",
        multiple=True,
        metavar="OU_ID",
        help="StackSets path: an organizational unit (ou-xxxx-xxxxxxxx) or the root (r-xxxx). Repeatable.",
    ),
    click.option(
        "--accounts",
        "accounts_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Per-account path: a YAML/JSON file with an 'accounts' list (see above).",
    ),
    click.option(
        "--account",
        "account_ids",
        multiple=True,
        metavar="ID",
        help="Per-account path: an account id. Repeatable.",
    ),
    click.option(
        "--admin-role",
        default=DEFAULT_ADMIN_ROLE,
        show_default=True,
        help="Per-account path: the administrator role assumed in each account.",
    ),
    click.option(
        "--stack-set-name",
        default=DEFAULT_STACK_SET_NAME,
        show_default=True,
        help="StackSets path: the stack set's name.",
    ),
    click.option(
        "--call-as",
        type=click.Choice(["self", "delegated-admin"]),
        default="self",
        show_default=True,
        help="StackSets path: run as the management account or as a StackSets delegated administrator.",
    ),
    click.option(
        "--region",
        help="Region of the stack set or stacks (IAM roles are global: one region is enough).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."),
)
_role_name_options = _options(
    click.option(
        "--role-name",
        default=DEFAULT_BROKER_ROLE_NAME,
        show_default=True,
        help="Name of the broker role.",
    ),
    click.option(
        "--reader-role-name",
        default=DEFAULT_READER_ROLE_NAME,
        show_default=True,
        help="Name of the reader role.",
    ),
)


@click.group("bootstrap", invoke_without_command=True, context_settings={"max_content_width": 100})
@_target_options
@click.option(
    "--broker-role-arn",
    envvar="DEPLOY_HELPER_BROKER_ROLE_ARN",
    metavar="ARN",
    help="The broker Lambda's execution role, the only principal the roles trust. [env: DEPLOY_HELPER_BROKER_ROLE_ARN]",
)
@click.option(
    "--external-id",
    envvar="DEPLOY_HELPER_EXTERNAL_ID",
    metavar="TEXT",
    help="The ExternalId the broker sends; prefer the environment variable to keep it out of "
    "shell history. [env: DEPLOY_HELPER_EXTERNAL_ID]",
)
@_role_name_options
@click.option(
    "--max-session-duration",
    type=click.IntRange(3600, 43200),
    default=3600,
    show_default=True,
    help="Longest session of either role, in seconds.",
)
@click.option(
    "--opt-in-tag-value",
    default="true",
    show_default=True,
    help="Resources tagged deploy-helper:managed=VALUE opt in; '' turns tag opt-in off.",
)
@click.option(
    "--function-pattern",
    multiple=True,
    metavar="GLOB",
    help="Lambda function names that opt in. Repeatable.",
)
@click.option(
    "--bucket-pattern",
    multiple=True,
    metavar="GLOB",
    help="S3 bucket names that opt in. Repeatable.",
)
@click.option(
    "--key-alias-pattern",
    multiple=True,
    metavar="GLOB",
    help="KMS key aliases (alias/...) whose keys opt in. Repeatable.",
)
@click.option(
    "--resource-arn-pattern",
    multiple=True,
    metavar="GLOB",
    help="ARNs of ECR repositories, SQS queues, SNS topics, secrets or event buses that opt in. Repeatable.",
)
@click.option(
    "--stack-name",
    default=DEFAULT_STACK_NAME,
    show_default=True,
    help="Per-account path: the stack's name.",
)
@click.option(
    "--failure-tolerance",
    type=COUNT,
    default="10%",
    show_default=True,
    help="Accounts that may fail before the rollout stops starting new ones (3 or 10%).",
)
@click.option(
    "--max-concurrency",
    type=COUNT,
    default="25%",
    show_default=True,
    help="Accounts deployed at the same time (5 or 25%).",
)
@click.option(
    "--auto-deployment/--no-auto-deployment",
    default=True,
    show_default=True,
    help="StackSets path: deploy to accounts that join the OUs later, without a re-run.",
)
@click.option(
    "--retain-stacks-on-account-removal",
    is_flag=True,
    help="StackSets path: keep the roles in accounts that leave the OUs.",
)
@click.option("--plan", is_flag=True, help="Show what would change in each account; change nothing.")
@click.pass_context
def bootstrap(ctx: click.Context, **options: Any) -> None:
    """Put the broker's roles into target accounts, and keep them current.

    Deploys account_bootstrap/broker-role.yaml: the role the broker assumes to
    make grants (only on resources that opt in) and a read-only role to verify
    custom-resource events. Both trust only the broker's execution role with
    its ExternalId.

    \b
    Two paths:
      --ou OU_ID ...        a service-managed StackSet over organizational units,
                            run from the management account (or --call-as
                            delegated-admin); new accounts in the OUs get the
                            roles automatically. StackSets skip the management
                            account itself: use the per-account path for it.
      --accounts FILE,      one stack per account, through an administrator role
      --account ID ...      assumed in each (--admin-role).

    \b
    An accounts file:
      accounts:
        - "111111111111"
        - {id: "222222222222", name: payments, admin_role: PaymentsAdmin}

    \b
    Examples:
      export DEPLOY_HELPER_BROKER_ROLE_ARN=arn:aws:iam::999999999999:role/broker-fn
      export DEPLOY_HELPER_EXTERNAL_ID=$(cat external-id.txt)
      deploy-helper bootstrap --ou ou-ab12-34cd5678 --plan
      deploy-helper bootstrap --ou ou-ab12-34cd5678 --failure-tolerance 2 --max-concurrency 10
      deploy-helper bootstrap --accounts accounts.yaml --function-pattern 'authorizer-*'
      deploy-helper bootstrap status --accounts accounts.yaml

    Running it again changes nothing and says so; after a failure, fix the
    cause and re-run. Exit status 1 names every account that failed and why.
    """
    if ctx.invoked_subcommand is not None:
        return
    out, err = _consoles()
    entries = _targets(options["ous"], options["accounts_file"], options["account_ids"])
    if not options["broker_role_arn"]:
        raise click.UsageError("--broker-role-arn (or DEPLOY_HELPER_BROKER_ROLE_ARN) is required")
    if not options["external_id"]:
        raise click.UsageError("set DEPLOY_HELPER_EXTERNAL_ID (or --external-id) to the broker's ExternalId")
    try:
        parameters = BootstrapParameters(
            broker_role_arn=options["broker_role_arn"],
            external_id=options["external_id"],
            broker_role_name=options["role_name"],
            reader_role_name=options["reader_role_name"],
            max_session_duration=options["max_session_duration"],
            opt_in_tag_value=options["opt_in_tag_value"],
            function_name_patterns=options["function_pattern"],
            bucket_name_patterns=options["bucket_pattern"],
            key_alias_patterns=options["key_alias_pattern"],
            resource_arn_patterns=options["resource_arn_pattern"],
        )
    except ValueError as exc:
        raise click.UsageError(_pydantic_message(exc)) from exc
    session = _session(ctx, options["region"])
    region = _region(session, options["region"])
    common: dict[str, Any] = {
        "plan": options["plan"],
        "failure_tolerance": options["failure_tolerance"],
        "max_concurrency": options["max_concurrency"],
        "client_config": _client_config(),
    }
    try:
        if entries is None:
            with _Progress(err, "StackSet", 0) as progress:
                report = bootstrap_organization(
                    parameters,
                    session,
                    ous=options["ous"],
                    region=region,
                    stack_set_name=options["stack_set_name"],
                    call_as="DELEGATED_ADMIN" if options["call_as"] == "delegated-admin" else "SELF",
                    auto_deployment=options["auto_deployment"],
                    retain_stacks_on_account_removal=options["retain_stacks_on_account_removal"],
                    on_start=progress.start,
                    on_result=progress,
                    **common,
                )
        else:
            sessions = AssumeRoleSessions(session, options["admin_role"], region=region, config=common["client_config"])
            with _Progress(err, "Accounts", len(entries)) as progress:
                report = bootstrap_accounts(
                    entries,
                    parameters,
                    sessions,
                    region=region,
                    stack_name=options["stack_name"],
                    on_result=progress,
                    **common,
                )
    except BootstrapError as exc:
        raise click.ClickException(str(exc)) from exc
    except (ClientError, BotoCoreError) as exc:
        raise click.ClickException(f"AWS refused to start the rollout: {exc}") from exc
    _emit_report(report, options["as_json"], out, err)


def _pydantic_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        names = {
            "broker_role_arn": "--broker-role-arn",
            "external_id": "--external-id",
            "function_name_patterns": "--function-pattern",
            "bucket_name_patterns": "--bucket-pattern",
            "key_alias_patterns": "--key-alias-pattern",
            "resource_arn_patterns": "--resource-arn-pattern",
            "opt_in_tag_value": "--opt-in-tag-value",
            "broker_role_name": "--role-name",
            "reader_role_name": "--reader-role-name",
        }
        parts = []
        for error in errors():
            location = [str(part) for part in error.get("loc", ())]
            option = names.get(location[0], location[0]) if location else "options"
            parts.append(f"{option}: {error.get('msg', '')}")
        return "; ".join(parts)
    return str(exc)


def _status_rows(statuses: Sequence[AccountStatus]) -> Iterator[tuple[Text, ...]]:
    for status in statuses:
        style = _STYLE.get(status.state, "")
        yield (
            text(status.account),
            text(status.name),
            text(status.state, style),
            text(status.version),
            text(status.message),
        )


@bootstrap.command("status")
@_target_options
@_role_name_options
@click.pass_context
def status(ctx: click.Context, **options: Any) -> None:
    """Show which accounts are bootstrapped, and at which version.

    \b
    --ou ...                  the stack set's instances (and accounts of the OUs
                              that have none), as the management account sees them
    --accounts / --account    the roles themselves, read in each account through
                              --admin-role: exactly what the broker will find

    Exit status 1 when any account is not at the current version; its Detail
    says what to run.
    """
    out, err = _consoles()
    entries = _targets(options["ous"], options["accounts_file"], options["account_ids"])
    session = _session(ctx, options["region"])
    region = _region(session, options["region"])
    config = _client_config()
    try:
        if entries is None:
            statuses = status_organization(
                session,
                region=region,
                stack_set_name=options["stack_set_name"],
                ous=options["ous"],
                call_as="DELEGATED_ADMIN" if options["call_as"] == "delegated-admin" else "SELF",
                client_config=config,
            )
        else:
            sessions = AssumeRoleSessions(session, options["admin_role"], region=region, config=config)
            statuses = status_accounts(
                entries,
                sessions,
                broker_role_name=options["role_name"],
                reader_role_name=options["reader_role_name"],
                client_config=config,
            )
    except (ClientError, BotoCoreError) as exc:
        raise click.ClickException(f"AWS refused the status query: {exc}") from exc
    behind = [s for s in statuses if s.state != "current"]
    if options["as_json"]:
        click.echo(
            json.dumps(
                {
                    "bootstrap_version": BOOTSTRAP_VERSION,
                    "accounts": [s.to_dict() for s in statuses],
                },
                indent=2,
            )
        )
    else:
        table = Table(
            title=text(f"Bootstrap status (this deploy-helper: version {BOOTSTRAP_VERSION})"),
            title_justify="left",
        )
        for column in ("Account", "Name", "State", "Version", "Detail"):
            table.add_column(column, overflow="fold")
        for row in _status_rows(statuses):
            table.add_row(*row)
        out.print(table)
        current = len(statuses) - len(behind)
        out.print(
            f"{current} of {len(statuses)} accounts at bootstrap version {BOOTSTRAP_VERSION}.",
            highlight=False,
        )
    if behind:
        names = ", ".join(f"{s.account} ({s.state})" for s in behind)
        err.print(text(f"not current: {names}"))
        raise SystemExit(1)
