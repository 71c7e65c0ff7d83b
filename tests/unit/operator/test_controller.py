"""The controller around the reconciler, with a fake backend: submit once, follow, promote,
queue at the cap, finalize."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from opfixtures import (
    CONFIG,
    NOW,
    OUTPUT,
    Copier,
    Events,
    FakeBackend,
    Ticks,
    apply,
    intake,
    job,
    run_results,
    spec,
)

from modelpress.operator import controller as controller_module
from modelpress.operator.controller import FULL_FOR_SECONDS, Controller, view_of
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.reconcile import Checked, Config, JobView, RunResults, checked

TARGET = "file:///models/ml/digits/prod"


def _controller(backend: FakeBackend, copier: Copier | None = None,
                results: RunResults | None = None, ticks: Ticks | None = None) -> Controller:
    return Controller(backend, CONFIG, OperatorMetrics(),  # type: ignore[arg-type]
                      results_reader=lambda output: results or run_results(),
                      copier=copier or Copier(), clock=lambda: NOW,
                      monotonic=ticks or Ticks())


def test_create_submits_and_records_the_run() -> None:
    backend, events = FakeBackend(), Events()
    patch = _controller(backend).sync(job(), events)
    assert patch["runId"] == "run-1" and patch["backend"] == "local"
    assert patch["phase"] == "Pending"
    assert patch["artifacts"] == {"output": "file:///outputs/ml/digits"}
    assert "Submitted" in events.reasons()
    assert len(backend.submitted) == 1


def test_a_stale_body_continues_from_the_status_written_last() -> None:
    backend, events = FakeBackend(), Events()
    controller = _controller(backend)
    controller.sync(job(), events)
    controller.sync(job(), events)  # kopf has not seen the status patch yet: same body
    assert len(backend.submitted) == 1
    assert events.reasons().count("Submitted") == 1
    assert [r for r in events.reasons() if r == "Running"] == ["Running"]


def test_a_restarted_operator_resumes_from_the_status() -> None:
    backend = FakeBackend()
    view = apply(job(), _controller(backend).sync(job(), Events()))
    restarted = _controller(backend)
    patch = restarted.sync(view, Events())
    assert len(backend.submitted) == 1
    assert patch["phase"] == "Running"


def test_submit_failure_is_reported_and_retried() -> None:
    backend, events = FakeBackend(fail_with="KFP API unreachable"), Events()
    controller = _controller(backend)
    view = apply(job(), controller.sync(job(), events))
    assert "runId" not in (view.status or {})
    assert ("Warning", "SubmitFailed") in {(t, r) for t, r, _ in events.seen}
    assert controller.metrics.registry.get_sample_value(
        "modelpress_reconcile_errors_total", {"namespace": "ml", "error": "BackendError"}) == 1
    backend.fail_with = None
    patch = controller.sync(view, events)
    assert patch["runId"] == "run-1"


def test_jobs_beyond_the_cap_are_queued_until_a_slot_frees() -> None:
    backend = FakeBackend(capacity=1)
    controller = _controller(backend)
    first = job()
    second = JobView("ml", "other", "uid-2", 1, spec(), {})
    first = apply(first, controller.sync(first, Events()))
    queued = controller.sync(second, Events())
    assert any(c["reason"] == "Queued" for c in queued["conditions"])
    assert len(backend.submitted) == 1
    backend.phase = "Succeeded"
    controller.sync(first, Events())
    backend.terminated.append("run-1")  # the finished run no longer holds a slot
    assert controller.sync(apply(second, queued), Events())["runId"] == "run-2"


def _one_running_one_queued(ticks: Ticks) -> tuple[Controller, FakeBackend, JobView, JobView]:
    backend = FakeBackend(capacity=1)
    controller = _controller(backend, ticks=ticks)
    first = apply(job(), controller.sync(job(), Events()))
    second = JobView("ml", "other", "uid-2", 1, spec(), {})
    second = apply(second, controller.sync(second, Events()))
    return controller, backend, first, second


def test_a_queued_job_costs_the_backend_nothing_while_every_slot_is_taken() -> None:
    ticks = Ticks()
    controller, backend, _, second = _one_running_one_queued(ticks)
    checks = backend.capacity_checks
    for _ in range(50):  # its timer, every poll interval
        assert controller.sync(second, Events()) == {}
    assert backend.capacity_checks == checks
    ticks.now += FULL_FOR_SECONDS + 0.01  # a slot may have been freed elsewhere: ask again
    assert controller.sync(second, Events()) == {}
    assert backend.capacity_checks == checks + 1


def test_a_run_seen_ending_frees_its_slot_for_the_next_sync_at_once() -> None:
    ticks = Ticks()  # never moves: only the run's end can tell the slot is free
    controller, backend, first, second = _one_running_one_queued(ticks)
    backend.phase = "Succeeded"
    controller.sync(first, Events())
    backend.terminated.append("run-1")
    assert controller.sync(second, Events())["runId"] == "run-2"


def test_the_intakes_first_status_is_taken_over_without_the_backend() -> None:
    backend, events = FakeBackend(), Events()
    controller = _controller(backend)
    view = intake(controller, job(), events)
    assert view.status is not None and view.status["phase"] == "Pending"
    assert "runId" not in view.status
    assert [(t, r) for t, r, _ in events.seen] == [("Normal", "Queued")]
    assert backend.capacity_checks == 0 and backend.submitted == []
    assert controller.metrics.registry.get_sample_value(
        "modelpress_jobs", {"namespace": "ml", "phase": "Pending"}) == 1
    follow = controller.sync(view, events)  # admitted
    assert follow["runId"] == "run-1"
    assert events.reasons().count("Queued") == 1


def test_an_invalid_job_fails_at_intake_with_one_warning() -> None:
    bad = spec()
    bad["steps"][0]["prune"]["sparsity"] = 1.5
    events = Events()
    controller = _controller(FakeBackend())
    view = intake(controller, job(bad), events)
    assert view.status is not None and view.status["phase"] == "Failed"
    assert [(t, r) for t, r, _ in events.seen] == [("Warning", "InvalidSpec")]
    assert controller.sync(view, events) == {}  # settled: nothing more


def test_backend_outage_is_visible_and_recovers() -> None:
    backend = FakeBackend()
    controller = _controller(backend)
    view = apply(job(), controller.sync(job(), Events()))
    view = apply(view, controller.sync(view, Events()))
    backend.fail_with = "503 Service Unavailable"
    events = Events()
    view = apply(view, controller.sync(view, events))
    assert view.status is not None and view.status["phase"] == "Running"
    assert events.seen == [("Warning", "BackendUnavailable", "503 Service Unavailable")]
    backend.fail_with = None
    patch = controller.sync(view, Events())
    assert [c["reason"] for c in patch["conditions"] if c["type"] == "Succeeded"] == ["Running"]


def _finished_job(promotion: dict[str, Any]) -> tuple[JobView, FakeBackend]:
    backend = FakeBackend(phase="Succeeded")
    view = job(spec(**promotion))
    return view, backend


def test_success_promotes_by_copying_to_the_target() -> None:
    view, backend = _finished_job({"gates": {"minCompressionRatio": 3.5}, "target": TARGET})
    copier, events = Copier(), Events()
    controller = _controller(backend, copier)
    view = apply(view, controller.sync(view, Events()))
    view = apply(view, controller.sync(view, events))
    assert copier.copies == [(OUTPUT, TARGET)]
    assert view.status is not None
    assert view.status["phase"] == "Succeeded"
    assert view.status["promotion"]["decision"] == "Promoted"
    assert view.status["promotion"]["promotedUri"] == TARGET
    assert {"RunSucceeded", "Promoted"} <= set(events.reasons())
    assert controller.sync(view, Events()) == {}  # settled: nothing more to write
    assert len(copier.copies) == 1


def test_failed_copy_keeps_the_decision_pending_and_retries() -> None:
    view, backend = _finished_job({"target": TARGET})
    copier = Copier(fail_with="bucket not found")
    controller = _controller(backend, copier)
    view = apply(view, controller.sync(view, Events()))
    events = Events()
    view = apply(view, controller.sync(view, events))
    assert view.status is not None and view.status["promotion"]["decision"] == "Pending"
    assert ("Warning", "PromotionFailed") in {(t, r) for t, r, _ in events.seen}
    copier.fail_with = None
    view = apply(view, controller.sync(view, Events()))
    assert view.status is not None and view.status["promotion"]["decision"] == "Promoted"


def test_rejected_job_copies_nothing() -> None:
    view, backend = _finished_job({"gates": {"minCompressionRatio": 50}, "target": TARGET})
    copier, events = Copier(), Events()
    controller = _controller(backend, copier)
    view = apply(view, controller.sync(view, Events()))
    view = apply(view, controller.sync(view, events))
    assert copier.copies == []
    assert view.status is not None and view.status["promotion"]["decision"] == "Rejected"
    assert ("Warning", "GatesFailed") in {(t, r) for t, r, _ in events.seen}


@pytest.mark.parametrize(("phase", "terminated"), [("Running", ["run-1"]),
                                                   ("Succeeded", [])])
def test_delete_terminates_only_runs_in_flight(phase: str, terminated: list[str]) -> None:
    backend = FakeBackend(phase=phase)
    controller = _controller(backend)
    view = apply(job(), controller.sync(job(), Events()))
    view = apply(view, controller.sync(view, Events()))
    events = Events()
    controller.delete(view, events)
    assert backend.terminated == terminated
    assert ("Terminated" in events.reasons()) == bool(terminated)
    assert controller.metrics.registry.get_sample_value(
        "modelpress_jobs", {"namespace": "ml", "phase": phase}) is None


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every time the controller parses a spec, as (uid, generation)."""
    seen: list[tuple[str, int]] = []

    def counting(view: JobView, config: Config) -> Checked:
        seen.append((view.uid, view.generation))
        return checked(view, config)

    monkeypatch.setattr(controller_module, "checked", counting)
    return seen


def test_a_spec_is_parsed_once_per_generation(parses: list[tuple[str, int]]) -> None:
    controller = _controller(FakeBackend())
    view = intake(controller, job())
    for _ in range(3):  # submitted, then running, then polled while running
        view = apply(view, controller.sync(view, Events()))
    assert view.status is not None and view.status["phase"] == "Running"
    assert parses == [("uid-1", 1)]
    edited = replace(view, generation=2, spec=spec(gates={"minCompressionRatio": 2.0}))
    controller.sync(edited, Events())
    controller.sync(edited, Events())
    assert parses == [("uid-1", 1), ("uid-1", 2)]


def test_a_changed_spec_is_acted_on_in_its_new_generation() -> None:
    """What the cache returns for a new generation is that generation's spec."""
    backend = FakeBackend(phase="Succeeded")
    controller = _controller(backend)
    view = apply(job(), controller.sync(job(), Events()))
    view = apply(view, controller.sync(view, Events()))
    assert view.status is not None and view.status["promotion"]["decision"] == "Promoted"
    tightened = replace(view, generation=2, spec=spec(gates={"minCompressionRatio": 50}))
    view = apply(tightened, controller.sync(tightened, Events()))
    assert view.status is not None and view.status["promotion"]["decision"] == "Rejected"


def test_no_run_is_submitted_before_the_finalizer_is_on() -> None:
    """Deleting such a job could not stop its run: it stays queued, the backend unasked."""
    backend, events = FakeBackend(), Events()
    controller = _controller(backend)
    bare = replace(job(), has_finalizer=False)
    view = intake(controller, bare, events)
    assert controller.sync(view, events) == {}
    assert backend.submitted == [] and backend.capacity_checks == 0
    assert controller.sync(replace(view, has_finalizer=True), events)["runId"] == "run-1"


def test_a_job_deleted_before_its_finalizer_is_forgotten(
        parses: list[tuple[str, int]]) -> None:
    controller = _controller(FakeBackend())
    bare = replace(job(), has_finalizer=False)
    controller.sync(intake(controller, bare), Events())  # parsed; no run without it
    controller.forget(bare)
    assert controller.metrics.registry.get_sample_value(
        "modelpress_jobs", {"namespace": "ml", "phase": "Pending"}) is None
    controller.sync(intake(controller, bare), Events())  # the same uid: nothing was kept
    assert parses == [("uid-1", 1), ("uid-1", 1)]


def test_a_deleted_job_is_forgotten(parses: list[tuple[str, int]]) -> None:
    controller = _controller(FakeBackend())
    view = apply(job(), controller.sync(job(), Events()))
    controller.delete(view, Events())
    controller.sync(view, Events())  # the same uid again: nothing of it was kept
    assert parses == [("uid-1", 1), ("uid-1", 1)]


def test_view_of_a_kopf_body() -> None:
    body = {"metadata": {"name": "digits", "namespace": "ml", "uid": "u", "generation": 4,
                         "annotations": {"a": "b"}},
            "spec": spec(), "status": {"phase": "Running"}}
    view = view_of(body)
    assert (view.namespace, view.name, view.uid, view.generation) == ("ml", "digits", "u", 4)
    assert view.status == {"phase": "Running"} and view.annotations == {"a": "b"}
    assert not view.has_finalizer
    body["metadata"]["finalizers"] = ["other.io/keep", "modelpress.io/finalizer"]
    assert view_of(body).has_finalizer
