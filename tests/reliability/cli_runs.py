"""Running `modelpress` as a user does, for the reliability tests: job files, a clean
environment, and the progress events of a run in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

RUN_TIMEOUT_S = 600
# The digits example trimmed to what still runs every step and publishes every artifact.
LIGHT_SPEC: dict[str, Any] = {
    "model": {"uri": "builtin://digits-cnn", "task": "classification"},
    "data": {"eval": "builtin://digits?split=test", "calibration": "builtin://digits?split=train"},
    "steps": [{"prune": {"sparsity": 0.5}}, {"quantize": {"mode": "dynamic"}}],
    "benchmark": {"batchSizes": [1], "iterations": 5, "warmup": 0,
                  "pools": [{"name": "cpu", "device": "cpu", "threads": 1}]},
}


def job_document(name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def write_job(folder: Path, name: str, spec: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job_document(name, spec), sort_keys=False))
    return path


def environment(folder: Path, **settings: str) -> dict[str, str]:
    """Plain output, a temporary folder inside `folder`, and only the settings given.

    The shared cache of builtin models is kept: a cold one trains the digits CNN first,
    which takes minutes on a small machine.
    """
    kept = {key: value for key, value in os.environ.items()
            if not key.startswith(("MODELPRESS_", "AWS_")) and "proxy" not in key.lower()
            or key == "MODELPRESS_CACHE_DIR"}
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    return {**kept, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONSAFEPATH": "1",
            "PYTHONIOENCODING": "utf-8", "TMPDIR": str(folder / "tmp"), **settings}


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return finish(start_cli(*args, env=env, cwd=cwd))


def start_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    """`python -m modelpress.cli …` in its own process group (so a stuck run can be
    stopped with its pipeline steps)."""
    return subprocess.Popen([sys.executable, "-m", "modelpress.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)


def finish(process: subprocess.Popen[str],
           timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n[test] still running after {timeout:.0f} s; killed"
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_events(folder: Path) -> list[dict[str, Any]]:
    """The progress events of the run whose TMPDIR is `folder`/tmp (while it runs)."""
    found: list[dict[str, Any]] = []
    for path in sorted((folder / "tmp").glob("modelpress-*/events.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line still being written
    return found


def wait_for_event(folder: Path, process: subprocess.Popen[str], event: str, step: str,
                   timeout: float = 300.0) -> list[dict[str, Any]]:
    """Until the run reports `event` for `step`; the events so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = run_events(folder)
        if any(e.get("event") == event and e.get("step") == step for e in events):
            return events
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {step} {event}: "
                                 f"{process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {step} {event}")


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (children before grandchildren)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
