"""The ``deploy-helper`` command line.

Each command group lives in its own module and is attached here; none of this
is imported by the Lambda handler, so the CLI's dependencies (click, rich) do
not add to the function's cold start.
"""

from __future__ import annotations

import click

from deploy_helper import __version__
from deploy_helper.cli.errors import ErrorMappingGroup


@click.group(cls=ErrorMappingGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="deploy-helper")
@click.option(
    "--region",
    metavar="REGION",
    help="AWS region for this run (else AWS_REGION, AWS_DEFAULT_REGION or the profile's region).",
)
def main(region: str | None) -> None:
    """deploy-helper: a central permission broker for multi-account AWS CI/CD.

    Trusted CI/CD accounts send signed requests; the broker checks them against
    the reviewed rules in policies/, assumes a narrow role in the target account,
    makes the grant idempotently and records every decision in its ledger.

    \b
    Start here:
      deploy-helper demo              the whole flow on an embedded local AWS
      deploy-helper keys generate     a signing key pair for a CI/CD caller
      deploy-helper policies check    validate policies/callers.yaml and rules.yaml
      deploy-helper request FILE      plan / apply / revoke the grants in FILE
      deploy-helper local up          keep a local AWS with the broker running

    AWS endpoints and credentials come from boto3's own configuration
    (AWS_PROFILE, AWS_REGION or AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, ...).
    A configuration or connection problem is one line saying what to set
    (exit status 2); a refused or failed grant exits with 1.
    """


def _attach() -> None:
    from deploy_helper.cli import commands
    from deploy_helper.cli.examples import add_examples

    for command in commands.all_commands():
        main.add_command(command)
    add_examples(main)


_attach()
