"""``deploy-helper request``: plan, apply or revoke the grants in a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from deploy_helper.cli.errors import ConfigError
from deploy_helper.cli.output import emit_json, failure, json_option, literal, print_response
from deploy_helper.exceptions import BrokerError
from deploy_helper.models import MAX_GRANTS

if TYPE_CHECKING:
    from pipeline_hooks.client import PartProgress

EPILOG = """
\b
Examples:
  # what would change (nothing is changed):
  deploy-helper request grants.yaml --plan --function deploy-helper --key-file ci.pem --key-id ci-2026
  # apply, signing with a KMS key (the private key never leaves KMS):
  deploy-helper request grants.yaml --apply --kms-key-id alias/ci-signing --key-id ci-kms-2026
  # what removing them would change, then remove them:
  deploy-helper request grants.yaml --plan --revoke ...
  deploy-helper request grants.yaml --revoke ...
  # against the embedded local AWS (see: deploy-helper local --help):
  eval "$(deploy-helper local env)"
  deploy-helper request "$DEPLOY_HELPER_LOCAL_GRANTS" --plan --in-process

\b
Modes: say what to do, as with terraform plan / apply: --plan (nothing changes;
with --revoke, what removing would change), --apply or --revoke. Without one of
them, or with --apply and --revoke (or --plan and --apply) together, nothing is
sent and the exit status is 2.

\b
Where the broker runs: --function NAME invokes the deployed Lambda (a pipeline's
way). --in-process runs the broker's real handler in this process, configured
by the same DEPLOY_HELPER_* variables as the function (DEPLOY_HELPER_AUDIENCE,
DEPLOY_HELPER_NONCE_TABLE, DEPLOY_HELPER_POLICIES_DIR, DEPLOY_HELPER_LEDGER_TABLE,
...; `deploy-helper local env` prints them) and acting with your AWS
credentials as the broker's role would: for the embedded local AWS, which cannot
run Lambda functions, and for debugging.

Every option can also come from the environment: DEPLOY_HELPER_FUNCTION,
DEPLOY_HELPER_CALLER, DEPLOY_HELPER_AUDIENCE, DEPLOY_HELPER_KEY_ID,
DEPLOY_HELPER_KEY_FILE, DEPLOY_HELPER_KMS_KEY_ID.

Large sets: one request carries at most 1,000 grants (and 512 KB); a larger file
is sent as several signed requests, one after another (request ids <id>.1of5,
<id>.2of5, ...), with one line per part on stderr; the results are merged back
in the file's order. Sending the same file again is safe: the parts are the same
and the broker changes nothing that is already in place. --part-size sets fewer
grants per request.

Revoking removes this pipeline's ownership (`owner:` in the file, default the
context's pipeline); a grant other stacks or pipelines still own is `kept`.

Exit status: 0 when every grant ended applied/unchanged/revoked/absent/kept (or
would, for --plan); 1 when any grant was denied or failed, or the request was
refused; 2 on a usage or configuration error.
"""


@click.command("request", epilog=EPILOG)
@click.argument("grants_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--plan", "plan", is_flag=True, help="Only show what would change (with diffs); change nothing.")
@click.option("--apply", "apply", is_flag=True, help="Add the grants.")
@click.option("--revoke", "revoke", is_flag=True, help="Remove the grants (with --plan: show what would go).")
@click.option("--caller", envvar="DEPLOY_HELPER_CALLER", help="Registered caller name (or `caller:` in the file).")
@click.option("--audience", envvar="DEPLOY_HELPER_AUDIENCE", help="The broker's audience, e.g. deploy-helper:prod.")
@click.option("--key-id", envvar="DEPLOY_HELPER_KEY_ID", required=True, help="The registered id of the signing key.")
@click.option(
    "--key-file",
    envvar="DEPLOY_HELPER_KEY_FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Ed25519 private key (PEM).",
)
@click.option(
    "--kms-key-id", envvar="DEPLOY_HELPER_KMS_KEY_ID", help="KMS key (ECC_NIST_P256) to sign with instead of a file."
)
@click.option("--function", envvar="DEPLOY_HELPER_FUNCTION", help="The broker function name or ARN to invoke.")
@click.option(
    "--in-process",
    is_flag=True,
    help="Run the broker's handler in this process, configured by the DEPLOY_HELPER_* variables "
    "(the embedded local AWS cannot run Lambda functions; see below).",
)
@click.option(
    "--part-size",
    type=click.IntRange(1, MAX_GRANTS),
    default=MAX_GRANTS,
    show_default=True,
    help="Most grants per signed request; larger sets are sent in several requests.",
)
@json_option
def request_command(
    grants_file: Path,
    plan: bool,
    apply: bool,
    revoke: bool,
    caller: str | None,
    audience: str | None,
    key_id: str,
    key_file: Path | None,
    kms_key_id: str | None,
    function: str | None,
    in_process: bool,
    part_size: int,
    as_json: bool,
) -> None:
    """Plan, apply or revoke the grants in GRANTS_FILE through the broker.

    The file lists grants (see examples/grants.yaml); string values may use
    ${env:NAME} and ${stack:STACK.OUTPUT} placeholders, resolved before signing.
    """
    mode, dry_run = _mode(plan, apply, revoke)
    from deploy_helper.cli.errors import aws_session
    from pipeline_hooks.client import BrokerClient, InProcessTransport, LambdaTransport, Transport, lambda_client
    from pipeline_hooks.grants_file import default_resolvers, load_grants_file

    session = aws_session()
    try:
        spec = load_grants_file(grants_file, default_resolvers(session))
    except BrokerError as exc:
        raise ConfigError(exc.message) from exc
    caller = caller or spec.caller
    audience = audience or spec.audience
    if not caller or not audience:
        raise click.UsageError("give --caller and --audience (or caller:/audience: in the grants file)")
    signer = _signer(key_id, key_file, kms_key_id, session)
    transport: Transport
    if in_process and function:
        raise click.UsageError("give either --function (invoke the deployed broker) or --in-process, not both")
    if in_process:
        from deploy_helper.config import BrokerConfig
        from deploy_helper.execution.broker import Broker

        try:
            transport = InProcessTransport(Broker.from_config(BrokerConfig.from_env(), session=session))
        except BrokerError as exc:
            raise ConfigError(
                f"{exc.message} (--in-process reads the broker's DEPLOY_HELPER_* variables; "
                'for the local AWS: eval "$(deploy-helper local env)")'
            ) from exc
    elif function:
        transport = LambdaTransport(function, lambda_client(session))
    else:
        raise click.UsageError("give --function (the broker to invoke) or --in-process")
    client = BrokerClient(caller=caller, audience=audience, signer=signer, transport=transport, max_grants=part_size)
    try:
        response = client.request(
            spec.grants,
            action=mode,
            dry_run=dry_run,
            context=spec.context,
            owner=spec.owner,
            progress=_print_progress,
        )
    except BrokerError as exc:
        raise failure(exc.message) from exc
    if as_json:
        emit_json(response.model_dump(mode="json", exclude_none=True))
    else:
        print_response(response, show_diff=dry_run)
    sys.exit(1 if response.failed else 0)


def _print_progress(part: PartProgress) -> None:
    """One line per part of a split request, on stderr: ``part 2/5: 1,000 grants ... done in 3.1 s``."""
    if part.status == "sending":
        click.echo(literal(part.heading()), err=True, nl=False)
        return
    click.echo(literal(part.ending()), err=True)


def _mode(plan: bool, apply: bool, revoke: bool) -> tuple[str, bool]:
    """(action, dry run) from the flags; anything ambiguous is refused before anything is read."""
    if apply and revoke:
        raise click.UsageError("--apply and --revoke contradict each other: give one")
    if plan and apply:
        raise click.UsageError("--plan changes nothing and --apply changes AWS: give one")
    if not (plan or apply or revoke):
        raise click.UsageError(
            "say what to do: --plan (show what would change), --apply (add the grants) or --revoke (remove them)"
        )
    return ("revoke" if revoke else "apply"), plan


def _signer(key_id: str, key_file: Path | None, kms_key_id: str | None, session: Any) -> Any:
    from deploy_helper.trust.signing import Ed25519Signer, KmsSigner

    if bool(key_file) == bool(kms_key_id):
        raise click.UsageError("give exactly one of --key-file and --kms-key-id")
    if key_file:
        try:
            return Ed25519Signer.from_file(key_id, key_file)
        except BrokerError as exc:
            raise ConfigError(exc.message) from exc
    return KmsSigner(key_id=key_id, kms_key_id=str(kms_key_id), client=session.client("kms"))
