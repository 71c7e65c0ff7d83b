"""The gates on accuracy, as the CLI, the report and the operator judge them: a failed
maxAccuracyDrop names the step that spent the budget, and gates.confidence holds the
drop's interval to the bar too."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from modelpress.api import Gates, Promotion, Results
from modelpress.gates import judge


def _results(drop: float, budget: list[tuple[str, float, float]] = (),  # type: ignore[assignment]
             intervals: dict[float, tuple[float, float]] | None = None) -> Results:
    figures = {"parameters": 1000, "metric": {"name": "accuracy", "value": 0.98}}
    return Results.model_validate({
        "baseline": {**figures, "sizeBytes": 400_000},
        "compressed": {**figures, "sizeBytes": 100_000},
        "compressionRatio": 4.0, "accuracyDrop": drop,
        "budget": [{"step": step, "cumulativeDrop": total, "spent": own}
                   for step, total, own in budget],
        "accuracyDropIntervals": [{"confidence": level, "low": low, "high": high}
                                  for level, (low, high) in (intervals or {}).items()]})


def _judged(results: Results, gates: dict[str, Any]) -> tuple[str, list[str]]:
    verdict = judge(results, Promotion.model_validate({"gates": gates}))
    return verdict.decision, verdict.reasons


BAR = {"maxAccuracyDrop": 0.01}


@pytest.mark.parametrize(("budget", "named"), [
    pytest.param([("prune", 0.015, 0.015), ("quantize", 0.018, 0.003)],
                 "; prune spent the budget (drop 0.015 on validation after it, 0.015 of it "
                 "its own)", id="first-step-over-the-bar"),
    pytest.param([("prune", 0.004, 0.004), ("distill", 0.002, -0.002),
                  ("quantize", 0.009, 0.007)],
                 "; the largest spender was quantize (0.007 of the drop on validation)",
                 id="under-the-bar-on-validation-the-largest-spender"),
    pytest.param([], "", id="no-step-measured-its-spend"),
])
def test_a_failed_drop_names_the_step_that_spent_the_budget(
        budget: list[tuple[str, float, float]], named: str) -> None:
    decision, reasons = _judged(_results(0.02, budget), BAR)
    assert decision == "Rejected"
    assert reasons == [f"accuracyDrop 0.02 is above maxAccuracyDrop 0.01{named}"]


def test_the_confidence_gate_holds_the_upper_bound_to_the_bar() -> None:
    noisy = _results(0.004, [("quantize", 0.003, 0.003)],
                     {0.9: (-0.002, 0.009), 0.95: (-0.003, 0.012)})
    gates = {**BAR, "confidence": 0.95}
    assert _judged(noisy, gates) == ("Rejected", [
        "accuracyDrop's 95% upper bound 0.012 is above maxAccuracyDrop 0.01 "
        "(gates.confidence); the largest spender was quantize (0.003 of the drop on "
        "validation)"])
    assert _judged(noisy, {**BAR, "confidence": 0.9}) == ("Promoted", [
        "accuracyDrop 0.004 <= 0.01", "accuracyDrop's 90% upper bound 0.009 <= 0.01"])
    assert _judged(noisy, BAR)[0] == "Promoted"  # without the option, the drop alone


def test_a_confidence_without_its_interval_fails_saying_so() -> None:
    decision, reasons = _judged(_results(0.004), {**BAR, "confidence": 0.99})
    assert (decision, reasons) == ("Rejected", [
        "confidence 0.99: no interval of accuracyDrop was measured"])


@pytest.mark.parametrize(("gates", "problem"), [
    ({"confidence": 0.95}, "set maxAccuracyDrop too"),
    ({**BAR, "confidence": 0.97}, "Input should be 0.8, 0.9, 0.95 or 0.99"),
])
def test_a_confidence_the_gates_cannot_judge_is_refused(gates: dict[str, Any],
                                                        problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Gates.model_validate(gates)
