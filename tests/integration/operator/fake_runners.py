"""Stand-ins for pipelines.local.run_local that the local backend's workers import.

Each has run_local's signature and writes the same progress events, in milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from modelpress.api import CompressionJob
from modelpress.errors import StepFailed
from modelpress.store import open_store

STEPS = ("fetch", "prune", "quantize", "validate", "benchmark-cpu", "report")


def _emit(events: Path, event: str, step: str, **fields: object) -> None:
    with events.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"event": event, "step": step, "time": time.time(),
                                 **fields}) + "\n")


def results_document(ratio: float = 4.0) -> dict[str, object]:
    figures = {"parameters": 1000, "metric": {"name": "accuracy", "value": 0.98}}
    return {
        "results": {"baseline": {**figures, "sizeBytes": 400_000},
                    "compressed": {**figures, "sizeBytes": int(400_000 / ratio)},
                    "compressionRatio": ratio, "accuracyDrop": 0.002, "speedup": {"cpu": 1.8}},
        "artifacts": {"model": "model.onnx"},
        "steps": [{"name": step, "phase": "Succeeded", "durationSeconds": 0.01,
                   "message": "ok"} for step in STEPS]}


def succeed(job: CompressionJob, output: str, workdir: Path, events: Path) -> str:
    for step in STEPS:
        _emit(events, "started", step)
        _emit(events, "finished", step, seconds=0.01, message="ok")
    workdir.mkdir(parents=True, exist_ok=True)
    store = open_store(output)
    for name, text in (("model.onnx", "onnx bytes"),
                       ("results.json", json.dumps(results_document()))):
        (workdir / name).write_text(text)
        store.put_file(workdir / name, name)
    return ""


def fail_at_prune(job: CompressionJob, output: str, workdir: Path, events: Path) -> str:
    _emit(events, "started", "fetch")
    _emit(events, "finished", "fetch", seconds=0.01, message="fetched")
    _emit(events, "started", "prune")
    _emit(events, "failed", "prune", message="sparsity 0.99 leaves no weights")
    raise StepFailed("prune", "sparsity 0.99 leaves no weights")


def crash(job: CompressionJob, output: str, workdir: Path, events: Path) -> str:
    raise RuntimeError("the runner broke")


def die(job: CompressionJob, output: str, workdir: Path, events: Path) -> str:
    os._exit(3)


def hang(job: CompressionJob, output: str, workdir: Path, events: Path) -> str:
    """Starts a step with a child process of its own (as kfp.local does), then waits."""
    _emit(events, "started", "fetch")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (events.parent / "child.pid").write_text(str(child.pid))
    time.sleep(120)
    return ""


def slow(job: CompressionJob, output: str, workdir: Path, events: Path) -> str:
    """Succeeds after a few seconds: long enough to restart an operator meanwhile."""
    time.sleep(float(os.environ.get("FAKE_RUN_SECONDS", "4")))
    return succeed(job, output, workdir, events)
