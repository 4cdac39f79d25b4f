"""README "Deploying": the commands name what exists (template parameters, CLI options, outputs).

Running them needs an AWS account; what runs locally is run elsewhere (function/sam_check.py,
test_function_package.py, test_local_stack.py, test_bootstrap.py, test_cli.py). This test keeps
the pasted text in step with the template and the CLI.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from deploy_helper.cli import main
from deploy_helper.trust.stack_template import load_template

ROOT = Path(__file__).resolve().parents[2]


def deploying_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Deploying", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None
    joined = block.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_the_sam_commands_use_the_template_s_parameters() -> None:
    template = load_template((ROOT / "template.yaml").read_text())
    commands = [c for c in deploying_commands() if c and c[0].endswith("/sam")]
    assert [c[1] for c in commands] == ["validate", "build", "package", "deploy"]
    deploy = commands[-1]
    overrides = deploy[deploy.index("--parameter-overrides") + 1 :]
    names = {o.split("=", 1)[0] for o in overrides if "=" in o}
    required = {k for k, p in template["Parameters"].items() if "Default" not in p}
    assert required <= names <= set(template["Parameters"])
    assert "CAPABILITY_NAMED_IAM" in deploy  # the execution role has a fixed name


def test_the_deploy_helper_commands_exist_with_their_options() -> None:
    commands = [c for c in deploying_commands() if "deploy-helper" in c]
    assert commands
    for command in commands:
        args = command[command.index("deploy-helper") + 1 :]
        group: click.Command = main
        while isinstance(group, click.Group) and args and args[0] in group.commands:
            group, args = group.commands[args[0]], args[1:]
        options = {opt for p in group.params for opt in p.opts}
        used = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        assert used <= options, (command, used - options)
        envvars = {p.envvar for p in group.params if isinstance(p, click.Option)}
        assert {a.split("=", 1)[0] for a in command if re.fullmatch(r"DEPLOY_HELPER_\w+=.*", a)} <= envvars
