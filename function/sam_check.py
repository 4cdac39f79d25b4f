"""The deploy path with the real SAM CLI: validate --lint, build, package to the local AWS.

Not part of the test command: SAM CLI is a large install whose pins clash with the
project's, so it lives in its own virtual environment. The test command covers the same
build recipe (``tests/functional/test_function_package.py`` runs ``function/Makefile``
as sam build does); this script checks that SAM CLI itself builds and packages the
template as shipped:

    python3 -m venv /tmp/sam && /tmp/sam/bin/pip install -q aws-sam-cli
    .venv/bin/python function/sam_check.py --sam /tmp/sam/bin/sam

It runs, in a temporary directory, with SAM CLI's telemetry off:

1. ``sam validate --lint`` on template.yaml;
2. ``sam build`` (arm64 by default: ``--architecture x86_64`` passes both the template
   parameter and the Makefile's ARCHITECTURE), then checks the built function holds
   deploy_helper, policies/ and every distribution of function/requirements.txt, and none
   of tests/, bench/, the CLI, the local harness, moto or boto3;
3. ``sam package`` to a bucket of the local AWS (a moto server on loopback, reached
   through AWS_ENDPOINT_URL), and checks the package is in the bucket.

Exit status 0 when every step passed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "function"))

import build as recipe  # noqa: E402 - function/build.py, beside this file

FORBIDDEN = ("tests", "bench", "function", "moto", "boto3", "botocore", "click", "rich")


def run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, env=env, check=True)


def check_built(function_dir: Path) -> list[str]:
    """What is wrong with the built function directory (empty: nothing)."""
    problems = []
    top = {p.name for p in function_dir.iterdir()}
    for wanted in ("deploy_helper", "policies"):
        if wanted not in top:
            problems.append(f"{wanted}/ is missing")
    for name in FORBIDDEN:
        if name in top:
            problems.append(f"{name} must not be in the function")
    shipped = {p.name for p in (function_dir / "deploy_helper").iterdir()} if "deploy_helper" in top else set()
    problems += [f"deploy_helper/{n} must not be in the function" for n in recipe.EXCLUDED if n in shipped]
    installed = {
        recipe.canonical(p.name.removesuffix(".dist-info").rsplit("-", 1)[0]) for p in function_dir.glob("*.dist-info")
    }
    problems += [
        f"{name} (function/requirements.txt) is missing" for name in sorted(set(recipe.read_lock()) - installed)
    ]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam", default="sam", help="the SAM CLI executable")
    parser.add_argument("--architecture", default="arm64", choices=sorted(recipe.PLATFORMS))
    args = parser.parse_args()

    from deploy_helper.local.server import LocalAws

    with tempfile.TemporaryDirectory(prefix="deploy-helper-sam-") as tmp, LocalAws() as local:
        work = Path(tmp)
        env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "ARCHITECTURE": args.architecture}
        template = str(ROOT / "template.yaml")
        run([args.sam, "validate", "--lint", "--template-file", template, "--region", "us-east-1"], work, env)
        overrides = ["--parameter-overrides", f"Architecture={args.architecture}"]
        run([args.sam, "build", "--template-file", template, *overrides], work, env)
        problems = check_built(work / ".aws-sam" / "build" / "BrokerFunction")
        for problem in problems:
            print(f"built function: {problem}", file=sys.stderr)
        bucket = "deploy-helper-sam-check"
        local.client("s3").create_bucket(Bucket=bucket)
        packaged = work / "packaged.yaml"
        output = ["--output-template-file", str(packaged), "--region", "us-east-1"]
        run([args.sam, "package", "--s3-bucket", bucket, *output], work, env)
        uri = re.search(r"CodeUri: (s3://\S+)", packaged.read_text())
        keys = [o["Key"] for o in local.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]
        if uri is None or uri.group(1).rsplit("/", 1)[-1] not in keys:
            problems.append(f"sam package did not put the function's package in s3://{bucket} ({keys})")
    print("sam validate --lint, sam build, sam package: " + ("passed" if not problems else "FAILED"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
