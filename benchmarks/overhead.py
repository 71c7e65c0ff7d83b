"""Orchestration overhead of `modelpress run`, and what each step's start-up costs.

    python benchmarks/overhead.py [--runs 3] [--job examples/digits-prune-quantize.yaml]
                                  [--variant NAME=PYTHON[@CWD] ...]

Each run is the whole CLI in a fresh process, timed from outside. Its results.json gives
each step's start and its own compute; the gaps between them are what orchestration costs:
before the first step (parsing, output checks, pre-flight, compiling the pipeline,
kfp.local), between steps (a new process: interpreter, imports, kfp's executor, artifact
copies) and after the last (reading the results back). With several variants (e.g. an
install of an older commit) the runs are interleaved, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Variant:
    name: str
    python: str
    cwd: Path


@dataclass
class Run:
    wall: float
    compute: float
    before_first: float
    after_last: float
    gaps: dict[str, float] = field(default_factory=dict)  # step -> start-up before it

    @property
    def overhead(self) -> float:
        return 1 - self.compute / self.wall


def _parse_variant(text: str) -> Variant:
    name, _, rest = text.partition("=")
    python, _, cwd = rest.partition("@")
    return Variant(name, python, Path(cwd or ROOT))


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_once(variant: Variant, job: Path, scratch: Path) -> Run:
    output = Path(tempfile.mkdtemp(dir=scratch))
    environment = {**os.environ, "PYTHONSAFEPATH": "1", "COLUMNS": "200"}
    began = time.time()
    completed = subprocess.run([variant.python, "-m", "modelpress.cli", "run", str(job),
                                "--output", str(output)], cwd=variant.cwd, env=environment,
                               capture_output=True, text=True, check=False)
    ended = time.time()
    if completed.returncode not in (0, 3):
        raise SystemExit(f"{variant.name}: exit {completed.returncode}\n{completed.stderr}")
    steps = json.loads((output / "results.json").read_text())["steps"]
    starts = [_timestamp(step["startedAt"]) for step in steps]
    ends = [start + step["durationSeconds"] for start, step in zip(starts, steps, strict=True)]
    gaps = {step["name"]: starts[i] - ends[i - 1] for i, step in enumerate(steps) if i}
    return Run(wall=ended - began, compute=sum(step["durationSeconds"] for step in steps),
               before_first=starts[0] - began, after_last=ended - ends[-1], gaps=gaps)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: dict[str, list[Run]]) -> str:
    lines = ["| variant | runs | wall s | compute s | overhead | before 1st step s | "
             "per-step start-up s (median of steps) | after last s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, measured in runs.items():
        gaps = [gap for run in measured for gap in run.gaps.values()]
        lines.append(
            f"| {name} | {len(measured)} | {_median([r.wall for r in measured]):.1f} | "
            f"{_median([r.compute for r in measured]):.1f} | "
            f"{_median([r.overhead for r in measured]):.0%} | "
            f"{_median([r.before_first for r in measured]):.2f} | {_median(gaps):.2f} | "
            f"{_median([r.after_last for r in measured]):.2f} |")
    for name, measured in runs.items():
        names = list(measured[0].gaps)
        lines.append(f"\n{name}, start-up before each step (median s): " + ", ".join(
            f"{step} {_median([run.gaps[step] for run in measured if step in run.gaps]):.2f}"
            for step in names))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--job", type=Path, default=ROOT / "examples" /
                        "digits-prune-quantize.yaml")
    parser.add_argument("--variant", action="append", type=_parse_variant,
                        help="NAME=PYTHON[@CWD]; default: this checkout's interpreter")
    arguments = parser.parse_args()
    variants = arguments.variant or [Variant("this checkout", sys.executable, ROOT)]
    runs: dict[str, list[Run]] = {variant.name: [] for variant in variants}
    with tempfile.TemporaryDirectory(prefix="modelpress-overhead-") as scratch:
        for _ in range(arguments.runs):
            for variant in variants:
                runs[variant.name].append(run_once(variant, arguments.job.resolve(),
                                                   Path(scratch)))
    print(report(runs))


if __name__ == "__main__":
    main()
