"""``deploy-helper demo``: the whole flow on an embedded local AWS."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from deploy_helper.cli.output import console, emit_json, json_option, short, table, text


@click.command(
    "demo",
    epilog="""
\b
By default nothing here touches a real AWS account and nothing needs to run: a
moto server is started on 127.0.0.1 for the run and stopped afterwards. With
AWS_ENDPOINT_URL set (eval "$(deploy-helper local env)"), the demo works in that
local AWS instead and leaves its grants and ledger there, to be read with
`deploy-helper ledger ...` or plain boto3 / the AWS CLI. Exit status 0 when
every step did what it should (checked by reading the policies back), 1
otherwise.
""",
)
@click.option(
    "--workdir", type=click.Path(file_okay=False, path_type=Path), help="Keep the generated keys and policies here."
)
@json_option
def demo(workdir: Path | None, as_json: bool) -> None:
    """Run the broker end to end on a local, multi-account AWS.

    Builds the seed scenario (tooling, token-service and two service accounts),
    bootstraps the broker role, applies an authorizer permission, artifact
    bucket reads and KMS grants through signed requests, shares a container
    image repository and an events queue across accounts, shows a replayed, a
    tampered and an impersonating request refused, revokes one grant, reads
    every policy back and verifies the ledger.
    """
    from rich.text import Text

    from deploy_helper.local.demo import run_demo

    out = console(stderr=True)

    def progress(message: str) -> None:
        if not as_json:
            out.print(Text.assemble(("•", "bold cyan"), " ", text(message)))

    report = run_demo(workdir, progress, endpoint=os.environ.get("AWS_ENDPOINT_URL") or None)
    if as_json:
        emit_json(report)
    else:
        table(
            "grants applied",
            ("kind", "decision", "target", "principal", "rule", "entry"),
            [
                [r["kind"], r["decision"], short(r["target"]), short(r["principal"]), r["rule"], r["ledger_entry"]]
                for r in report["applied"] + report["shared"]
            ],
        )
        table(
            "attacks",
            ("attack", "refused", "code", "message"),
            [[a["attack"], "yes" if a["refused"] else "NO", a["code"], a["message"]] for a in report["attacks"]],
        )
        table(
            "read back from AWS", ("check", "holds"), [[k, "yes" if v else "NO"] for k, v in report["verified"].items()]
        )
        trail = report["audit_trail"]
        table(
            f"audit trail ({len(trail)} ledger entries; ledger whole: {report['ledger']['whole']})",
            ("id", "type", "decision", "caller", "kind", "target", "principal"),
            [
                [e["id"], e["type"], e["decision"], e["caller"], e["kind"], short(e["target"]), short(e["principal"])]
                for e in trail
            ],
        )
        click.echo("demo OK" if report["ok"] else "demo FAILED: see the tables above")
    sys.exit(0 if report["ok"] else 1)
