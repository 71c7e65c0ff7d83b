"""Verification of a Kubeflow run's model (operator.verify): the reconciler's decisions.

A run that keeps no record of its own (RunState.recorded empty) is staged, re-measured in
the platform's namespace, judged on the verified figures, and promoted from the staged
copy; a failed verification, or verified figures that fail a gate, reject it.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from typing import Any

import pytest
import yaml
from opfixtures import (
    CONFIG,
    NOW,
    OUTPUT,
    ROOT,
    Copier,
    Events,
    FakeBackend,
    apply,
    in_flight,
    job,
    reconciled,
    results,
    run,
    run_results,
    spec,
)

from modelpress.api import CompressionStatus, StagedCandidate
from modelpress.errors import InvalidInput
from modelpress.operator.backends.base import BackendError, RunState, VerificationRequest
from modelpress.operator.config import OperatorSettings
from modelpress.operator.controller import Controller
from modelpress.operator.main import operator_config
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.promotion import Promote
from modelpress.operator.reconcile import Observation, TerminateRun, finalize
from modelpress.operator.status import find_condition
from modelpress.operator.verify import (
    NothingToStage,
    Observed,
    StageCandidate,
    SubmitVerification,
    stage_candidate,
    staged,
    submitted,
)

PREFIX = "s3://platform/verify/"
VERIFYING_CONFIG = replace(CONFIG, verify_prefix=PREFIX)
CANDIDATE = f"{PREFIX}ml/uid-1/candidate/"
VERIFIED = f"{PREFIX}ml/uid-1/verified/"
TARGET = "file:///models/ml/digits/prod"
STAGED = StagedCandidate(uri=CANDIDATE, sha256={"model.onnx": "d" * 64})
GATED = {"gates": {"minCompressionRatio": 3.0}, "target": TARGET}


def reason(status: CompressionStatus, type_: str = "Promoted") -> str | None:
    condition = find_condition(status, type_)
    return condition.reason if condition else None


def kfp_run_succeeded() -> tuple[Any, Observation]:
    """A job whose Kubeflow run just succeeded, leaving no record (what KFP gives)."""
    view = job(spec(**GATED), status=in_flight())
    return view, Observation(now=NOW, run=run("Succeeded", recorded={}),
                             results=run_results(sha256="e" * 64))


def next_sync(view: Any, status: CompressionStatus, observed: Observation) -> Any:
    return reconciled(replace(view, status=status.to_wire()), observed, VERIFYING_CONFIG)


def verification_running(view: Any) -> tuple[Any, CompressionStatus]:
    """The job after staging and submitting (what the controller writes)."""
    first = reconciled(view, kfp_run_succeeded()[1], VERIFYING_CONFIG).status
    return view, submitted(staged(first, STAGED, VERIFIED, NOW), "verify-1", NOW)


def verification_ended(phase: str, verified_ratio: float = 4.0, **fields: Any) -> Any:
    view, status = verification_running(kfp_run_succeeded()[0])
    observed = Observed(run=RunState(run_id="verify-1", phase=phase, **fields),  # type: ignore[arg-type]
                        results=results(ratio=verified_ratio) if phase == "Succeeded" else None)
    return next_sync(view, status, Observation(now=NOW, verification=observed))


# ------------------------------------------------------------------ the reconciler


def test_without_a_verify_prefix_a_run_without_record_is_not_promoted() -> None:
    view, observed = kfp_run_succeeded()
    decision = reconciled(view, observed, CONFIG)
    assert decision.status.promotion and decision.status.promotion.decision == "Rejected"
    assert reason(decision.status) == "NoRunRecord"


def test_a_passing_run_is_staged_first_and_nothing_promoted() -> None:
    view, observed = kfp_run_succeeded()
    decision = reconciled(view, observed, VERIFYING_CONFIG)
    assert decision.status.phase == "Succeeded"
    assert decision.status.promotion and decision.status.promotion.decision == "Pending"
    assert reason(decision.status) == "Verifying"
    assert [a for a in decision.actions if not hasattr(a, "reason")] == [
        StageCandidate(output=OUTPUT, candidate=CANDIDATE, verified=VERIFIED)]


@pytest.mark.parametrize(("promotion", "decision", "why"), [
    pytest.param({"gates": {"minCompressionRatio": 9.0}, "target": TARGET}, "Rejected",
                 "GatesFailed", id="own-figures-fail"),
    pytest.param({"gates": {"minCompressionRatio": 3.0}}, "Promoted", "GatesPassed",
                 id="nothing-to-promote"),
])
def test_no_verification_when_there_is_nothing_to_verify(promotion: dict[str, Any],
                                                         decision: str, why: str) -> None:
    view = job(spec(**promotion), status=in_flight())
    observed = kfp_run_succeeded()[1]
    after = reconciled(view, observed, VERIFYING_CONFIG)
    assert after.status.promotion and after.status.promotion.decision == decision
    assert reason(after.status) == why
    assert not [a for a in after.actions if isinstance(a, StageCandidate | Promote)]


def test_a_staged_candidate_is_submitted_for_verification() -> None:
    view, observed = kfp_run_succeeded()
    first = reconciled(view, observed, VERIFYING_CONFIG).status
    decision = next_sync(view, staged(first, STAGED, VERIFIED, NOW), Observation(now=NOW))
    submits = [a for a in decision.actions if isinstance(a, SubmitVerification)]
    assert submits == [SubmitVerification(VerificationRequest(
        key="uid-1", job=submits[0].request.job, candidate=STAGED, output=VERIFIED))]
    assert reason(decision.status) == "Verifying"


def test_while_verifying_the_job_says_so() -> None:
    view, status = verification_running(kfp_run_succeeded()[0])
    observed = Observed(run=RunState(run_id="verify-1", phase="Running"))
    decision = next_sync(view, status, Observation(now=NOW, verification=observed))
    assert decision.status.verification and decision.status.verification.run_id == "verify-1"
    condition = find_condition(decision.status, "Promoted")
    assert condition and condition.reason == "Verifying" and "verify-1" in condition.message
    assert not [a for a in decision.actions if isinstance(a, Promote)]


def test_verified_figures_are_judged_and_the_staged_bytes_promoted() -> None:
    decision = verification_ended("Succeeded", verified_ratio=3.5)
    status = decision.status
    assert status.verification and status.verification.phase == "Succeeded"
    assert status.results and status.results.compression_ratio == 3.5
    assert status.verification.reported and status.verification.reported.compression_ratio == 4.0
    promotes = [a for a in decision.actions if isinstance(a, Promote)]
    assert promotes == [Promote(output=CANDIDATE, target=TARGET)]
    assert status.promotion and status.promotion.model_sha256 == "d" * 64
    assert any("reported compressionRatio 4 but the platform measured 3.5" in line
               for line in status.promotion.reasons)


def test_verified_figures_failing_a_gate_reject_what_the_runs_figures_passed() -> None:
    decision = verification_ended("Succeeded", verified_ratio=2.0)
    assert decision.status.promotion and decision.status.promotion.decision == "Rejected"
    assert reason(decision.status) == "GatesFailed"
    assert not [a for a in decision.actions if isinstance(a, Promote)]


@pytest.mark.parametrize("phase", ["Failed", "Canceled", "Lost"])
def test_a_failed_verification_rejects_the_promotion(phase: str) -> None:
    decision = verification_ended(phase, message="candidate sha256 mismatch",
                                  failed_step="candidate")
    assert decision.status.promotion and decision.status.promotion.decision == "Rejected"
    condition = find_condition(decision.status, "Promoted")
    assert condition and condition.reason == "VerificationFailed"
    assert f"ended {phase}" in condition.message
    assert decision.status.verification and decision.status.verification.phase == "Failed"
    assert not [a for a in decision.actions if isinstance(a, Promote)]


def test_verified_results_that_cannot_be_read_reject_the_promotion() -> None:
    view, status = verification_running(kfp_run_succeeded()[0])
    observed = Observed(run=RunState(run_id="verify-1", phase="Succeeded"),
                        problem="results.json does not exist")
    decision = next_sync(view, status, Observation(now=NOW, verification=observed))
    assert reason(decision.status) == "VerificationFailed"


def test_an_edited_promotion_is_rejudged_on_the_verified_figures() -> None:
    settled = verification_ended("Succeeded", verified_ratio=3.5).status
    edited = job(spec(gates={"minCompressionRatio": 3.8}, target=TARGET), generation=2,
                 status=settled.to_wire())
    decision = reconciled(edited, Observation(now=NOW), VERIFYING_CONFIG)
    assert decision.status.promotion and decision.status.promotion.decision == "Rejected"
    assert reason(decision.status) == "GatesFailed"


def test_deleting_a_job_terminates_its_verification_run() -> None:
    view, status = verification_running(kfp_run_succeeded()[0])
    settled = replace(view, status=status.to_wire())
    assert finalize(settled) == [TerminateRun("verify-1", verification=True)]


# ------------------------------------------------------------------ the controller


class FakeVerifier:
    def __init__(self, phase: str = "Running", refuse: Exception | None = None) -> None:
        self.phase, self.refuse = phase, refuse
        self.requests: list[VerificationRequest] = []
        self.terminated: list[str] = []

    def submit_verification(self, request: VerificationRequest) -> str:
        if self.refuse:
            raise self.refuse
        self.requests.append(request)
        return "verify-1"

    def poll(self, run_id: str) -> RunState:
        return RunState(run_id=run_id, phase=self.phase)  # type: ignore[arg-type]

    def terminate(self, run_id: str) -> None:
        self.terminated.append(run_id)


def controller(verifier: FakeVerifier, stager: Any = None, copier: Copier | None = None
               ) -> Controller:
    def stage(output: str, candidate: str) -> StagedCandidate:
        return StagedCandidate(uri=candidate, sha256={"model.onnx": "d" * 64})

    backend = FakeBackend(phase="Succeeded")
    backend.poll = lambda run_id: RunState(run_id, "Succeeded")  # type: ignore[method-assign]
    return Controller(backend, VERIFYING_CONFIG, OperatorMetrics(),
                      results_reader=lambda output: run_results(sha256=None, ratio=3.5),
                      copier=copier or Copier(), clock=lambda: NOW, verifier=verifier,
                      stager=stager or stage)


def synced(control: Controller, view: Any, events: Events) -> Any:
    return apply(view, control.sync(view, events))


def kfp_job() -> Any:
    return job(spec(**GATED), status=in_flight())


def test_the_controller_stages_verifies_and_promotes_from_the_staged_copy() -> None:
    verifier, copier, events = FakeVerifier(), Copier(), Events()
    control = controller(verifier, copier=copier)
    view = synced(control, kfp_job(), events)  # judged on its own figures: staged
    assert view.status["verification"]["phase"] == "Staged"
    view = synced(control, view, events)  # submitted
    assert [r.candidate.uri for r in verifier.requests] == [CANDIDATE]
    assert view.status["verification"]["runId"] == "verify-1"
    view = synced(control, view, events)  # still running
    assert view.status["promotion"]["decision"] == "Pending" and not copier.copies
    verifier.phase = "Succeeded"
    view = synced(control, view, events)
    assert copier.copies == [(CANDIDATE, TARGET)]
    assert copier.recorded == [{"model.onnx": "d" * 64}]
    assert view.status["promotion"]["decision"] == "Promoted"
    assert view.status["verification"]["phase"] == "Succeeded"
    assert events.reasons() == ["RunSucceeded", "Promoted"]


@pytest.mark.parametrize(("problem", "decision", "why"), [
    pytest.param(NothingToStage("s3://x/model.onnx does not exist"), "Rejected",
                 "VerificationFailed", id="no-model"),
    pytest.param(OSError("connection reset"), "Pending", "Verifying", id="retried"),
])
def test_a_staging_failure(problem: Exception, decision: str, why: str) -> None:
    def stage(output: str, candidate: str) -> StagedCandidate:
        raise problem

    copier = Copier()
    view = synced(controller(FakeVerifier(), stager=stage, copier=copier), kfp_job(), Events())
    assert view.status["promotion"]["decision"] == decision
    promoted = next(c for c in view.status["conditions"] if c["type"] == "Promoted")
    assert promoted["reason"] == why
    assert not copier.copies


@pytest.mark.parametrize(("refusal", "decision", "phase"), [
    pytest.param(BackendError("KFP unreachable"), "Pending", "Staged", id="retried"),
    pytest.param(InvalidInput("spec.model.uri", "a program"), "Rejected", "Failed",
                 id="refused"),
])
def test_a_failed_submission(refusal: Exception, decision: str, phase: str) -> None:
    control = controller(FakeVerifier(refuse=refusal))
    view = synced(control, synced(control, kfp_job(), Events()), Events())
    assert view.status["promotion"]["decision"] == decision
    assert view.status["verification"]["phase"] == phase


def test_deleting_the_job_terminates_its_verification_run() -> None:
    verifier = FakeVerifier()
    control = controller(verifier)
    view = synced(control, synced(control, kfp_job(), Events()), Events())
    control.delete(view, Events())
    assert verifier.terminated == ["verify-1"]


# ------------------------------------------------------------ staging and the settings


def test_staging_copies_the_fixed_names_and_records_what_it_wrote(tmp_path: Any) -> None:
    output = tmp_path / "output"
    output.mkdir()
    (output / "model.onnx").write_bytes(b"model")
    (output / "model.onnx.data").write_bytes(b"weights")
    (output / "evil.onnx").write_bytes(b"named inside a forged results.json")
    staged_copy = stage_candidate(output.as_uri(), (tmp_path / "candidate").as_uri())
    assert staged_copy.sha256 == {"model.onnx": hashlib.sha256(b"model").hexdigest(),
                                  "model.onnx.data": hashlib.sha256(b"weights").hexdigest()}
    assert sorted(p.name for p in (tmp_path / "candidate").iterdir()) == [
        "model.onnx", "model.onnx.data"]


def test_staging_an_output_without_a_model_is_refused(tmp_path: Any) -> None:
    (tmp_path / "output").mkdir()
    with pytest.raises(NothingToStage):
        stage_candidate((tmp_path / "output").as_uri(), (tmp_path / "candidate").as_uri())
    assert not (tmp_path / "candidate").exists()


@pytest.mark.parametrize(("prefix", "refused"), [
    ("s3://modelpress-platform/verify/", False),
    ("s3://modelpress/platform/verify/", True),  # a namespace called "platform" writes there
    ("s3://modelpress/", True),  # holds every namespace's prefix
    ("s3://modelpress/-/", False),  # no namespace can be called "-"
])
def test_a_verify_prefix_tenants_can_reach_is_refused(prefix: str, refused: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_VERIFY_PREFIX", prefix)
    settings = OperatorSettings()
    if refused:
        with pytest.raises(InvalidInput, match="MODELPRESS_VERIFY_PREFIX"):
            operator_config(settings, "kfp")
    else:
        assert operator_config(settings, "kfp").verify_prefix == prefix
    assert operator_config(settings, "local").verify_prefix is None


def _llm_spec() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "examples" / "smollm2-int4.yaml").read_text())
    value = copy.deepcopy(document["spec"])
    value["promotion"] = GATED
    return value


@pytest.mark.parametrize(("spec_", "annotations", "why"), [
    pytest.param(_llm_spec(), {}, "cannot verify a text-generation model", id="text-generation"),
    pytest.param(spec(gates={"minCompressionRatio": 3.0}),
                 {"modelpress.io/inference-service": "digits"},
                 "pointed at spec.promotion.target", id="service-without-target"),
])
def test_a_model_the_platform_cannot_verify_is_rejected_before_staging(
        spec_: dict[str, Any], annotations: dict[str, str], why: str) -> None:
    view = job(spec_, status=in_flight(), annotations=annotations)
    observed = kfp_run_succeeded()[1]
    after = reconciled(view, observed, replace(VERIFYING_CONFIG, kserve_enabled=True))
    assert after.status.promotion and after.status.promotion.decision == "Rejected"
    assert reason(after.status) == "VerificationFailed"
    assert any(why in line for line in after.status.promotion.reasons)
    assert not [a for a in after.actions if isinstance(a, StageCandidate | Promote)]
