"""The operator's metrics, fed through its own code: a recorded finished job for the name
check, and the real controller running a real job for the scrape test."""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelpress.api import CompressionStatus
from modelpress.operator.backends.base import BackendError
from modelpress.operator.backends.local import LocalBackend
from modelpress.operator.controller import Controller, view_of
from modelpress.operator.metrics import JobKey, OperatorMetrics
from modelpress.operator.reconcile import FINALIZER, Config

ROOT = Path(__file__).resolve().parents[2]
DIGITS_EXAMPLE = ROOT / "examples" / "digits-prune-quantize.yaml"
_FIGURES = {"parameters": 151306, "metric": {"name": "accuracy", "value": 0.99}}


def finished_job_status() -> tuple[CompressionStatus, CompressionStatus]:
    """(before, after) of a job whose run just succeeded and whose model was promoted."""
    before = CompressionStatus.model_validate({
        "phase": "Running", "startedAt": "2025-05-01T12:00:00Z",
        "steps": [{"name": "fetch", "phase": "Running"}]})
    after = CompressionStatus.model_validate({
        "phase": "Succeeded", "startedAt": "2025-05-01T12:00:00Z",
        "finishedAt": "2025-05-01T12:01:00Z",
        "steps": [{"name": "fetch", "phase": "Succeeded", "durationSeconds": 4.5}],
        "results": {"baseline": {**_FIGURES, "sizeBytes": 606448},
                    "compressed": {**_FIGURES, "sizeBytes": 161336},
                    "compressionRatio": 3.76, "accuracyDrop": 0.0, "speedup": {"cpu": 3.2}},
        "promotion": {"decision": "Promoted"},
        "conditions": [{"type": "Promoted", "status": "True", "reason": "GatesPassed",
                        "lastTransitionTime": "2025-05-01T12:01:00Z"}]})
    return before, after


def steady_state(metrics: OperatorMetrics, key: JobKey) -> None:
    """Give `metrics` the counters an operator that has been running for a while has.

    rate() and increase() cannot count a series' first sample. The operator itself starts
    each job's duration series at zero; promotion decisions (whose reason label is only
    known when one is made) and reconcile errors start here, before the first scrape.
    """
    for decision, reason in (("Promoted", "GatesPassed"), ("Rejected", "GatesFailed")):
        metrics.promotion_decisions.labels(key.namespace, decision, reason)
    metrics.reconcile_error(key.namespace, BackendError("the KFP API timed out"))


def exported_series(metrics: OperatorMetrics) -> set[str]:
    """Series names in the registry's exposition (histograms as _bucket/_sum/_count)."""
    with without_created_series():
        text = prometheus_client.generate_latest(metrics.registry).decode()
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


def metrics_after_a_finished_job() -> OperatorMetrics:
    metrics = OperatorMetrics()
    before, after = finished_job_status()
    metrics.record(JobKey("ml", "digits", "builtin://digits-cnn"), before, after)
    metrics.reconcile_error("ml", BackendError("the KFP API timed out"))
    return metrics


@contextmanager
def without_created_series() -> Iterator[None]:
    """No *_created series next to each counter, as `modelpress operator` serves them."""
    prometheus_client.disable_created_metrics()
    try:
        yield
    finally:
        prometheus_client.enable_created_metrics()


@dataclass
class LocalOperator:
    """The operator's controller and local backend driving one job, without kopf: `sync`
    does what kopf's timer handler does and applies the status patch as the API would."""

    controller: Controller
    body: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)

    @classmethod
    def for_digits(cls, metrics: OperatorMetrics, workdir: Path, output: Path) -> LocalOperator:
        body = yaml.safe_load(DIGITS_EXAMPLE.read_text(encoding="utf-8"))
        body["metadata"].update(uid=str(uuid.uuid4()), generation=1, resourceVersion="1",
                                finalizers=[FINALIZER])  # as kopf puts it on
        body["spec"]["output"] = output.as_uri()
        config = Config(default_output=output.as_uri(),
                        namespace_prefixes=(output.as_uri() + "/",))  # the job's own output
        controller = Controller(LocalBackend(workdir, max_runs=1), config, metrics)
        return cls(controller, body)

    @property
    def key(self) -> JobKey:
        return JobKey(self.body["metadata"]["namespace"], self.body["metadata"]["name"],
                      self.body["spec"]["model"]["uri"])

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.body.get("status") or {})

    def sync(self) -> None:
        patch = self.controller.sync(view_of(copy.deepcopy(self.body)), self._emit)
        if not patch:
            return
        status = self.body.setdefault("status", {})
        for key, value in patch.items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        metadata = self.body["metadata"]
        metadata["resourceVersion"] = str(int(metadata["resourceVersion"]) + 1)

    def run_to_the_end(self, timeout_s: float, poll_s: float = 1.0) -> None:
        """Sync until the job finished and its promotion was decided."""
        deadline = time.monotonic() + timeout_s
        while not self._done():
            assert time.monotonic() < deadline, f"job not done in {timeout_s} s: {self.status}"
            self.sync()
            time.sleep(poll_s)

    def _done(self) -> bool:
        status = self.status
        decision = (status.get("promotion") or {}).get("decision")
        return status.get("phase") in ("Succeeded", "Failed") and decision != "Pending"

    def _emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))
