"""Step states read from a local run's progress events (written and read by
`modelpress.events`, the record's one owner), and the run state of a worker that died."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opfixtures import ROOT

from modelpress.events import ProgressEvent, append_event, read_events
from modelpress.jobfile import load_job
from modelpress.operator.backends.local import (
    LocalBackend,
    RequestRecord,
    WorkerRecord,
    steps_from_events,
)


def _events(tmp_path: Path, *events: ProgressEvent, torn: str = "") -> Path:
    path = tmp_path / "events.jsonl"
    for event in events:
        append_event(path, event)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(torn)  # what a writer killed mid-line leaves
    return path


def test_steps_follow_the_events_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = _events(
        tmp_path,
        ProgressEvent(event="started", step="fetch", time=100.0),
        ProgressEvent(event="finished", step="fetch", time=101.5, seconds=1.234567,
                      message="fetched"),
        ProgressEvent(event="started", step="prune", time=102.0),
        ProgressEvent(event="finished", step="prune", time=103.0, seconds=1.0, message="a"),
        ProgressEvent(event="started", step="prune", time=104.0),
        ProgressEvent(event="failed", step="prune", time=105.0, message="too sparse"),
        torn='{"event": "started", "step": "quant')
    steps = steps_from_events(read_events(path))
    assert [(s.name, s.phase, s.duration_seconds, s.message) for s in steps] == [
        ("fetch", "Succeeded", 1.235, "fetched"), ("prune", "Succeeded", 1.0, "a"),
        ("prune", "Failed", None, "too sparse")]
    assert steps[0].started_at is not None and steps[0].started_at.timestamp() == 100.0


def test_no_events_yet(tmp_path: Path) -> None:
    assert steps_from_events(read_events(tmp_path / "missing.jsonl")) == []


def test_a_worker_that_died_mid_step_names_that_step(tmp_path: Path) -> None:
    """No exit.json and no live worker: killed, or out of memory. The step that started
    and never finished is the one named; a torn event it left behind does not matter."""
    backend = LocalBackend(tmp_path, max_runs=1)
    folder = tmp_path / "local-uid-1"
    folder.mkdir()
    job = load_job(ROOT / "examples" / "digits-prune-quantize.yaml")
    (folder / "request.json").write_text(RequestRecord(
        job=job, output="file:///nowhere", runner="x:y").model_dump_json(by_alias=True))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a worker pid that has exited
    (folder / "worker.json").write_text(WorkerRecord(
        pid=gone.pid, started_at=100.0).model_dump_json(by_alias=True))
    _events(folder, ProgressEvent(event="started", step="fetch", time=100.0),
            ProgressEvent(event="finished", step="fetch", time=101.0, seconds=1.0),
            ProgressEvent(event="started", step="prune", time=102.0), torn='{"eve')
    state = backend.poll("local-uid-1")
    assert (state.phase, state.failed_step) == ("Failed", "prune")
    assert state.message is not None and "ended without recording an outcome" in state.message
    assert [(s.name, s.phase) for s in state.steps] == [("fetch", "Succeeded"),
                                                        ("prune", "Running")]
