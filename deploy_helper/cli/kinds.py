"""``deploy-helper kinds``: the registered grant kinds, from the registry itself."""

from __future__ import annotations

import click

from deploy_helper.cli.output import emit_json, json_option, table


@click.command("kinds")
@click.option("--markdown", is_flag=True, help="Print the README's table of kinds (Markdown).")
@json_option
def kinds(markdown: bool, as_json: bool) -> None:
    """List the grant kinds: access levels, the AWS permissions each needs, size limits.

    The bootstrap role grants exactly these permissions, on resources that opted in.

    \b
    Examples:
      deploy-helper kinds
      deploy-helper kinds --json | jq '.[] | {kind, size_limit}'
      deploy-helper kinds --markdown > kinds.md
    """
    from deploy_helper.grants import catalog

    if as_json:
        emit_json(catalog.describe_all())
        return
    if markdown:
        click.echo(catalog.markdown_table())
        return
    rows = []
    for entry in catalog.describe_all():
        levels = ", ".join(entry["access_levels"]) or (
            "operations: " + ", ".join(entry["operations"]) if entry["operations"] else "-"
        )
        limit = f"{entry['size_limit']:,} B" if entry["size_limit"] else "-"
        rows.append([entry["kind"], levels, limit, "\n".join(entry["permissions"])])
    table("grant kinds", ["kind", "access levels", "size limit", "permissions"], rows)
