"""Prometheus metrics (DESIGN §4), all updated in one place from status transitions.

`record(before, after)` is called after every reconcile: gauges are set from the status
(so a restarted operator repopulates them), while histograms and counters observe only
transitions (so a restart never counts anything twice). Per-job series carry namespace,
job and model, and `forget` removes them when the job is deleted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modelpress.api import CompressionStatus, Results
from modelpress.operator.status import PROMOTED

PHASES = ("Pending", "Running", "Succeeded", "Failed")
JOB_LABELS = ("namespace", "job", "model")
# Runs take minutes to hours; steps seconds to an hour.
JOB_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
STEP_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_FINISHED_STEPS = ("Succeeded", "Failed")


@dataclass(frozen=True)
class JobKey:
    namespace: str
    job: str
    model: str


class _JobsByPhase(Collector):
    """modelpress_jobs, computed at scrape time from the phase of every known job."""

    def __init__(self) -> None:
        self.phases: dict[tuple[str, str], str] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("modelpress_jobs", "CompressionJobs known to the operator, "
                                   "by phase.", labels=["namespace", "phase"])
        namespaces = sorted({namespace for namespace, _ in self.phases})
        for namespace in namespaces:
            for phase in PHASES:
                count = sum(1 for (ns, _), value in self.phases.items()
                            if ns == namespace and value == phase)
                family.add_metric([namespace, phase], count)
        yield family


class OperatorMetrics:
    """The operator's metrics in their own registry (tests make a fresh one each)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._jobs = _JobsByPhase()
        self.registry.register(self._jobs)
        self.job_duration = Histogram(
            "modelpress_job_duration_seconds", "Wall time of finished runs, from start to end.",
            ["namespace", "phase"], buckets=JOB_BUCKETS, registry=self.registry)
        self.step_duration = Histogram(
            "modelpress_step_duration_seconds", "Compute time of each finished pipeline step.",
            ["step", "phase"], buckets=STEP_BUCKETS, registry=self.registry)
        self.compression_ratio = Gauge(
            "modelpress_compression_ratio", "Baseline bytes / compressed bytes.",
            JOB_LABELS, registry=self.registry)
        self.speedup = Gauge(
            "modelpress_speedup_ratio", "Baseline latency / compressed latency per pool, at "
            "the largest batch size.", [*JOB_LABELS, "pool"], registry=self.registry)
        self.accuracy_drop = Gauge(
            "modelpress_accuracy_drop_ratio", "Baseline metric minus compressed metric.",
            JOB_LABELS, registry=self.registry)
        self.model_size = Gauge(
            "modelpress_model_size_bytes", "Model size on disk (fp32 ONNX baseline, compressed).",
            [*JOB_LABELS, "variant"], registry=self.registry)
        self.promotion_decisions = Counter(
            "modelpress_promotion_decisions_total", "Promotion decisions made, by outcome.",
            ["namespace", "decision", "reason"], registry=self.registry)
        self.reconcile_errors = Counter(
            "modelpress_reconcile_errors_total", "Reconciles that hit an error, by kind.",
            ["namespace", "error"], registry=self.registry)
        self._pools: dict[JobKey, set[str]] = {}

    def record(self, key: JobKey, before: CompressionStatus, after: CompressionStatus) -> None:
        self._jobs.phases[(key.namespace, key.job)] = after.phase
        self._start_series(key, after)
        self._observe_steps(before, after)
        if after.phase != before.phase and after.phase in ("Succeeded", "Failed") \
                and after.started_at and after.finished_at:
            seconds = (after.finished_at - after.started_at).total_seconds()
            self.job_duration.labels(key.namespace, after.phase).observe(max(seconds, 0.0))
        if after.results is not None:
            self._set_results(key, after.results)
        self._count_decision(key, before, after)

    def reconcile_error(self, namespace: str, error: BaseException) -> None:
        self.reconcile_errors.labels(namespace, type(error).__name__).inc()

    def forget(self, key: JobKey) -> None:
        """Drop every per-job series of a deleted job."""
        self._jobs.phases.pop((key.namespace, key.job), None)
        labels = (key.namespace, key.job, key.model)
        for gauge in (self.compression_ratio, self.accuracy_drop):
            _remove(gauge, labels)
        for pool in self._pools.pop(key, set()):
            _remove(self.speedup, (*labels, pool))
        for variant in ("baseline", "compressed"):
            _remove(self.model_size, (*labels, variant))

    def _start_series(self, key: JobKey, after: CompressionStatus) -> None:
        """Create the job's duration series at zero before anything finishes.

        prometheus_client creates a labelled series at its first observation, and rate()
        cannot count a series' first sample: without this, the first job a fresh operator
        finishes would never show on a rate-based panel.
        """
        for phase in ("Succeeded", "Failed"):
            self.job_duration.labels(key.namespace, phase)
            for step in after.steps:
                self.step_duration.labels(step.name, phase)

    def _observe_steps(self, before: CompressionStatus, after: CompressionStatus) -> None:
        for index, step in enumerate(after.steps):
            if step.phase not in _FINISHED_STEPS or step.duration_seconds is None:
                continue
            earlier = before.steps[index] if index < len(before.steps) else None
            if earlier and earlier.name == step.name and earlier.phase in _FINISHED_STEPS:
                continue
            self.step_duration.labels(step.name, step.phase).observe(step.duration_seconds)

    def _set_results(self, key: JobKey, results: Results) -> None:
        labels = (key.namespace, key.job, key.model)
        self.compression_ratio.labels(*labels).set(results.compression_ratio)
        self.accuracy_drop.labels(*labels).set(results.accuracy_drop)
        self.model_size.labels(*labels, "baseline").set(results.baseline.size_bytes)
        self.model_size.labels(*labels, "compressed").set(results.compressed.size_bytes)
        for pool, value in results.speedup.items():
            self.speedup.labels(*labels, pool).set(value)
        self._pools.setdefault(key, set()).update(results.speedup)

    def _count_decision(self, key: JobKey, before: CompressionStatus,
                        after: CompressionStatus) -> None:
        decision = after.promotion.decision if after.promotion else None
        earlier = before.promotion.decision if before.promotion else None
        if decision in ("Promoted", "Rejected") and decision != earlier:
            reason = next((c.reason for c in after.conditions if c.type == PROMOTED), "")
            self.promotion_decisions.labels(key.namespace, decision, reason).inc()


def _remove(metric: Gauge, labels: tuple[str, ...]) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass  # never set for this job (it failed before producing results)
