"""Stand-ins for pipelines.local.run_local that the local backend's workers import.

Each has run_local's signature (`trust_model_code` included, unused: they load no model)
and writes the same progress events, in milliseconds; a successful one returns the report
step's record of what it published, as run_local does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from modelpress.api import CompressionJob, Results, StepStatus
from modelpress.errors import StepFailed
from modelpress.events import ProgressEvent, append_event
from modelpress.records import Artifacts, PromotionVerdict, ReportRecord, ResultsDocument
from modelpress.store import open_store

STEPS = ("fetch", "prune", "quantize", "validate", "benchmark-cpu", "report")


def _emit(events: Path, event: Literal["started", "finished", "failed"], step: str, *,
          seconds: float | None = None, message: str = "") -> None:
    append_event(events, ProgressEvent(event=event, step=step, time=time.time(),
                                       seconds=seconds, message=message))


def results_document(output: str, ratio: float = 4.0) -> ResultsDocument:
    """What a run's report step publishes, with made-up figures."""
    store = open_store(output)
    figures = {"parameters": 1000, "metric": {"name": "accuracy", "value": 0.98}}
    results = Results.model_validate({
        "baseline": {**figures, "sizeBytes": 400_000},
        "compressed": {**figures, "sizeBytes": int(400_000 / ratio)},
        "compressionRatio": ratio, "accuracyDrop": 0.002, "speedup": {"cpu": 1.8}})
    return ResultsDocument(
        results=results,
        artifacts=Artifacts(model=store.uri("model.onnx"), baseline=store.uri("baseline.onnx"),
                            report=store.uri("report.html"), results=store.uri("results.json"),
                            lineage=store.uri("lineage.json")),
        steps=[StepStatus(name=step, phase="Succeeded", duration_seconds=0.01, message="ok")
               for step in STEPS],
        promotion=PromotionVerdict(decision="Promoted", reasons=["no gates configured"]))


def succeed(job: CompressionJob, output: str, workdir: Path, events: Path, *,
            trust_model_code: bool = False) -> ReportRecord:
    for step in STEPS:
        _emit(events, "started", step)
        _emit(events, "finished", step, seconds=0.01, message="ok")
    workdir.mkdir(parents=True, exist_ok=True)
    store = open_store(output)
    document = results_document(output)
    published = {}
    for name, text in (("model.onnx", "onnx bytes"),
                       ("results.json", document.model_dump_json(by_alias=True,
                                                                 exclude_none=True))):
        (workdir / name).write_text(text)
        published[name] = store.put_file(workdir / name, name).sha256
    return ReportRecord(artifacts=document.artifacts, promotion=document.promotion,
                        sha256=published)


def fail_at_prune(job: CompressionJob, output: str, workdir: Path, events: Path, *,
                  trust_model_code: bool = False) -> str:
    _emit(events, "started", "fetch")
    _emit(events, "finished", "fetch", seconds=0.01, message="fetched")
    _emit(events, "started", "prune")
    _emit(events, "failed", "prune", message="sparsity 0.99 leaves no weights")
    raise StepFailed("prune", "sparsity 0.99 leaves no weights")


def crash(job: CompressionJob, output: str, workdir: Path, events: Path, *,
          trust_model_code: bool = False) -> str:
    raise RuntimeError("the runner broke")


def die(job: CompressionJob, output: str, workdir: Path, events: Path, *,
        trust_model_code: bool = False) -> str:
    os._exit(3)


def hang(job: CompressionJob, output: str, workdir: Path, events: Path, *,
         trust_model_code: bool = False) -> str:
    """Starts a step with a child process of its own (as kfp.local does), then waits."""
    _emit(events, "started", "fetch")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (events.parent / "child.pid").write_text(str(child.pid))
    time.sleep(120)
    return ""


def slow(job: CompressionJob, output: str, workdir: Path, events: Path, *,
         trust_model_code: bool = False) -> ReportRecord:
    """Succeeds after a few seconds: long enough to restart an operator meanwhile."""
    time.sleep(float(os.environ.get("FAKE_RUN_SECONDS", "4")))
    return succeed(job, output, workdir, events)
