"""Promotion you can trust: what is promoted is what the run recorded, by sha256.

A tenant can rewrite the job's output (results.json, model.onnx) after the run; the run's
own record (RunState.recorded) cannot be. Forged figures are not taken, forged bytes are
not copied, and the job says why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from opfixtures import (
    CONFIG,
    NOW,
    RECORDED,
    Copier,
    Events,
    FakeBackend,
    apply,
    in_flight,
    job,
    reconciled,
    run,
    run_results,
    spec,
)

from modelpress.api import CompressionStatus
from modelpress.operator.controller import Controller
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.promotion import (
    DigestMismatch,
    Promote,
    check_model,
    copy_to_target,
)
from modelpress.operator.reconcile import Observation
from modelpress.operator.status import find_condition

TARGET = "file:///models/ml/digits/prod"
FORGED = "f" * 64


def find_reason(status: CompressionStatus, type_: str) -> str | None:
    condition = find_condition(status, type_)
    return condition.reason if condition else None

# ------------------------------------------------------------------ the reconciler

SUCCESSES = [
    # id, run's record, sha256 of the results.json read, promotion spec,
    # phase, Succeeded reason, decision, Promoted reason, Promote actions
    pytest.param(RECORDED, RECORDED["results.json"], {"target": TARGET},
                 "Succeeded", "RunSucceeded", "Pending", "AwaitingResults", 1,
                 id="matching-record-promotes"),
    pytest.param(RECORDED, FORGED, {"target": TARGET},
                 "Failed", "ResultsMismatch", "Rejected", "JobFailed", 0,
                 id="forged-results-refused"),
    pytest.param(RECORDED, None, {"target": TARGET},
                 "Failed", "ResultsMismatch", "Rejected", "JobFailed", 0,
                 id="unhashed-results-refused"),
    pytest.param({}, FORGED, {"target": TARGET},
                 "Succeeded", "RunSucceeded", "Rejected", "NoRunRecord", 0,
                 id="no-record-nothing-promoted"),
    pytest.param({}, FORGED, {},
                 "Succeeded", "RunSucceeded", "Promoted", "GatesPassed", 0,
                 id="no-record-nothing-to-copy"),
]


@pytest.mark.parametrize(("recorded", "read", "promotion", "phase", "reason", "decision",
                          "promoted_reason", "promotes"), SUCCESSES)
def test_results_and_promotion_follow_the_runs_record(
        recorded: dict[str, str], read: str | None, promotion: dict[str, Any], phase: str,
        reason: str, decision: str, promoted_reason: str, promotes: int) -> None:
    observed = Observation(NOW, run=run("Succeeded", recorded=recorded),
                           results=run_results(sha256=read))  # type: ignore[arg-type]
    result = reconciled(job(spec(**promotion), in_flight()), observed)
    assert result.status.phase == phase
    assert find_reason(result.status, "Succeeded") == reason
    assert result.status.promotion is not None
    assert result.status.promotion.decision == decision
    assert find_reason(result.status, "Promoted") == promoted_reason
    assert len([a for a in result.actions if isinstance(a, Promote)]) == promotes


def test_forged_results_are_not_taken_and_the_job_names_both_digests() -> None:
    observed = Observation(NOW, run=run("Succeeded"), results=run_results(sha256=FORGED))
    result = reconciled(job(spec(target=TARGET), in_flight()), observed)
    assert result.status.results is None
    message = next(c.message for c in result.status.conditions if c.type == "Succeeded")
    assert "results.json does not match the run's record" in message
    assert FORGED in message and RECORDED["results.json"] in message


def test_the_recorded_digests_go_into_status_promotion() -> None:
    observed = Observation(NOW, run=run("Succeeded", recorded={**RECORDED, "baseline.onnx":
                                                                "d" * 64}),
                           results=run_results())
    result = reconciled(job(spec(target=TARGET), in_flight()), observed)
    assert result.status.promotion is not None
    assert result.status.promotion.model_sha256 == RECORDED["model.onnx"]
    assert result.status.promotion.sha256 == RECORDED  # the baseline is not promoted


# ------------------------------------------------------------------- the copy itself


def _published(folder: Path) -> dict[str, str]:
    """A run's output with every promoted file; the record of their digests."""
    folder.mkdir(parents=True)
    recorded = {}
    for name in ("model.onnx", "results.json", "report.html", "lineage.json"):
        data = f"the run's {name}".encode()
        (folder / name).write_bytes(data)
        recorded[name] = hashlib.sha256(data).hexdigest()
    return recorded


def test_matching_files_are_copied(tmp_path: Path) -> None:
    recorded = _published(tmp_path / "output")
    copy_to_target((tmp_path / "output").as_uri(), (tmp_path / "prod").as_uri(), recorded)
    assert sorted(p.name for p in (tmp_path / "prod").iterdir()) == sorted(recorded)
    assert (tmp_path / "prod" / "model.onnx").read_bytes() == b"the run's model.onnx"


@pytest.mark.parametrize("forged", ["model.onnx", "results.json", "lineage.json"])
def test_a_forged_file_stops_the_copy_and_nothing_is_written(tmp_path: Path,
                                                             forged: str) -> None:
    recorded = _published(tmp_path / "output")
    (tmp_path / "output" / forged).write_bytes(b"planted by the tenant")
    planted = hashlib.sha256(b"planted by the tenant").hexdigest()
    with pytest.raises(DigestMismatch) as refused:
        copy_to_target((tmp_path / "output").as_uri(), (tmp_path / "prod").as_uri(), recorded)
    assert planted in str(refused.value) and recorded[forged] in str(refused.value)
    assert not (tmp_path / "prod").exists() or not any((tmp_path / "prod").iterdir())


def test_a_model_without_a_recorded_digest_is_not_copied(tmp_path: Path) -> None:
    recorded = _published(tmp_path / "output")
    del recorded["model.onnx"]
    with pytest.raises(DigestMismatch, match="no sha256 for model.onnx"):
        copy_to_target((tmp_path / "output").as_uri(), (tmp_path / "prod").as_uri(), recorded)
    assert not (tmp_path / "prod").exists()


def test_check_model_refuses_a_replaced_model(tmp_path: Path) -> None:
    recorded = _published(tmp_path / "output")
    check_model((tmp_path / "output").as_uri(), recorded)  # the run's own: no error
    (tmp_path / "output" / "model.onnx").write_bytes(b"other")
    with pytest.raises(DigestMismatch, match="changed after the run wrote it"):
        check_model((tmp_path / "output").as_uri(), recorded)


# ------------------------------------------------------------------- the controller


def _finished(copier: Any) -> tuple[Controller, Any]:
    controller = Controller(FakeBackend(phase="Succeeded"), CONFIG,  # type: ignore[arg-type]
                            OperatorMetrics(), results_reader=lambda output: run_results(),
                            copier=copier, clock=lambda: NOW)
    view = job(spec(target=TARGET))
    return controller, apply(view, controller.sync(view, Events()))


def test_the_copy_is_handed_the_runs_record_and_the_digest_shows() -> None:
    copier = Copier()
    controller, view = _finished(copier)
    view = apply(view, controller.sync(view, Events()))
    assert copier.recorded == [RECORDED]
    assert view.status is not None
    assert view.status["promotion"]["decision"] == "Promoted"
    assert view.status["promotion"]["modelSha256"] == RECORDED["model.onnx"]


def test_a_digest_mismatch_rejects_the_promotion_and_says_why() -> None:
    def forged(output: str, target: str, recorded: Any) -> None:
        raise DigestMismatch(f"{output}/model.onnx has sha256 {FORGED} but the run recorded "
                             f"{recorded['model.onnx']}")

    controller, view = _finished(forged)
    events = Events()
    view = apply(view, controller.sync(view, events))
    assert view.status is not None
    assert view.status["promotion"]["decision"] == "Rejected"
    assert view.status["promotion"]["modelSha256"] == RECORDED["model.onnx"]
    promoted = next(c for c in view.status["conditions"] if c["type"] == "Promoted")
    assert promoted["reason"] == "DigestMismatch"
    assert FORGED in promoted["message"] and RECORDED["model.onnx"] in promoted["message"]
    assert ("Warning", "DigestMismatch") in [(t, r) for t, r, _ in events.seen]
    assert controller.sync(view, Events()) == {}  # final: not retried
