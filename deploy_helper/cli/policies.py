"""``deploy-helper policies check``: validate the reviewed policy files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from deploy_helper.cli.output import echo, emit_json, json_option


@click.group("policies")
def policies() -> None:
    """The reviewed files under policies/: registered callers and grant rules."""


@policies.command(
    "check",
    epilog="""
\b
Checks: YAML syntax and duplicate keys; every field against its schema (unknown
fields refused); keys parse and match their algorithm; key ids unique; rule ids
unique; every account a rule names is registered; every caller a rule names is
registered in callers.yaml. Errors are printed as FILE:LINE: PATH: MESSAGE.
Suitable for a pre-commit hook and CI. Exit 1 when anything is wrong.
""",
)
@click.argument(
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DEPLOY_HELPER_POLICIES_DIR",
    default=Path("policies"),
)
@json_option
def check(directory: Path, as_json: bool) -> None:
    """Validate DIRECTORY/callers.yaml and DIRECTORY/rules.yaml (default: $DEPLOY_HELPER_POLICIES_DIR or ./policies)."""
    errors, summary = check_directory(directory)
    if as_json:
        emit_json({"ok": not errors, "errors": errors, **summary})
    elif errors:
        for error in errors:
            echo(error, err=True)
        click.echo(f"{len(errors)} problem(s) in {directory}", err=True)
    else:
        click.echo(
            f"{directory}: OK — {summary['callers']} caller(s), {summary['keys']} key(s), "
            f"{summary['rules']} rule(s), {summary['accounts']} registered account(s)"
        )
    sys.exit(1 if errors else 0)


def check_directory(directory: Path) -> tuple[list[str], dict[str, int]]:
    """All problems found in a policies directory, and counts of what it holds."""
    from deploy_helper.exceptions import PolicyFileError
    from deploy_helper.trust.callers import CallerRegistry
    from deploy_helper.trust.policyfiles import parse_file
    from deploy_helper.trust.rules import RuleSet

    errors: list[str] = []
    summary = {"callers": 0, "keys": 0, "rules": 0, "accounts": 0}
    callers: CallerRegistry | None = None
    rules: RuleSet | None = None
    rules_file = None
    callers_path, rules_path = directory / "callers.yaml", directory / "rules.yaml"
    for path in (callers_path, rules_path):
        if not path.exists():
            errors.append(f"{path}: missing")
    try:
        if callers_path.exists():
            callers = parse_file(callers_path, CallerRegistry)[0]
    except PolicyFileError as exc:
        errors.extend(exc.message.splitlines())
    try:
        if rules_path.exists():
            rules, rules_file = parse_file(rules_path, RuleSet)
    except PolicyFileError as exc:
        errors.extend(exc.message.splitlines())
    if callers is not None:
        summary["callers"] = len(callers.callers) + len(getattr(callers, "stacks", {}) or {})
        summary["keys"] = sum(len(c.keys) for c in callers.callers.values())
    if rules is not None and rules_file is not None:
        summary["rules"] = len(rules.rules)
        summary["accounts"] = len(rules.organization.accounts)
        known = set(callers.callers) | set(getattr(callers, "stacks", None) or {}) if callers else set()
        for i, rule in enumerate(rules.rules):
            for j, caller in enumerate(rule.callers):
                if callers is not None and caller not in known:
                    line = rules_file.line_of(("rules", i, "callers", j))
                    errors.append(
                        f"{rules_file.path}:{line}: rules.{i}.callers.{j}: "
                        f"caller {caller!r} is not registered in callers.yaml"
                    )
        if callers is not None:
            for name, caller_def in callers.callers.items():
                if caller_def.account not in rules.registered:
                    errors.append(
                        f"{directory / 'callers.yaml'}: caller {name}: account {caller_def.account} is not registered "
                        "in rules.yaml organization.accounts"
                    )
    return errors, summary
