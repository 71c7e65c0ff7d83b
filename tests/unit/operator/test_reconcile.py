"""The reconciler, table-style: (status before, observation) -> (status after, actions)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from opfixtures import (
    CONFIG,
    EARLIER,
    NOW,
    OUTPUT,
    accepted,
    condition,
    in_flight,
    job,
    reconciled,
    run,
    run_results,
    spec,
    succeeded,
)

from modelpress.api import StepStatus
from modelpress.operator.reconcile import (
    Config,
    EmitEvent,
    Observation,
    Promote,
    SubmitRun,
    finalize,
    transition_events,
)
from modelpress.operator.status import INVALID_SPEC, find_condition


def _reason(decision_status: Any, type_: str = "Succeeded") -> str | None:
    found = find_condition(decision_status, type_)
    return found.reason if found else None


def _kinds(actions: list[Any]) -> list[str]:
    return [type(action).__name__ for action in actions if not isinstance(action, EmitEvent)]


def _bad_sparsity() -> dict[str, Any]:
    value = spec()
    value["steps"][0]["prune"]["sparsity"] = 1.5
    return value


PHASES = [
    # id, spec, status before, observation, phase after, Succeeded reason after, actions
    pytest.param(None, {}, Observation(NOW), "Pending", None, ["SubmitRun"],
                 id="new-job-is-submitted"),
    pytest.param(None, {}, Observation(NOW, slot_free=False), "Pending", "Queued", [],
                 id="new-job-queued-at-cap"),
    pytest.param(None, {"phase": "Pending", "conditions": [
                     condition("Succeeded", "Unknown", "Queued")]},
                 Observation(NOW), "Pending", "Queued", ["SubmitRun"],
                 id="queued-job-submitted-when-slot-frees"),
    pytest.param(None, {}, Observation(NOW, slot_free=False, backend_error="refused"),
                 "Pending", "BackendUnavailable", [], id="capacity-unknown-backend-down"),
    pytest.param(_bad_sparsity(), {}, Observation(NOW), "Failed", "InvalidSpec", [],
                 id="invalid-spec-fails"),
    pytest.param(spec(condition="results.compressionRatio >>"), {}, Observation(NOW),
                 "Failed", "InvalidSpec", [], id="invalid-cel-fails-before-running"),
    pytest.param(None, in_flight("Pending"), Observation(NOW, run=run("Pending")),
                 "Pending", "Submitted", [], id="submitted-run-waiting"),
    pytest.param(None, in_flight("Pending"), Observation(NOW, run=run("Pending"),
                                                         slot_free=True),
                 "Pending", "Submitted", [], id="run-id-present-never-resubmits"),
    pytest.param(None, in_flight("Pending"), Observation(NOW, run=run("Running")),
                 "Running", "Running", [], id="pending-to-running"),
    pytest.param(None, in_flight(), Observation(NOW, backend_error="connection refused"),
                 "Running", "BackendUnavailable", [], id="backend-unreachable-keeps-phase"),
    pytest.param(None, in_flight(), Observation(NOW, run=run("Succeeded"),
                                                results=run_results()),
                 "Succeeded", "RunSucceeded", [], id="running-to-succeeded"),
    pytest.param(None, in_flight(), Observation(NOW, run=run("Succeeded"),
                                                results_error="no results.json"),
                 "Failed", "ResultsMissing", [], id="succeeded-without-results-fails"),
    pytest.param(None, in_flight(), Observation(NOW, run=run(
                     "Failed", failed_step="prune", message="sparsity too high")),
                 "Failed", "StepFailed", [], id="failing-step-fails"),
    pytest.param(None, in_flight(), Observation(NOW, run=run("Failed", message="OOMKilled")),
                 "Failed", "RunFailed", [], id="failed-run-without-step"),
    pytest.param(None, in_flight(), Observation(NOW, run=run("Canceled")),
                 "Failed", "RunCanceled", [], id="canceled-outside-is-terminal"),
    pytest.param(None, in_flight(), Observation(NOW, run=run("Lost")),
                 "Failed", "RunLost", [], id="lost-run-fails"),
    pytest.param(None, succeeded(), Observation(NOW), "Succeeded", "RunSucceeded", [],
                 id="succeeded-stays"),
    pytest.param(None, in_flight("Failed"), Observation(NOW), "Failed", "Submitted", [],
                 id="failed-stays"),
    pytest.param(_bad_sparsity(), in_flight(), Observation(NOW, run=run("Running")),
                 "Running", "Running", [], id="spec-turned-invalid-mid-run-keeps-following"),
]


@pytest.mark.parametrize(("spec_", "before", "observed", "phase", "reason", "actions"), PHASES)
def test_phase_transitions(spec_: dict[str, Any] | None, before: dict[str, Any],
                           observed: Observation, phase: str, reason: str | None,
                           actions: list[str]) -> None:
    decision = reconciled(job(spec_, before), observed, CONFIG)
    assert decision.status.phase == phase
    assert _reason(decision.status) == reason
    assert _kinds(decision.actions) == actions
    assert decision.status.observed_generation == 1


def test_submit_names_the_job_uid_output_and_plans_every_step() -> None:
    decision = reconciled(job(), Observation(NOW), CONFIG)
    (submit,) = [a for a in decision.actions if isinstance(a, SubmitRun)]
    assert submit.request.key == "uid-1"
    assert submit.request.output == "file:///outputs/ml/digits"
    assert submit.request.job.metadata.name == "digits"
    assert decision.status.artifacts == {"output": "file:///outputs/ml/digits"}
    assert [s.name for s in decision.status.steps] == [
        "fetch", "prune", "quantize", "validate", "benchmark-cpu", "report"]
    assert {s.phase for s in decision.status.steps} == {"Pending"}
    assert decision.status.promotion is not None
    assert decision.status.promotion.decision == "Pending"


def test_spec_output_wins_over_the_default() -> None:
    value = spec()
    value["output"] = "s3://bucket/ml/mine/"
    decision = reconciled(job(value), Observation(NOW), CONFIG)
    (submit,) = [a for a in decision.actions if isinstance(a, SubmitRun)]
    assert submit.request.output == "s3://bucket/ml/mine/"


def test_invalid_spec_names_the_field_and_rejects_promotion() -> None:
    decision = reconciled(job(_bad_sparsity()), Observation(NOW), CONFIG)
    failed = find_condition(decision.status, "Succeeded")
    assert failed is not None and failed.status == "False"
    assert failed.message.startswith("spec.steps[0].prune.sparsity: ")
    assert decision.status.promotion is not None
    assert decision.status.promotion.decision == "Rejected"
    assert _reason(decision.status, "Promoted") == "InvalidSpec"
    warnings = [a for a in decision.actions if isinstance(a, EmitEvent) and a.type == "Warning"]
    assert any(a.reason == "InvalidSpec" and "spec.steps[0].prune.sparsity" in a.message
               for a in warnings)


@pytest.mark.parametrize(("section", "key", "value", "where"), [
    ("promotion", "gates", {"max_accuracy_drop": 0.01},
     "spec.promotion.gates.max_accuracy_drop"),
    ("steps", 0, {"prune": {"sparsity": 0.5, "schedule": {"fine_tune_epochs": 1}}},
     "spec.steps[0].prune.schedule.fine_tune_epochs")])
def test_a_snake_case_key_is_refused_like_the_cli_refuses_it(
        section: str, key: str | int, value: dict[str, Any], where: str) -> None:
    """The CRD prunes keys it does not know, so a snake_case spelling would be dropped on
    the cluster: the operator names it as the CLI does instead of running without it."""
    value_ = spec()
    value_[section][key] = value
    decision = reconciled(job(value_), Observation(NOW), CONFIG)
    failed = find_condition(decision.status, "Succeeded")
    assert failed is not None and (failed.status, failed.reason) == ("False", INVALID_SPEC)
    assert failed.message == f"{where}: unknown field"
    assert _kinds(decision.actions) == []


def test_invalid_spec_fixed_by_an_edit_is_submitted() -> None:
    failed = reconciled(job(_bad_sparsity()), Observation(NOW), CONFIG).status.to_wire()
    decision = reconciled(job(spec(), failed, generation=2), Observation(NOW), CONFIG)
    assert _kinds(decision.actions) == ["SubmitRun"]
    assert decision.status.phase == "Pending"
    assert decision.status.finished_at is None


def test_failing_step_is_named_with_its_error() -> None:
    steps = [StepStatus(name="fetch", phase="Succeeded", duration_seconds=1.0),
             StepStatus(name="prune", phase="Failed", message="sparsity too high")]
    before = in_flight(steps=[{"name": n, "phase": "Pending"} for n in
                              ("fetch", "prune", "quantize", "validate", "benchmark-cpu",
                               "report")])
    observed = Observation(NOW, run=run("Failed", failed_step="prune",
                                        message="sparsity too high", steps=steps))
    decision = reconciled(job(status=before), observed, CONFIG)
    message = find_condition(decision.status, "Succeeded").message  # type: ignore[union-attr]
    assert message == "step prune failed: sparsity too high"
    phases = {s.name: s.phase for s in decision.status.steps}
    assert phases == {"fetch": "Succeeded", "prune": "Failed", "quantize": "Skipped",
                      "validate": "Skipped", "benchmark-cpu": "Skipped", "report": "Skipped"}
    assert decision.status.finished_at == NOW


def test_running_names_the_running_step_and_keeps_its_start() -> None:
    steps = [StepStatus(name="fetch", phase="Succeeded"), StepStatus(name="prune",
                                                                     phase="Running")]
    decision = reconciled(job(status=in_flight()), Observation(NOW, run=run("Running",
                                                                           steps=steps)),
                         CONFIG)
    assert find_condition(decision.status, "Succeeded").message == "running prune"  # type: ignore[union-attr]
    assert decision.status.started_at == EARLIER


def test_success_fills_results_steps_and_artifacts() -> None:
    found = run_results()
    decision = reconciled(job(status=in_flight()),
                         Observation(NOW, run=run("Succeeded", finished_at=NOW), results=found),
                         CONFIG)
    assert decision.status.results == found.results
    assert decision.status.steps == found.steps
    assert decision.status.artifacts == {"output": OUTPUT, **found.artifacts}
    assert decision.status.finished_at == NOW
    assert "compression ratio 4x" in find_condition(decision.status,  # type: ignore[union-attr]
                                                    "Succeeded").message


def test_generation_is_observed_even_without_change() -> None:
    decision = reconciled(job(status=succeeded(), generation=3), Observation(NOW), CONFIG)
    assert decision.status.observed_generation == 3


# --------------------------------------------------------------------------- promotion

GATES_FAIL = {"gates": {"minCompressionRatio": 10.0}}
TARGET = "file:///models/ml/digits/production"

PROMOTIONS = [
    # id, promotion spec, annotations, config, decision, Promoted reason, actions
    pytest.param({}, {}, CONFIG, "Promoted", "GatesPassed", [], id="no-gates-no-target"),
    pytest.param({"gates": {"minCompressionRatio": 3.5}, "target": TARGET}, {}, CONFIG,
                 "Pending", "AwaitingResults", ["Promote"], id="gates-pass-copy-to-target"),
    pytest.param(GATES_FAIL, {}, CONFIG, "Rejected", "GatesFailed", [],
                 id="gates-fail-rejected"),
    pytest.param({**GATES_FAIL, "target": TARGET}, {}, CONFIG, "Rejected", "GatesFailed", [],
                 id="gates-fail-nothing-copied"),
    pytest.param({"condition": "results.speedup.cpu >= 1.5"}, {}, CONFIG, "Promoted",
                 "GatesPassed", [], id="cel-true"),
    pytest.param({"condition": "results.speedup.cpu >= 5.0"}, {}, CONFIG, "Rejected",
                 "GatesFailed", [], id="cel-false"),
    pytest.param({}, {"modelpress.io/inference-service": "digits"},
                 replace(CONFIG, kserve_enabled=True),
                 "Pending", "AwaitingResults", ["Promote"], id="kserve-patch-when-enabled"),
    pytest.param({}, {"modelpress.io/inference-service": "digits"}, CONFIG, "Promoted",
                 "GatesPassed", [], id="kserve-annotation-ignored-when-disabled"),
]


@pytest.mark.parametrize(("promotion", "annotations", "config", "decision", "reason",
                          "actions"), PROMOTIONS)
def test_promotion_on_success(promotion: dict[str, Any], annotations: dict[str, str],
                              config: Config, decision: str, reason: str,
                              actions: list[str]) -> None:
    observed = Observation(NOW, run=run("Succeeded"), results=run_results())
    result = reconciled(job(spec(**promotion) if promotion else spec(gates={}), in_flight(),
                           annotations=annotations), observed, config)
    assert result.status.phase == "Succeeded"
    assert result.status.promotion is not None
    assert result.status.promotion.decision == decision
    assert _reason(result.status, "Promoted") == reason
    assert _kinds(result.actions) == actions


def test_promote_action_carries_output_target_and_service() -> None:
    observed = Observation(NOW, run=run("Succeeded"), results=run_results())
    config = replace(CONFIG, kserve_enabled=True)
    result = reconciled(job(spec(target=TARGET), in_flight(),
                           annotations={"modelpress.io/inference-service": "ml/digits"}),
                       observed, config)
    (promote,) = [a for a in result.actions if isinstance(a, Promote)]
    assert promote == Promote(output=OUTPUT, target=TARGET, inference_service="digits")


def test_rejection_lists_every_failed_gate() -> None:
    promotion = {"gates": {"minCompressionRatio": 10.0, "maxAccuracyDrop": 0.0001,
                           "minSpeedup": {"cpu": 3.0}}}
    observed = Observation(NOW, run=run("Succeeded"), results=run_results())
    result = reconciled(job(spec(**promotion), in_flight()), observed, CONFIG)
    assert result.status.promotion is not None
    assert len(result.status.promotion.reasons) == 3
    message = find_condition(result.status, "Promoted").message  # type: ignore[union-attr]
    assert "minCompressionRatio" in message and "maxAccuracyDrop" in message \
        and "minSpeedup" in message


REJUDGE = [
    # id, promotion before, new promotion spec, decision, Promoted reason, actions
    pytest.param({"decision": "Promoted", "reasons": []}, GATES_FAIL, "Rejected", "GatesFailed",
                 [], id="edit-tightens-gates-rejects"),
    pytest.param({"decision": "Rejected", "reasons": ["x"]}, {"target": TARGET}, "Pending",
                 "GatesPassed", ["Promote"], id="edit-adds-target-promotes"),
    pytest.param({"decision": "Promoted", "reasons": [], "promotedUri": TARGET},
                 {"target": TARGET}, "Promoted", "GatesPassed", [],
                 id="same-target-not-copied-again"),
    pytest.param({"decision": "Promoted", "reasons": [], "promotedUri": TARGET},
                 {"target": TARGET + "-v2"}, "Pending", "GatesPassed", ["Promote"],
                 id="new-target-copied"),
    pytest.param({"decision": "Promoted", "reasons": []}, {"condition": "results.x >>"},
                 "Rejected", "InvalidSpec", [], id="edit-to-invalid-cel-rejects"),
]


@pytest.mark.parametrize(("before", "promotion", "decision", "reason", "actions"), REJUDGE)
def test_editing_promotion_rejudges_stored_results_without_rerunning(
        before: dict[str, Any], promotion: dict[str, Any], decision: str, reason: str,
        actions: list[str]) -> None:
    result = reconciled(job(spec(**promotion), succeeded(promotion=before), generation=2),
                       Observation(NOW), CONFIG)
    assert result.status.phase == "Succeeded"
    assert result.status.promotion is not None
    assert result.status.promotion.decision == decision
    assert _reason(result.status, "Promoted") == reason
    assert _kinds(result.actions) == actions
    assert result.status.observed_generation == 2


def test_unfinished_promotion_is_retried_without_a_spec_change() -> None:
    before = succeeded(promotion={"decision": "Pending", "reasons": []}, conditions=[
        condition("Succeeded", "True", "RunSucceeded"),
        condition("Promoted", "False", "PromotionFailed")])
    result = reconciled(job(spec(target=TARGET), before), Observation(NOW), CONFIG)
    assert _kinds(result.actions) == ["Promote"]
    assert not [a for a in result.actions if isinstance(a, EmitEvent)]


# ----------------------------------------------------------------------- events, delete


def test_events_follow_condition_transitions_only() -> None:
    first = reconciled(job(status=in_flight("Pending")), Observation(NOW, run=run("Running")),
                      CONFIG)
    events = [a for a in first.actions if isinstance(a, EmitEvent)]
    assert [(e.type, e.reason) for e in events] == [("Normal", "Running")]
    again = reconciled(job(status=first.status.to_wire()),
                      Observation(NOW, run=run("Running")), CONFIG)
    assert not [a for a in again.actions if isinstance(a, EmitEvent)]


def _events(actions: list[Any]) -> list[tuple[str, str]]:
    return [(a.type, a.reason) for a in actions if isinstance(a, EmitEvent)]


def test_a_failed_job_says_so_in_one_warning() -> None:
    result = reconciled(job(status=in_flight()), Observation(NOW, run=run(
        "Failed", failed_step="quantize", message="no calibration")), CONFIG)
    assert _events(result.actions) == [("Warning", "StepFailed")]
    assert _reason(result.status, "Promoted") == "JobFailed"  # in the status, not an Event


def test_an_invalid_spec_gets_one_warning_naming_the_field() -> None:
    result = reconciled(job(_bad_sparsity()), Observation(NOW), CONFIG)
    (event,) = [a for a in result.actions if isinstance(a, EmitEvent)]
    assert (event.type, event.reason) == ("Warning", "InvalidSpec")
    assert event.message.startswith("spec.steps[0].prune.sparsity: ")


def test_awaiting_a_promotion_decision_is_no_event_but_the_decision_is() -> None:
    queued = reconciled(job(), Observation(NOW, slot_free=False), CONFIG)
    assert _events(queued.actions) == [("Normal", "Queued")]
    done = reconciled(job(status=in_flight()),
                     Observation(NOW, run=run("Succeeded"), results=run_results()), CONFIG)
    assert ("Normal", "GatesPassed") in _events(done.actions)


# -------------------------------------------------------------------------------- accept


def test_accept_queues_a_valid_new_job_without_a_backend() -> None:
    status = accepted(job(generation=3), NOW, CONFIG)
    assert status.phase == "Pending" and status.run_id is None
    assert status.observed_generation == 3
    assert _reason(status) == "Queued" and _reason(status, "Promoted") == "AwaitingResults"


def test_accept_fails_an_invalid_job_at_once_naming_the_field() -> None:
    status = accepted(job(_bad_sparsity()), NOW, CONFIG)
    assert status.phase == "Failed" and _reason(status) == "InvalidSpec"
    assert find_condition(status, "Succeeded").message.startswith(  # type: ignore[union-attr]
        "spec.steps[0].prune.sparsity: ")
    assert status.promotion is not None and status.promotion.decision == "Rejected"


def test_an_accepted_job_found_at_the_cap_needs_no_second_write() -> None:
    """The sync after the intake, with every slot taken, changes nothing."""
    first = accepted(job(), NOW, CONFIG)
    later = reconciled(job(status=first.to_wire()), Observation(NOW, slot_free=False), CONFIG)
    assert later.status == first
    assert later.actions == []


def test_an_accepted_job_is_submitted_by_the_next_sync_when_a_slot_is_free() -> None:
    first = accepted(job(), NOW, CONFIG).to_wire()
    decision = reconciled(job(status=first), Observation(NOW), CONFIG)
    assert _kinds(decision.actions) == ["SubmitRun"]


def test_transition_time_moves_only_when_condition_status_changes() -> None:
    before = in_flight()
    result = reconciled(job(status=before), Observation(NOW, run=run("Running")), CONFIG)
    running = find_condition(result.status, "Succeeded")
    assert running is not None and running.reason == "Running"
    assert running.last_transition_time == EARLIER  # Unknown -> Unknown: same transition
    done = reconciled(job(status=result.status.to_wire()),
                     Observation(NOW, run=run("Succeeded"), results=run_results()), CONFIG)
    assert find_condition(done.status, "Succeeded").last_transition_time == NOW  # type: ignore[union-attr]
    assert transition_events(result.status, result.status) == []


FINALIZE = [
    pytest.param(in_flight(), ["TerminateRun"], id="running-run-terminated"),
    pytest.param(in_flight("Pending"), ["TerminateRun"], id="pending-run-terminated"),
    pytest.param(succeeded(), [], id="finished-run-left-alone"),
    pytest.param({}, [], id="never-submitted"),
]


@pytest.mark.parametrize(("before", "actions"), FINALIZE)
def test_finalize(before: dict[str, Any], actions: list[str]) -> None:
    assert _kinds(finalize(job(status=before))) == actions


# ------------------------------------------------------------------- where a job writes


def _confined(tmp_path: Path) -> Config:
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "escape").symlink_to(tmp_path)
    return Config(default_output="s3://modelpress/{namespace}/{name}/",
                  allowed_file_roots=(tmp_path / "allowed",),
                  namespace_prefixes=("s3://modelpress/{namespace}/", f"file://{tmp_path}/"))


@pytest.mark.parametrize(("field", "where"), [
    ("output", "spec.output"), ("target", "spec.promotion.target")])
@pytest.mark.parametrize("escape", ["{root}/outside", "{root}/allowed/../outside",
                                    "{root}/allowed/escape/outside", "{root}/allowed-twin"])
def test_a_job_may_not_write_outside_the_allowed_roots(tmp_path: Path, field: str, where: str,
                                                       escape: str) -> None:
    config = _confined(tmp_path)
    uri = "file://" + escape.format(root=tmp_path)
    value = spec(**({"target": uri} if field == "target" else {}))
    if field == "output":
        value["output"] = uri
    for status in (accepted(job(value), NOW, config),
                   reconciled(job(value), Observation(NOW), config).status):
        assert status.phase == "Failed" and _reason(status) == "InvalidSpec"
        message = find_condition(status, "Succeeded").message  # type: ignore[union-attr]
        assert message == f"{where}: {uri} lies outside the allowed roots"


@pytest.mark.parametrize(("field", "where"), [
    ("output", "spec.output"), ("target", "spec.promotion.target")])
def test_a_file_uri_naming_another_host_fails_the_job(field: str, where: str) -> None:
    """file://host/x is no folder on this machine: refused naming the field, not raised."""
    uri = "file://elsewhere/models"
    value = spec(**({"target": uri} if field == "target" else {}))
    if field == "output":
        value["output"] = uri
    decision = reconciled(job(value), Observation(NOW), CONFIG)
    failed = find_condition(decision.status, "Succeeded")
    assert failed is not None and failed.reason == INVALID_SPEC
    assert failed.message.startswith(f"{where}: {uri} names host 'elsewhere'")
    assert _kinds(decision.actions) == []


def test_a_job_writing_under_the_allowed_roots_is_submitted(tmp_path: Path) -> None:
    config = _confined(tmp_path)
    value = spec(target=f"file://{tmp_path}/allowed/prod")
    value["output"] = f"file://{tmp_path}/allowed/runs/../out"
    decision = reconciled(job(value), Observation(NOW), config)
    assert _kinds(decision.actions) == ["SubmitRun"]


def test_an_edit_aiming_the_promotion_outside_the_roots_is_rejected(tmp_path: Path) -> None:
    config = _confined(tmp_path)
    finished = succeeded()
    value = spec(target=f"file://{tmp_path}/elsewhere")
    decision = reconciled(job(value, finished, generation=2), Observation(NOW), config)
    assert decision.status.phase == "Succeeded"
    assert decision.status.promotion is not None
    assert decision.status.promotion.decision == "Rejected"
    assert "spec.promotion.target" in decision.status.promotion.reasons[0]
    assert not [a for a in decision.actions if isinstance(a, Promote)]


@pytest.mark.parametrize(("change", "where"), [
    ({"model": {"uri": "s3://bucket/ml/model.pt2"}}, "spec.model.uri"),
    ({"model": {"uri": "s3://bucket/ml/model.ts"}}, "spec.model.uri"),
    ({"model": {"uri": "s3://bucket/ml/weights.pt", "architecture": "python://evil:build"}},
     "spec.model.architecture"),
    ({"steps": [{"distill": {"student": "python://evil:small"}}]},
     "spec.steps[0].distill.student"),
], ids=["pt2", "torchscript", "python-architecture", "python-student"])
def test_model_code_fails_the_job_at_intake_unless_the_operator_trusts_it(
        change: dict[str, Any], where: str) -> None:
    """MODELPRESS_TRUST_MODEL_CODE off (the default): InvalidSpec naming the field, and no
    run is submitted; on: the same job is submitted with nothing else changed."""
    value = {**spec(), **change}
    for status in (accepted(job(value), NOW, CONFIG),
                   reconciled(job(value), Observation(NOW), CONFIG).status):
        assert status.phase == "Failed" and _reason(status) == INVALID_SPEC
        message = find_condition(status, "Succeeded").message  # type: ignore[union-attr]
        assert message.startswith(f"{where}: ") and "--trust-model-code" in message
    assert _kinds(reconciled(job(value), Observation(NOW), CONFIG).actions) == []
    trusting = replace(CONFIG, trust_model_code=True)
    assert _kinds(reconciled(job(value), Observation(NOW), trusting).actions) == ["SubmitRun"]
