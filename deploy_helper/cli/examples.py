"""Examples for the ``--help`` of commands whose own text has none.

A command that writes ``Examples:`` in its docstring or epilog keeps it; the
others get theirs from here when the CLI is assembled. A test walks the whole
command tree and fails for any command without an example.
"""

from __future__ import annotations

import click

_LEDGER = (
    "The ledger's place comes from DEPLOY_HELPER_LEDGER_TABLE (and _CHECKPOINT_BUCKET,\n"
    "_CHECKPOINT_KEY), as `deploy-helper local env` prints them, or from --table."
)

EXAMPLES: dict[str, str] = {
    "": """
  deploy-helper demo
  deploy-helper local up --detach && eval "$(deploy-helper local env)"
  deploy-helper request grants.yaml --plan --in-process
  deploy-helper ledger verify""",
    "demo": """
  deploy-helper demo                     # its own local AWS, stopped afterwards
  deploy-helper demo --json > report.json
  eval "$(deploy-helper local env)" && deploy-helper demo   # into a running local AWS, kept there""",
    "ledger": f"""
  deploy-helper ledger list --account 333333333333 --since 2026-11-01
  deploy-helper ledger verify
  deploy-helper ledger export --format csv -o ledger.csv

{_LEDGER}""",
    "ledger list": f"""
  deploy-helper ledger list --account 333333333333 --since 2026-11-01
  deploy-helper ledger list --decision denied --caller ci-tooling --json
  deploy-helper ledger list --resource dh-artifacts-111111111111 --until 2026-11-30T12:00:00Z

{_LEDGER}""",
    "ledger show": """
  deploy-helper ledger show 42
  deploy-helper ledger show 42 --table deploy-helper-ledger""",
    "ledger export": """
  deploy-helper ledger export -o ledger.jsonl                  # exact stored fields
  deploy-helper ledger export --format csv --since 2026-11-01 -o november.csv
  deploy-helper ledger export --format csv --account 333333333333 | head""",
    "ledger verify": """
  deploy-helper ledger verify
  deploy-helper ledger verify --public-key checkpoint.pub.pem --checkpoints-dir kept/ --json""",
    "ledger prove": """
  deploy-helper ledger prove 42 > entry-42.proof.json
  deploy-helper ledger prove 42 --checkpoint 7 > entry-42.proof.json""",
    "ledger check-proof": """
  deploy-helper ledger check-proof entry-42.proof.json --public-key checkpointer.pub.pem
  deploy-helper ledger check-proof entry-42.proof.json --public-key checkpointer.pub.pem --json""",
    "ledger bundle": """
  deploy-helper ledger bundle --out audit-2026-11/
  deploy-helper ledger verify --bundle audit-2026-11/ --public-key checkpointer.pub.pem""",
    "ledger pull": """
  deploy-helper ledger pull --out kept-checkpoints/
  deploy-helper ledger verify --since kept-checkpoints/""",
    "ledger active": """
  deploy-helper ledger active
  deploy-helper ledger active --account 333333333333 --json""",
    "ledger checkpoint": """
  deploy-helper ledger checkpoint
  deploy-helper ledger checkpoint --bucket deploy-helper-checkpoints --checkpoint-key kms:alias/checkpoints""",
    "keys": """
  deploy-helper keys generate --caller ci-tooling --key-id ci-tooling-2026-11""",
    "policies": """
  deploy-helper policies check
  deploy-helper policies check policies/ --json""",
    "policies check": """
  deploy-helper policies check                 # ./policies
  deploy-helper policies check path/to/policies --json""",
    "bootstrap status": """
  deploy-helper bootstrap status --accounts accounts.yaml
  deploy-helper bootstrap status --ou ou-ab12-34cd5678 --json
  deploy-helper bootstrap status --account 111111111111 --admin-role OrganizationAccountAccessRole""",
}


def has_example(command: click.Command) -> bool:
    return "Examples:" in f"{command.help or ''}\n{command.epilog or ''}"


def add_examples(command: click.Command, path: str = "") -> None:
    """Give ``command`` and its subcommands the examples above where they have none of their own."""
    if not has_example(command) and path in EXAMPLES:
        text = "\b\nExamples:" + EXAMPLES[path]
        command.epilog = f"{text}\n\n{command.epilog.strip()}" if command.epilog else text
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            add_examples(sub, f"{path} {name}".strip())
