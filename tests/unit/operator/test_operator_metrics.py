"""Metrics: names per DESIGN §4, transitions counted once, per-job series dropped."""

from __future__ import annotations

from datetime import timedelta

from opfixtures import in_flight, run_results, succeeded
from prometheus_client import generate_latest

from modelpress.operator.metrics import JobKey, OperatorMetrics
from modelpress.operator.status import parse_status

KEY = JobKey("ml", "digits", "builtin://digits-cnn")
LABELS = {"namespace": "ml", "job": "digits", "model": "builtin://digits-cnn"}


def _finish(metrics: OperatorMetrics) -> None:
    """Record a job going from Running to Succeeded after two minutes."""
    before = parse_status(in_flight())
    assert before.started_at is not None
    after = parse_status(succeeded()).model_copy(update={
        "started_at": before.started_at, "finished_at": before.started_at + timedelta(minutes=2),
        "steps": run_results().steps})
    metrics.record(KEY, before, after)


def test_names_follow_the_conventions() -> None:
    metrics = OperatorMetrics()
    _finish(metrics)
    metrics.reconcile_error("ml", RuntimeError("x"))
    families = {(family.name, family.type) for family in metrics.registry.collect()}
    assert families == {
        ("modelpress_jobs", "gauge"),
        ("modelpress_job_duration_seconds", "histogram"),
        ("modelpress_step_duration_seconds", "histogram"),
        ("modelpress_compression_ratio", "gauge"),
        ("modelpress_speedup_ratio", "gauge"),
        ("modelpress_accuracy_drop_ratio", "gauge"),
        ("modelpress_model_size_bytes", "gauge"),
        ("modelpress_promotion_decisions", "counter"),
        ("modelpress_reconcile_errors", "counter"),
    }


def test_results_become_per_job_gauges() -> None:
    metrics = OperatorMetrics()
    _finish(metrics)
    value = metrics.registry.get_sample_value
    assert value("modelpress_compression_ratio", LABELS) == 4.0
    assert value("modelpress_accuracy_drop_ratio", LABELS) == 0.002
    assert value("modelpress_speedup_ratio", {**LABELS, "pool": "cpu"}) == 1.8
    assert value("modelpress_model_size_bytes", {**LABELS, "variant": "baseline"}) == 400_000
    assert value("modelpress_jobs", {"namespace": "ml", "phase": "Succeeded"}) == 1
    assert value("modelpress_jobs", {"namespace": "ml", "phase": "Running"}) == 0


def test_transitions_are_counted_once() -> None:
    metrics = OperatorMetrics()
    _finish(metrics)
    done = parse_status(succeeded())
    metrics.record(KEY, done, done)  # a resync, or a restarted operator resuming the job
    value = metrics.registry.get_sample_value
    assert value("modelpress_job_duration_seconds_count",
                 {"namespace": "ml", "phase": "Succeeded"}) == 1
    assert value("modelpress_job_duration_seconds_sum",
                 {"namespace": "ml", "phase": "Succeeded"}) == 120
    assert value("modelpress_promotion_decisions_total",
                 {"namespace": "ml", "decision": "Promoted", "reason": "GatesPassed"}) == 1


def test_step_durations_observed_when_steps_finish() -> None:
    metrics = OperatorMetrics()
    _finish(metrics)
    assert metrics.registry.get_sample_value(
        "modelpress_step_duration_seconds_count", {"step": "prune", "phase": "Succeeded"}) == 1


def test_forget_removes_every_per_job_series() -> None:
    metrics = OperatorMetrics()
    _finish(metrics)
    metrics.forget(KEY)
    text = generate_latest(metrics.registry).decode()
    assert 'job="digits"' not in text
    assert metrics.registry.get_sample_value("modelpress_jobs", {
        "namespace": "ml", "phase": "Succeeded"}) is None


def test_forget_a_job_that_never_had_results() -> None:
    metrics = OperatorMetrics()
    pending = parse_status(in_flight("Pending"))
    metrics.record(KEY, pending, pending)
    metrics.forget(KEY)
    assert metrics.registry.get_sample_value("modelpress_jobs", {
        "namespace": "ml", "phase": "Pending"}) is None


def test_reconcile_errors_by_kind() -> None:
    metrics = OperatorMetrics()
    metrics.reconcile_error("ml", TimeoutError())
    metrics.reconcile_error("ml", TimeoutError())
    assert metrics.registry.get_sample_value("modelpress_reconcile_errors_total", {
        "namespace": "ml", "error": "TimeoutError"}) == 2
