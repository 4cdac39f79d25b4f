"""The function package, built as ``sam build`` builds it, runs where only boto3 is installed.

``sam build`` runs ``make build-BrokerFunction`` in ``function/`` (template.yaml:
``BuildMethod: makefile``). This test runs the same make target, for this machine's
architecture and Python so that the package can be imported here, then imports
``deploy_helper.handler.lambda_handler`` from the package in a fresh interpreter
whose only other package is boto3 (and what boto3 needs) — what the Lambda runtime
provides — and applies a signed grant through it against the local AWS.

A dependency missing from ``function/requirements.txt`` makes the import fail:
``test_a_dependency_left_out_of_the_recipe_is_caught`` shows it.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from packaging.requirements import Requirement

from deploy_helper.local import scenario as seed

if TYPE_CHECKING:
    from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
HOST_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

pytestmark = pytest.mark.skipif(
    ARCHITECTURE is None or sys.platform != "linux", reason="the package holds Linux wheels (arm64 or x86_64)"
)

#: Runs in the fresh interpreter (``python -I -S``: no site-packages, no PYTHON* variables).
#: argv: package dir, boto3-only dir. stdin: the event. stdout: one JSON line.
RUNNER = r"""
import json, pkgutil, sys, sysconfig
package, boto = sys.argv[1], sys.argv[2]
sys.path[:0] = [package, boto]
from deploy_helper.handler import lambda_handler
at_import = sorted(sys.modules)
result = lambda_handler(json.load(sys.stdin), None)
first_call = sorted(sys.modules)
import deploy_helper
for module in pkgutil.walk_packages(deploy_helper.__path__, "deploy_helper."):
    __import__(module.name)
stdlib = tuple(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib"))
outside = sorted(
    name for name, module in list(sys.modules.items())
    if getattr(module, "__file__", None)
    and not module.__file__.startswith((package, boto, *stdlib))
)
print(json.dumps({"result": result, "modules": sorted(sys.modules), "outside": outside,
                  "at_import": at_import, "first_call": first_call}))
"""


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("function_build", ROOT / "function" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_package(out: Path, python: str = sys.executable) -> Path:
    """``make build-BrokerFunction`` as sam build runs it, for this machine."""
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "--makefile",
            str(ROOT / "function" / "Makefile"),
            "build-BrokerFunction",
            f"ARTIFACTS_DIR={out}",
            f"ARCHITECTURE={ARCHITECTURE}",
            f"PYTHON_VERSION={HOST_PYTHON}",
            f"PYTHON={python}",
        ],
        check=True,
        cwd=ROOT / "function",
    )
    return out


def boto3_only(directory: Path) -> Path:
    """A directory holding boto3 and the distributions it requires, nothing else (symlinks)."""
    directory.mkdir()
    pending, seen = ["boto3"], set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith(("..", "/"))}
        for top in tops:
            if top.endswith((".dist-info", ".pth")) or top == "__pycache__":
                continue
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (directory / top).exists():
                (directory / top).symlink_to(source)
        for requirement in dist.requires or []:
            req = Requirement(requirement)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                pending.append(req.name)
    return directory


def run_in_fresh_interpreter(package: Path, boto: Path, event: dict[str, Any], env: dict[str, str]) -> Any:
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", RUNNER, str(package), str(boto)],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    return done


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tmp_path_factory.mktemp("function") / "BrokerFunction")


@pytest.fixture(scope="module")
def boto(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return boto3_only(tmp_path_factory.mktemp("runtime") / "boto3-only")


def _environment(sc: seed.Scenario, package: Path) -> dict[str, str]:
    """What Lambda gives the function: the stack's variables, its task root, credentials."""
    import os

    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k in ("PATH", "HOME", "TMPDIR")}
    return {**env, **sc.environ(), "LAMBDA_TASK_ROOT": str(package)}


def test_the_package_holds_the_function_and_its_dependencies_only(package: Path) -> None:
    top = {p.name for p in package.iterdir()}
    pins = _build_module().read_lock()
    installed = {
        re.sub(r"[-_.]+", "-", p.name.removesuffix(".dist-info").rsplit("-", 1)[0]).lower()
        for p in package.glob("*.dist-info")
    }
    assert installed == set(pins)  # exactly the lock: nothing more, nothing less
    assert {"deploy_helper", "policies"} <= top
    for absent in ("tests", "bench", "function", ".ci", "moto", "boto3", "botocore", "click", "rich", "bin"):
        assert absent not in top
    shipped = {p.name for p in (package / "deploy_helper").iterdir()}
    assert "handler.py" in shipped
    assert not {"local", "cli", "__main__.py", "__pycache__"} & shipped
    assert not list(package.rglob("strict_aws.py")) and not list(package.rglob("faults.py"))
    for policy in (ROOT / "policies").glob("*.yaml"):
        assert (package / "policies" / policy.name).read_bytes() == policy.read_bytes()
    # The policies validated at build time, read by the function instead of the YAML while it is unchanged.
    parsed = json.loads((package / "policies" / "parsed.json").read_text())
    assert set(parsed["files"]) == {"callers.yaml", "rules.yaml"}
    unzipped = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    assert unzipped < 250 * 1024 * 1024  # Lambda's limit for a function's unzipped package


def test_the_handler_runs_from_the_package_with_only_boto3_beside_it(
    scenario: seed.Scenario, package: Path, boto: Path
) -> None:
    from deploy_helper.trust.callers import CallerRegistry
    from deploy_helper.trust.policyfiles import write_parsed
    from deploy_helper.trust.rules import RuleSet

    # The scenario's own policies, pre-parsed as the build pre-parses the package's.
    write_parsed(scenario.policies_dir, {"callers.yaml": CallerRegistry, "rules.yaml": RuleSet})
    client = scenario.client()
    grant = scenario.authorizer_grant("service-a")
    event = client.envelope(client.payload([grant], context={"pipeline": "artifact-test"}))
    done = run_in_fresh_interpreter(package, boto, event, _environment(scenario, package))
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["outside"] == []  # every module came from the package, boto3's or the standard library
    roots = {m.split(".")[0] for m in answer["modules"]}
    assert not {"click", "rich", "moto", "pytest"} & roots
    assert "deploy_helper.local" not in answer["modules"]
    # A cold start loads what the request needs: the broker at the handler's import (init), and
    # by the first call no YAML parser (the package's pre-parsed policies), no checkpoints, no audit,
    # and no boto3: the broker's clients come from a botocore session.
    assert {"botocore", "pydantic"} <= {m.split(".")[0] for m in answer["at_import"]}
    first_call = set(answer["first_call"])
    lazy_modules = ("yaml", "deploy_helper.ledger.checkpoints", "deploy_helper.ledger.audit", "deploy_helper.audit")
    for lazy in (*lazy_modules, "boto3", "s3transfer"):
        assert lazy not in first_call, lazy
    results = answer["result"]["results"]
    assert [r["decision"] for r in results] == ["applied"], answer["result"]
    # Read back from AWS: the permission is on the authorizer function, and in the ledger.
    policy = scenario.function_policy()
    assert policy is not None
    assert results[0]["grant_id"] in {s["Sid"] for s in policy["Statement"]}
    entries = [e.entry for e in scenario.ledger().ledger.entries()]
    assert entries[-1]["decision"] == "applied"


def test_a_dependency_left_out_of_the_recipe_is_caught(tmp_path: Path, boto: Path, scenario: seed.Scenario) -> None:
    build = _build_module()
    lock = tmp_path / "requirements.txt"
    kept, dropping = [], False
    for line in build.LOCK.read_text().splitlines():  # the rfc8785 requirement and its hash lines
        dropping = line.startswith("rfc8785==") or (dropping and line.startswith(" "))
        if not dropping:
            kept.append(line)
    lock.write_text("\n".join(kept) + "\n")
    assert "rfc8785" not in lock.read_text() and set(build.read_lock(lock)) == set(build.read_lock()) - {"rfc8785"}
    package = build.build(tmp_path / "package", ARCHITECTURE, HOST_PYTHON, lock=lock)
    client = scenario.client()
    event = client.envelope(client.payload([scenario.authorizer_grant("service-a")]))
    done = run_in_fresh_interpreter(package, boto, event, _environment(scenario, package))
    assert done.returncode != 0
    assert "No module named 'rfc8785'" in done.stderr
    policy = scenario.function_policy()  # nothing was granted: only its team's own statement
    assert policy is not None and [s["Sid"] for s in policy["Statement"]] == [seed.FOREIGN_SID]


def test_a_python_without_the_dependencies_builds_the_pre_parsed_policies_too(tmp_path: Path, package: Path) -> None:
    """``sam build`` runs make with the default ``python3``, which need not have the project's dependencies."""
    import venv

    venv.create(tmp_path / "plain", with_pip=True)
    python = str(tmp_path / "plain" / "bin" / "python")
    bare = subprocess.run([python, "-c", "import pydantic"], capture_output=True, text=True, check=False)
    assert "No module named 'pydantic'" in bare.stderr
    built = make_package(tmp_path / "BrokerFunction", python=python)
    parsed = built / "policies" / "parsed.json"
    assert parsed.read_bytes() == (package / "policies" / "parsed.json").read_bytes()
    # What was installed to parse them stays out of the package (botocore is the runtime's).
    assert {p.name for p in built.iterdir()} == {p.name for p in package.iterdir()} - {"__pycache__"}
