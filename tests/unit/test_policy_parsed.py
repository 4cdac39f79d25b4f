"""The pre-parsed policies (``policies/parsed.json``) say exactly what the YAML says, or are not used.

``function/build.py`` writes them into the function's package; the YAML stays the
source of truth: the JSON form is read only while each YAML file's digest is the
one it was made from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploy_helper.exceptions import PolicyFileError
from deploy_helper.trust import policyfiles
from deploy_helper.trust.callers import CallerRegistry
from deploy_helper.trust.rules import RuleSet

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"callers.yaml": CallerRegistry, "rules.yaml": RuleSet}


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    return tmp_path / "policies"


def test_the_repositorys_policies_read_the_same_from_either_form(policies: Path) -> None:
    from_yaml = {name: model.load(policies / name) for name, model in MODELS.items()}  # type: ignore[attr-defined]
    written = policyfiles.write_parsed(policies, MODELS)
    parsed = json.loads(written.read_text())["files"]
    for name, model in MODELS.items():
        assert model.model_validate_json(parsed[name]["json"]) == from_yaml[name]
        assert model.load(policies / name) == from_yaml[name]  # type: ignore[attr-defined]


def test_the_parsed_form_is_used_while_the_yaml_is_unchanged(policies: Path) -> None:
    policyfiles.write_parsed(policies, MODELS)
    data = json.loads((policies / "parsed.json").read_text())
    rules = json.loads(data["files"]["rules.yaml"]["json"])
    rules["rules"] = rules["rules"][:1]  # a form that differs from the YAML, under the YAML's digest
    data["files"]["rules.yaml"]["json"] = json.dumps(rules)
    (policies / "parsed.json").write_text(json.dumps(data))
    assert len(RuleSet.load(policies / "rules.yaml").rules) == 1


def test_a_changed_yaml_file_is_read_from_the_yaml(policies: Path) -> None:
    policyfiles.write_parsed(policies, MODELS)
    before = RuleSet.load(policies / "rules.yaml")
    text = (policies / "rules.yaml").read_text()
    (policies / "rules.yaml").write_text(text + "\n# reviewed again\n")
    assert RuleSet.load(policies / "rules.yaml") == before  # same content, read from the YAML
    (policies / "rules.yaml").write_text(text.replace("version: 1", "version: 2", 1))
    with pytest.raises(PolicyFileError, match=r"rules\.yaml:\d+: version"):
        RuleSet.load(policies / "rules.yaml")


def test_a_parsed_form_that_does_not_validate_falls_back_to_the_yaml(policies: Path) -> None:
    policyfiles.write_parsed(policies, MODELS)
    data = json.loads((policies / "parsed.json").read_text())
    data["files"]["callers.yaml"]["json"] = '{"version": 7}'
    (policies / "parsed.json").write_text(json.dumps(data))
    assert CallerRegistry.load(policies / "callers.yaml") == CallerRegistry.load(ROOT / "policies" / "callers.yaml")


def test_invalid_policies_are_not_written(policies: Path) -> None:
    (policies / "callers.yaml").write_text("version: 1\ncallers:\n  a: {}\n  a: {}\n")
    with pytest.raises(PolicyFileError, match="duplicate key 'a'"):
        policyfiles.write_parsed(policies, MODELS)
    assert not (policies / "parsed.json").exists()


def test_yaml_errors_still_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\norganization:\n  accounts: {}\nrules:\n  - id: x\n    kind: nope\n")
    with pytest.raises(PolicyFileError, match=r"rules\.yaml:5: rules\.0"):
        RuleSet.load(path)
