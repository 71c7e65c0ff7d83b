"""Builders for operator unit tests: a valid spec, statuses, run states and results; the
controller's fakes (backend, event sink, copier, clock)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from modelpress.api import CompressionStatus, Results, StepStatus
from modelpress.operator.backends.base import BackendError, RunRequest, RunState
from modelpress.operator.controller import Controller
from modelpress.operator.intake import first_status
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
from modelpress.operator.scheduling import merged

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(minutes=5)
# Jobs write under /outputs/<namespace>/ and promote under /models/<namespace>/.
CONFIG = Config(default_output="file:///outputs/{namespace}/{name}",
                namespace_prefixes=("file:///outputs/{namespace}/", "file:///models/{namespace}/",
                                    "s3://bucket/{namespace}/"))
OUTPUT = "file:///outputs/ml/digits"
# What a succeeded run recorded of the files it published (sha256 by name).
RECORDED = {"model.onnx": "a" * 64, "results.json": "b" * 64, "report.html": "c" * 64}
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
    """A run state; a succeeded run has recorded RECORDED unless told otherwise."""
    if phase == "Succeeded":
        fields.setdefault("recorded", RECORDED)
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


def run_results(sha256: str = RECORDED["results.json"], **kwargs: Any) -> RunResults:
    """results.json as read; by default the very one the run recorded (`sha256`)."""
    steps = [StepStatus(name=name, phase="Succeeded", duration_seconds=1.5, message="ok")
             for name in ("fetch", "prune", "quantize", "validate", "benchmark-cpu", "report")]
    artifacts = {"model": f"{OUTPUT}/model.onnx", "report": f"{OUTPUT}/report.html"}
    return RunResults(results=results(**kwargs), artifacts=artifacts, steps=steps,
                      sha256=sha256)


def succeeded(generation: int = 1, **fields: Any) -> dict[str, Any]:
    """A finished, judged job. Its promotion holds the run's record (RECORDED) unless the
    one given names its own, as the operator writes every succeeded job's."""
    if "promotion" in fields:
        fields["promotion"] = {"sha256": RECORDED, **fields["promotion"]}
    base: dict[str, Any] = {
        "phase": "Succeeded", "runId": "run-1", "backend": "local",
        "observedGeneration": generation, "startedAt": EARLIER, "finishedAt": EARLIER,
        "results": results().to_wire(), "artifacts": {"output": OUTPUT},
        "promotion": {"decision": "Promoted", "reasons": ["no gates configured"],
                      "sha256": RECORDED, "modelSha256": RECORDED["model.onnx"]},
        "conditions": [condition("Succeeded", "True", "RunSucceeded"),
                       condition("Promoted", "True", "GatesPassed")]}
    return status(**{**base, **fields})


def reconciled(view: JobView, observed: Observation, config: Config = CONFIG) -> Decision:
    """`reconcile` with the spec checked first, as the controller does."""
    return reconcile(view, checked(view, config), observed, config)


def accepted(view: JobView, now: datetime = NOW, config: Config = CONFIG) -> CompressionStatus:
    """`accept` with the spec checked first, as the controller does."""
    return accept(view, checked(view, config), now)


# ------------------------------------------------------------ the controller's fakes


@dataclass
class FakeBackend:
    name: str = "local"
    capacity: int = 10
    phase: str = "Running"
    fail_with: str | None = None
    submitted: list[RunRequest] = field(default_factory=list)
    terminated: list[str] = field(default_factory=list)
    capacity_checks: int = 0

    def submit(self, request: RunRequest) -> str:
        if self.fail_with:
            raise BackendError(self.fail_with)
        self.submitted.append(request)
        return f"run-{len(self.submitted)}"

    def poll(self, run_id: str) -> RunState:
        if self.fail_with:
            raise BackendError(self.fail_with)
        recorded = RECORDED if self.phase == "Succeeded" else {}
        return RunState(run_id=run_id, phase=self.phase,  # type: ignore[arg-type]
                        recorded=recorded)

    def terminate(self, run_id: str) -> None:
        self.terminated.append(run_id)

    def has_capacity(self) -> bool:
        self.capacity_checks += 1
        in_flight = len(self.submitted) - len(self.terminated)
        return in_flight < self.capacity

    def runs_in_namespace(self, namespace: str) -> int:
        self.capacity_checks += 1
        return sum(1 for number, request in enumerate(self.submitted, start=1)
                   if f"run-{number}" not in self.terminated
                   and request.job.metadata.namespace == namespace)


@dataclass
class Events:
    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def __call__(self, type_: str, reason: str, message: str) -> None:
        self.seen.append((type_, reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.seen]


@dataclass
class Copier:
    """The copy action: records (output, target), and the digests it was handed."""

    fail_with: str | None = None
    copies: list[tuple[str, str]] = field(default_factory=list)
    recorded: list[Mapping[str, str]] = field(default_factory=list)

    def __call__(self, output: str, target: str, recorded: Mapping[str, str]) -> None:
        if self.fail_with:
            raise OSError(self.fail_with)
        self.copies.append((output, target))
        self.recorded.append(recorded)


@dataclass
class Ticks:
    """A monotonic clock the test moves."""

    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def apply(view: JobView, patch: dict[str, Any]) -> JobView:
    """The job as the API server holds it after the status patch (a new resourceVersion)."""
    return replace(view, status=merged(view.status, patch),
                   resource_version=str(int(view.resource_version or 0) + 1))


def intake(controller: Controller, view: JobView, events: Events | None = None) -> JobView:
    """`view` after the intake process's first status, as the operator's process first
    sees it (its Events go to `events`)."""
    first = first_status(view, controller.config, NOW)
    emit = events if events is not None else Events()
    for event in first.events:
        emit(event.type, event.reason, event.message)
    accepted = apply(view, first.patch)
    controller.observed(accepted)
    return accepted
