"""Cold-start import time of the broker's entry point, next to boto3 alone.

Every measurement runs in a fresh interpreter, as a new Lambda execution
environment would, and all of them run in one invocation of this script so the
figures are comparable:

- wall: the time of ``python -c "import X"`` as a whole, minus the median time of
  ``python -c "pass"`` (the interpreter's own start-up) measured in the same run;
- import-time: from a second, separate run under ``python -X importtime``, the sum
  of the ``self`` times of the modules ``import X`` loads beyond those loaded at
  start-up, and how many modules that is; for the handler also its heaviest
  top-level packages.

Runs are interleaved (pass, boto3, handler, pass, boto3, …) so that a busy machine
affects all targets alike; each figure is the median of ``--runs`` runs.

    python bench/cold_start.py [--runs 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

TARGETS = {"startup": "pass", "boto3": "import boto3", "handler": "import deploy_helper.handler"}


@dataclass
class Figure:
    """One target's medians over the runs."""

    target: str
    statement: str
    wall_ms: float
    wall_minus_startup_ms: float
    importtime_ms: float
    modules: int
    runs: list[float]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def wall_once(python: str, statement: str) -> float:
    """Milliseconds of one fresh interpreter running ``statement``."""
    started = time.perf_counter()
    done = subprocess.run([python, "-c", statement], capture_output=True, text=True, env=_env(), check=False)
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{statement!r} failed:\n{done.stderr[-2000:]}")
    return elapsed


def importtime_once(python: str, statement: str) -> dict[str, int]:
    """``-X importtime`` self-times (µs) per module of one fresh interpreter."""
    done = subprocess.run(
        [python, "-X", "importtime", "-c", statement], capture_output=True, text=True, env=_env(), check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{statement!r} failed:\n{done.stderr[-2000:]}")
    self_us: dict[str, int] = {}
    for line in done.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # not a timing line, or the header
        module = fields[2].strip()
        self_us[module] = self_us.get(module, 0) + int(fields[0])
    return self_us


def measure(python: str, runs: int) -> tuple[dict[str, Figure], dict[str, float]]:
    walls: dict[str, list[float]] = {name: [] for name in TARGETS}
    imports: dict[str, list[tuple[float, int]]] = {name: [] for name in TARGETS}
    packages: dict[str, list[float]] = {}
    wall_once(python, "import deploy_helper.handler, boto3")  # warm the file-system cache and .pyc files
    for _ in range(runs):
        for name, statement in TARGETS.items():
            walls[name].append(wall_once(python, statement))
        startup = set(importtime_once(python, TARGETS["startup"]))
        for name, statement in TARGETS.items():
            loaded = {m: us for m, us in importtime_once(python, statement).items() if m not in startup}
            imports[name].append((sum(loaded.values()) / 1000, len(loaded)))
            if name == "handler":
                by_package: dict[str, float] = {}
                for module, us in loaded.items():
                    top = module.split(".")[0]
                    by_package[top] = by_package.get(top, 0) + us / 1000
                for top, ms in by_package.items():
                    packages.setdefault(top, []).append(ms)
    startup_ms = statistics.median(walls["startup"])
    figures = {}
    for name, statement in TARGETS.items():
        wall = statistics.median(walls[name])
        figures[name] = Figure(
            target=name,
            statement=statement,
            wall_ms=round(wall, 1),
            wall_minus_startup_ms=round(wall - startup_ms, 1),
            importtime_ms=round(statistics.median(ms for ms, _ in imports[name]), 1),
            modules=int(statistics.median(n for _, n in imports[name])),
            runs=[round(w, 1) for w in walls[name]],
        )
    heaviest = sorted(
        ((top, round(statistics.median(ms + [0.0] * (runs - len(ms))), 1)) for top, ms in packages.items()),
        key=lambda item: -item[1],
    )[:6]
    return figures, dict(heaviest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="fresh interpreters per target (default 7)")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure (default: this one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    figures, heaviest = measure(args.python, args.runs)
    handler, boto3 = figures["handler"], figures["boto3"]
    ratio = {
        "wall": round(handler.wall_minus_startup_ms / boto3.wall_minus_startup_ms, 2)
        if boto3.wall_minus_startup_ms > 0
        else None,
        "importtime": round(handler.importtime_ms / boto3.importtime_ms, 2) if boto3.importtime_ms > 0 else None,
    }
    if args.json:
        print(
            json.dumps(
                {
                    "python": platform.python_version(),
                    "runs": args.runs,
                    "figures": {name: asdict(f) for name, f in figures.items()},
                    "handler_over_boto3": ratio,
                    "handler_heaviest_packages_ms": heaviest,
                },
                indent=2,
            )
        )
        return
    print(f"cold import in a fresh interpreter, median of {args.runs} runs (Python {platform.python_version()})")
    print(f"{'':32} {'wall ms':>9} {'- start-up':>11} {'importtime ms':>14} {'modules':>8}")
    for f in figures.values():
        extra = "" if f.target == "startup" else f"{f.wall_minus_startup_ms:>11.1f}"
        importtime = "" if f.target == "startup" else f"{f.importtime_ms:>14.1f}"
        modules = "" if f.target == "startup" else f"{f.modules:>8}"
        label = "python -c pass" if f.target == "startup" else f.statement
        print(f"{label:32} {f.wall_ms:>9.1f} {extra:>11} {importtime:>14} {modules:>8}")
    print(f"deploy_helper.handler / boto3: {ratio['wall']}x wall (minus start-up), {ratio['importtime']}x import time")
    print("heaviest packages in the handler's import (ms): " + ", ".join(f"{p} {ms}" for p, ms in heaviest.items()))


if __name__ == "__main__":
    main()
