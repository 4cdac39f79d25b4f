"""Build the broker function's package: what ``sam build`` runs, and what the tests run.

The package holds exactly what the function runs:

- ``deploy_helper/`` without the CLI (``cli/``, ``__main__.py``) and without the
  local harness (``local/``: the embedded local AWS, strict-AWS checks, fault
  injection), which belong to the operator's and the tests' side;
- ``policies/`` (``LAMBDA_TASK_ROOT/policies``, where the function reads them), with
  ``policies/parsed.json``: the YAML files validated at build time, as JSON with each
  file's SHA-256, which the function reads instead of parsing YAML while the digests
  match (``deploy_helper.trust.policyfiles``; the YAML stays the source of truth). Where
  the building Python lacks the project's dependencies (``sam build`` runs make with the
  default ``python3``), the lock's are installed for that Python into a scratch directory
  first (the package's own are for the Lambda runtime's Python and architecture), with
  botocore, which the runtime provides and the grant kinds import;
- the runtime dependencies pinned in ``function/requirements.txt``, as wheels for
  the Lambda runtime's Python and the function's architecture, installed without
  resolving anything else (``--no-deps``) and only wheels whose sha256 the lock
  names (pip's hash-checking mode): the lock is the whole list, so a
  dependency missing from it is missing from the function, and the artifact test
  (``tests/functional/test_function_package.py``) fails.

boto3 and botocore are not shipped: the Lambda runtime provides them. click and
rich are not shipped: only the CLI imports them.

    python function/build.py OUT [--architecture arm64|x86_64] [--python-version 3.12]
    python function/build.py --lock      # re-pin function/requirements.txt from pyproject.toml

Standard library only: it runs in whatever Python SAM CLI calls make with (the
pre-parsed policies are written by a child process, which finds the dependencies where
this Python has them, or in the scratch directory).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "function" / "requirements.txt"
#: Provided by the Lambda runtime.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore"})
#: Imported by the CLI only (``deploy_helper/cli``), never on the function's paths.
CLI_ONLY = frozenset({"click", "rich"})
#: Parts of ``deploy_helper`` that do not ship in the function.
EXCLUDED = ("local", "cli", "__main__.py")
PLATFORMS = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
LAMBDA_PYTHON = "3.12"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def function_requirements() -> list[str]:
    """pyproject.toml's dependencies that the function needs (with their version ranges)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = []
    for requirement in project["dependencies"]:
        name = re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]
        if canonical(name) not in RUNTIME_PROVIDED | CLI_ONLY:
            wanted.append(requirement)
    return wanted


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """``{canonical name: version}`` of the lock's ``name==version`` requirements (hashes aside)."""
    pins = {}
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, rest = line.partition("==")
            pins[canonical(name)] = rest.split()[0]
    return pins


def _pip_target_options(architecture: str, python_version: str) -> list[str]:
    return [
        "--platform",
        PLATFORMS[architecture],
        "--implementation",
        "cp",
        "--python-version",
        python_version,
        "--only-binary=:all:",
    ]


def _resolve(requirements: list[str], architecture: str, python_version: str) -> dict[str, tuple[str, str]]:
    """``{name: (version, sha256 of the wheel pip chose)}`` for one platform and Python."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
        target = ["--report", str(report), "--target", str(Path(tmp) / "t")]
        subprocess.run([*pip, *target, *_pip_target_options(architecture, python_version), *requirements], check=True)
        installed = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {
        canonical(item["metadata"]["name"]): (
            item["metadata"]["version"],
            item["download_info"]["archive_info"]["hashes"]["sha256"],
        )
        for item in installed
    }


#: The Pythons the lock has wheels for: the Lambda runtime's, and the test environment's
#: (the artifact test builds the package for the Python it runs on).
LOCK_PYTHONS = (LAMBDA_PYTHON, "3.11")


def write_lock() -> None:
    """Pin the function's dependencies (and theirs), with the hash of every wheel that may be installed.

    The direct dependencies are pinned to the versions installed where this runs (the
    test environment, if they are installed), so the function runs what the tests ran.
    Versions must resolve alike for every architecture and Python in ``LOCK_PYTHONS``;
    pip then installs only wheels whose sha256 is in the lock (hash-checking mode).
    """
    from importlib import metadata

    requirements = function_requirements()
    for requirement in list(requirements):
        name = re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]
        try:
            requirements.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    versions: dict[str, str] = {}
    hashes: dict[str, set[str]] = {}
    for architecture in PLATFORMS:
        for python in LOCK_PYTHONS:
            for name, (version, sha256) in _resolve(requirements, architecture, python).items():
                if versions.setdefault(name, version) != version:
                    raise SystemExit(f"{name} resolves to {versions[name]} and {version}: pin it in pyproject.toml")
                hashes.setdefault(name, set()).add(sha256)
    lines = [
        "# The broker function's runtime dependencies, pinned for the Lambda runtime (python3.12, arm64 and x86_64)",
        f"# with the sha256 of each wheel pip may install (Pythons {', '.join(LOCK_PYTHONS)}:"
        " the runtime's and the tests').",
        "# Generated by `python function/build.py --lock` from pyproject.toml's dependencies, less those the",
        f"# runtime provides ({', '.join(sorted(RUNTIME_PROVIDED))}) and those only the CLI imports"
        f" ({', '.join(sorted(CLI_ONLY))}).",
        "# function/build.py installs exactly these (--no-deps); tests/unit/test_function_lock.py checks the match.",
    ]
    for name in sorted(versions):
        lines.append(f"{name}=={versions[name]} \\")
        entries = sorted(hashes[name])
        lines += [f"    --hash=sha256:{h}" + (" \\" if i < len(entries) - 1 else "") for i, h in enumerate(entries)]
    LOCK.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build(out: Path, architecture: str = "arm64", python_version: str = LAMBDA_PYTHON, lock: Path = LOCK) -> Path:
    """Write the function package into ``out`` (emptied first) and return it."""
    if architecture not in PLATFORMS:
        raise SystemExit(f"architecture must be one of {', '.join(PLATFORMS)}, not {architecture!r}")
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")

    def skip(directory: str, names: list[str]) -> set[str]:
        skipped = set(ignore(directory, names))
        if Path(directory).resolve() == ROOT / "deploy_helper":
            skipped |= {name for name in names if name in EXCLUDED}
        return skipped

    shutil.copytree(ROOT / "deploy_helper", out / "deploy_helper", ignore=skip)
    shutil.copytree(ROOT / "policies", out / "policies", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(out)]
    subprocess.run([*pip, *_pip_target_options(architecture, python_version), "--requirement", str(lock)], check=True)
    shutil.rmtree(out / "bin", ignore_errors=True)  # wheels' console scripts: nothing the function runs
    write_parsed_policies(out / "policies", lock=lock)
    return out


#: argv: the policies directory, then directories to put first on ``sys.path`` (``ROOT``, and
#: where the dependencies were installed, if they were). Exit status 3: a dependency is missing.
#: A policy file that does not validate fails the build.
_WRITE_PARSED = r"""
import sys
from pathlib import Path
sys.path[:0] = sys.argv[2:]
try:
    import yaml  # noqa: F401 - read by write_parsed
    from deploy_helper.trust.callers import CallerRegistry
    from deploy_helper.trust.policyfiles import write_parsed
    from deploy_helper.trust.rules import RuleSet
except ImportError as exc:
    print(exc, file=sys.stderr)
    raise SystemExit(3)
write_parsed(Path(sys.argv[1]), {"callers.yaml": CallerRegistry, "rules.yaml": RuleSet})
"""
#: Imported while the policies are parsed but not in the lock: the Lambda runtime provides it
#: (the range of pyproject.toml's boto3, whose versions botocore's follow). Build time only.
BUILD_ONLY = ("botocore>=1.34,<2",)


def _write_parsed(python: str, policies: Path, path: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-c", _WRITE_PARSED, str(policies), *map(str, path)],
        capture_output=True,
        text=True,
        check=False,
    )


def _install_for(python: str, target: Path, lock: Path) -> str | None:
    """The lock's dependencies (hash-checked) and ``BUILD_ONLY`` for ``python`` into ``target``; None, or why not."""
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(target)]
    for command in ([*pip, "--no-deps", "--requirement", str(lock)], [*pip, *BUILD_ONLY]):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return done.stderr.strip()[-1000:] or f"pip exited with {done.returncode}"
    return None


def write_parsed_policies(policies: Path, python: str = sys.executable, lock: Path = LOCK) -> Path | None:
    """``policies/parsed.json`` (see the module's docstring); None where the dependencies cannot be had."""
    done = _write_parsed(python, policies, [ROOT])
    if done.returncode == 3:  # this Python lacks them: install the lock's for it, beside the package
        with tempfile.TemporaryDirectory(prefix="deploy-helper-build-") as scratch:
            failed = _install_for(python, Path(scratch), lock)
            if failed is None:
                done = _write_parsed(python, policies, [ROOT, Path(scratch)])
            else:
                done = subprocess.CompletedProcess(done.args, 3, "", f"cannot install the dependencies: {failed}")
    if done.returncode == 3:
        print(
            f"build.py: policies/parsed.json not written ({done.stderr.strip()}); the function will parse the YAML.",
            file=sys.stderr,
        )
        return None
    if done.returncode != 0:
        raise SystemExit(f"the policies do not validate:\n{done.stderr[-3000:]}")
    return policies / "parsed.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="directory to write the package into (emptied first)")
    parser.add_argument("--architecture", default="arm64", choices=sorted(PLATFORMS))
    parser.add_argument("--python-version", default=LAMBDA_PYTHON, help="the runtime's Python (default 3.12)")
    parser.add_argument("--lock", action="store_true", help="re-pin function/requirements.txt and exit")
    args = parser.parse_args(argv)
    if args.lock:
        write_lock()
        return
    if args.out is None:
        parser.error("give the output directory (or --lock)")
    build(args.out, args.architecture, args.python_version)


if __name__ == "__main__":
    main()
