"""What a cold start loads: the broker at the handler's import, never the operator's side.

The handler imports the broker when the execution environment starts (Lambda's init
phase), so the first invocation does only the work of its request.

Each check runs a fresh interpreter, as a new Lambda execution environment would.
The first invocation's modules (with the pre-parsed policies of the function's
package) are checked by ``tests/functional/test_function_package.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: Never loaded by the function: the CLI, the local AWS, the auditor's and checkpointer's side.
NEVER = ("deploy_helper.cli", "deploy_helper.local", "moto", "click", "rich", "deploy_helper.ledger.audit")
#: Loaded by the handler's import (Lambda's init phase), so the first call need not.
AT_INIT = ("pydantic", "botocore", "deploy_helper.execution.broker")


def modules_after(statement: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


def test_the_handler_import_loads_the_broker_and_nothing_of_the_operators_side() -> None:
    modules = modules_after("import deploy_helper.handler")
    assert "deploy_helper.handler" in modules
    for package in NEVER:
        assert not loaded(modules, package), package
    for package in AT_INIT:
        assert loaded(modules, package), package


@pytest.mark.parametrize("module", ["deploy_helper.execution.broker", "deploy_helper.ledger.setup"])
def test_the_broker_loads_only_what_a_request_needs(module: str) -> None:
    modules = modules_after(f"import {module}")
    for package in (*NEVER, "yaml", "deploy_helper.ledger.checkpoints", "deploy_helper.audit", "boto3"):
        assert not loaded(modules, package), package
    # Signatures are verified with the key's own type; the general key parser (and RSA) stay out.
    assert not loaded(modules, "cryptography.hazmat.primitives.serialization")


def test_the_handler_import_runs_with_the_brokers_collector_thresholds() -> None:
    """What the import allocates is kept for good: young collections during it would free nothing."""
    from deploy_helper.execution import heap

    statement = (
        "import gc, json\nbefore = gc.get_stats()[0]['collections']\nimport deploy_helper.handler\n"
        "print(json.dumps([gc.get_threshold(), gc.get_stats()[0]['collections'] - before, gc.isenabled(),"
        " gc.get_freeze_count()]))"
    )
    done = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True, check=True)
    thresholds, young_collections, enabled, frozen = json.loads(done.stdout.strip().splitlines()[-1])
    assert thresholds == [heap.YOUNG_THRESHOLD, heap.OLDER_THRESHOLD, heap.OLDER_THRESHOLD]
    assert young_collections <= 2  # before its first line; the default thresholds run some 75
    assert enabled, "the collector is back on once the handler is imported"
    assert frozen > 10_000, "what the import made is frozen, never scanned again"


def test_the_handler_runs_no_pydantic_plugin_and_never_looks_for_one() -> None:
    """A plugin installed beside the function could watch or change validation at the trust boundary."""
    statement = (
        "import json\nimport deploy_helper.handler\nfrom deploy_helper.models import Envelope\n"
        "Envelope.model_validate({'signed': '{}', 'signature': 'A' * 43})\n"
        "from pydantic.plugin import _loader\nprint(json.dumps(_loader._plugins))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    done = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True, check=True, env=env)
    assert json.loads(done.stdout.strip().splitlines()[-1]) is None, "pydantic looked for plugins"
