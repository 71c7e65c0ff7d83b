"""Builders for operator unit tests: a valid spec, statuses, run states and results."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from modelpress.api import CompressionStatus, Results, StepStatus
from modelpress.operator.backends.base import RunState
from modelpress.operator.reconcile import (
    Config,
    Decision,
    JobView,
    Observation,
    RunResults,
    accept,
    checked,
    reconcile,
)

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(minutes=5)
CONFIG = Config(default_output="file:///outputs/{namespace}/{name}")
OUTPUT = "file:///outputs/ml/digits"
_EXAMPLE = yaml.safe_load((ROOT / "examples" / "digits-prune-quantize.yaml").read_text())


def spec(**promotion: Any) -> dict[str, Any]:
    """The digits example's spec; keyword arguments replace its `promotion`."""
    value = copy.deepcopy(_EXAMPLE["spec"])
    if promotion:
        value["promotion"] = promotion
    return value


def job(spec_: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
        generation: int = 1, annotations: dict[str, str] | None = None) -> JobView:
    return JobView(namespace="ml", name="digits", uid="uid-1", generation=generation,
                   spec=spec_ if spec_ is not None else spec(), status=status or {},
                   annotations=annotations or {})


def status(**fields: Any) -> dict[str, Any]:
    """A status as the API server holds it (camelCase JSON)."""
    return CompressionStatus.model_validate(fields).to_wire()


def in_flight(phase: str = "Running", **fields: Any) -> dict[str, Any]:
    """A status after submission (as the controller writes it)."""
    base: dict[str, Any] = {
        "phase": phase, "runId": "run-1", "backend": "local", "observedGeneration": 1,
        "artifacts": {"output": OUTPUT},
        "conditions": [condition("Succeeded", "Unknown", "Submitted"),
                       condition("Promoted", "Unknown", "AwaitingResults")]}
    if phase == "Running":
        base["startedAt"] = EARLIER
    return status(**{**base, **fields})


def condition(type_: str, value: str, reason: str, when: datetime = EARLIER) -> dict[str, Any]:
    return {"type": type_, "status": value, "reason": reason, "message": "",
            "lastTransitionTime": when}


def run(phase: str, **fields: Any) -> RunState:
    return RunState(run_id="run-1", phase=phase, **fields)  # type: ignore[arg-type]


def results(ratio: float = 4.0, drop: float = 0.002, speedup: dict[str, float] | None = None,
            benchmarks: list[dict[str, Any]] | None = None) -> Results:
    figures = {"parameters": 1000, "metric": {"name": "accuracy", "value": 0.98}}
    return Results.model_validate({
        "baseline": {**figures, "sizeBytes": 400_000},
        "compressed": {**figures, "sizeBytes": int(400_000 / ratio)},
        "compressionRatio": ratio, "accuracyDrop": drop,
        "speedup": {"cpu": 1.8} if speedup is None else speedup,
        "benchmarks": benchmarks or []})


def run_results(**kwargs: Any) -> RunResults:
    steps = [StepStatus(name=name, phase="Succeeded", duration_seconds=1.5, message="ok")
             for name in ("fetch", "prune", "quantize", "validate", "benchmark-cpu", "report")]
    artifacts = {"model": f"{OUTPUT}/model.onnx", "report": f"{OUTPUT}/report.html"}
    return RunResults(results=results(**kwargs), artifacts=artifacts, steps=steps)


def succeeded(generation: int = 1, **fields: Any) -> dict[str, Any]:
    """A finished, judged job."""
    base: dict[str, Any] = {
        "phase": "Succeeded", "runId": "run-1", "backend": "local",
        "observedGeneration": generation, "startedAt": EARLIER, "finishedAt": EARLIER,
        "results": results().to_wire(), "artifacts": {"output": OUTPUT},
        "promotion": {"decision": "Promoted", "reasons": ["no gates configured"]},
        "conditions": [condition("Succeeded", "True", "RunSucceeded"),
                       condition("Promoted", "True", "GatesPassed")]}
    return status(**{**base, **fields})


def reconciled(view: JobView, observed: Observation, config: Config = CONFIG) -> Decision:
    """`reconcile` with the spec checked first, as the controller does."""
    return reconcile(view, checked(view, config), observed, config)


def accepted(view: JobView, now: datetime = NOW, config: Config = CONFIG) -> CompressionStatus:
    """`accept` with the spec checked first, as the controller does."""
    return accept(view, checked(view, config), now)
