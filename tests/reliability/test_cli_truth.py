"""`modelpress run` tells the truth and cannot hurt the user's files or another run:
failed gates exit 3 and say which; a second run into a held output is refused; SIGTERM
stops the running step and leaves no scratch behind."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cli_runs import (
    LIGHT_SPEC,
    cli,
    command_line,
    descendants,
    environment,
    finish,
    start_cli,
    wait_for_event,
    write_job,
)

pytestmark = pytest.mark.e2e
# Pruning that fine-tunes: a step that runs long enough to be stopped or overlapped.
SLOW_SPEC: dict[str, Any] = {
    **LIGHT_SPEC,
    "data": {**LIGHT_SPEC["data"], "train": "builtin://digits?split=train"},
    "steps": [{"prune": {"sparsity": 0.5, "schedule": {"iterations": 1, "fineTuneEpochs": 2}}},
              {"quantize": {"mode": "dynamic"}}],
}
# A collapsed model: 99% of the weights gone, and gates that see it.
FAILING_GATES_SPEC: dict[str, Any] = {
    **LIGHT_SPEC,
    "steps": [{"prune": {"sparsity": 0.99}}],
    "promotion": {"gates": {"minCompressionRatio": 2.0, "maxAccuracyDrop": 0.05}},
}


def _identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time since boot) of a live process: a pid the kernel reuses for a new
    process is not the one that was seen before."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else (pid, fields[19])


def test_failed_gates_exit_3_and_say_which(tmp_path: Path) -> None:
    job = write_job(tmp_path, "collapsed", FAILING_GATES_SPEC)
    completed = cli("run", str(job), "--output", str(tmp_path / "out"),
                    env=environment(tmp_path), cwd=tmp_path)
    shown = f"exit {completed.returncode}\n{completed.stderr[-3000:]}"
    assert completed.returncode == 3, shown
    assert "promotion: REJECTED" in completed.stderr, shown
    assert "compressionRatio" in completed.stderr and "below minCompressionRatio 2" \
        in completed.stderr, shown
    assert "above maxAccuracyDrop 0.05" in completed.stderr, shown
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert document["promotion"]["decision"] == "Rejected"
    assert any("minCompressionRatio" in reason for reason in document["promotion"]["reasons"])
    assert "REJECTED" in (tmp_path / "out" / "report.html").read_text()


def test_a_job_without_gates_says_none_were_set(tmp_path: Path) -> None:
    job = write_job(tmp_path, "ungated", {**LIGHT_SPEC, "steps": [{"prune": {"sparsity": 0.3}}]})
    completed = cli("run", str(job), "--output", str(tmp_path / "out"),
                    env=environment(tmp_path), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "no gates set" in completed.stderr


def test_a_second_run_into_a_held_output_is_refused(tmp_path: Path) -> None:
    first_job = write_job(tmp_path / "a", "first", SLOW_SPEC)
    second_job = write_job(tmp_path / "b", "second", LIGHT_SPEC)
    output = tmp_path / "out"
    first = start_cli("run", str(first_job), "--output", str(output),
                      env=environment(tmp_path / "a"), cwd=tmp_path)
    try:
        wait_for_event(tmp_path / "a", first, "started", "prune")
        second = cli("run", str(second_job), "--output", str(output),
                     env=environment(tmp_path / "b"), cwd=tmp_path)
    finally:
        done = finish(first)
    assert second.returncode == 2, second.stderr[-2000:]
    assert "error: --output: another modelpress run (pid" in second.stderr
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    published = json.loads((output / "results.json").read_text())["results"]
    assert summary["compressionRatio"] == published["compressionRatio"]


def test_sigterm_stops_the_step_and_removes_scratch(tmp_path: Path) -> None:
    job = write_job(tmp_path, "stopped", SLOW_SPEC)
    process = start_cli("run", str(job), "--output", str(tmp_path / "out"),
                        env=environment(tmp_path), cwd=tmp_path)
    try:
        wait_for_event(tmp_path, process, "started", "prune")
        time.sleep(0.5)
        below = [seen for seen in map(_identity, descendants(process.pid)) if seen]
        steps = [pid for pid, _ in below if "kfp.dsl.executor_main" in " ".join(command_line(pid))]
        os.kill(process.pid, signal.SIGTERM)
    finally:
        completed = finish(process, timeout=120)
    assert steps, f"no step process was running: {below}"
    assert completed.returncode == 128 + signal.SIGTERM, completed.stderr[-3000:]
    assert "stopped by SIGTERM" in completed.stderr
    deadline = time.monotonic() + 5
    while any(_identity(seen[0]) == seen for seen in below) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [(seen, command_line(seen[0])) for seen in below if _identity(seen[0]) == seen]
    assert not survivors, f"step processes outlived the run: {survivors}"
    assert list((tmp_path / "tmp").iterdir()) == [], "scratch left behind"
    assert not (tmp_path / "out" / "results.json").exists()
