"""A promotion condition is judged within MODELPRESS_CEL_BUDGET_SECONDS, in an evaluator
process of its own: one that runs long is Rejected with that reason, and other callers
(the operator's other jobs) are answered meanwhile."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from modelpress import gates
from modelpress.api import Promotion, Results
from modelpress.gates import condition_error, judge

NORMAL = "results.compressionRatio >= 2.0"


def _results() -> Results:
    figures = {"parameters": 1000, "metric": {"name": "accuracy", "value": 0.98}}
    return Results.model_validate({"baseline": {**figures, "sizeBytes": 400_000},
                                   "compressed": {**figures, "sizeBytes": 100_000},
                                   "compressionRatio": 4.0, "accuracyDrop": 0.002})


def _nested_maps(levels: int) -> str:
    """Within the schema's caps, yet cel-python builds 10**levels list elements (measured
    here: 4 levels take about 5 s, each further level ten times as long)."""
    inner = "1"
    for level in range(levels):
        inner = f"[1,2,3,4,5,6,7,8,9,10].map(x{level}, {inner})"
    return f"size({inner}) > 0"


EXPENSIVE = _nested_maps(6)


def _promotion(condition: str) -> Promotion:
    return Promotion.model_validate({"condition": condition})


def _timed_judge(condition: str) -> tuple[gates.Verdict, float]:
    started = time.monotonic()
    verdict = judge(_results(), _promotion(condition))
    return verdict, time.monotonic() - started


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> float:
    seconds = 0.5
    monkeypatch.setenv("MODELPRESS_CEL_BUDGET_SECONDS", str(seconds))
    return seconds


def test_an_expensive_condition_is_rejected_within_its_budget(budget: float) -> None:
    assert judge(_results(), _promotion(NORMAL)).decision == "Promoted"  # an evaluator is up
    verdict, seconds = _timed_judge(EXPENSIVE)
    assert verdict.decision == "Rejected"
    assert verdict.reasons == [f"condition {EXPENSIVE!r} exceeded its evaluation budget "
                               f"({budget:g} s)"]
    assert seconds < budget + 2.0, f"judged in {seconds:.1f} s"
    after, _ = _timed_judge(NORMAL)  # the evaluator is not wedged
    assert after.decision == "Promoted" and after.reasons == [f"condition {NORMAL!r} is true"]


def test_other_callers_are_answered_while_a_condition_runs_long(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_CEL_BUDGET_SECONDS", "10")
    expensive: list[gates.Verdict] = []
    worker = threading.Thread(target=lambda: expensive.append(_timed_judge(EXPENSIVE)[0]))
    worker.start()
    try:
        time.sleep(0.5)  # the expensive one is under way
        answered = [_timed_judge(NORMAL) for _ in range(3)]
        assert [verdict.decision for verdict, _ in answered] == ["Promoted"] * 3
        # Answered while the expensive one still runs, not queued behind it.
        assert worker.is_alive(), f"answered only in {[round(s, 1) for _, s in answered]} s"
    finally:
        worker.join(60)
    assert expensive and "exceeded its evaluation budget (10 s)" in expensive[0].reasons[0]


def test_the_intake_check_is_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # Some 10 ms to compile: far over the budget, and over the kernel's timer slack.
    long_condition = " || ".join([NORMAL] * 25)
    assert condition_error(long_condition) is None
    assert str(condition_error("results.x >=")).startswith("not a valid CEL expression")
    monkeypatch.setenv("MODELPRESS_CEL_BUDGET_SECONDS", "0.000001")
    assert condition_error(long_condition) == \
        "the CEL expression exceeded its evaluation budget (1e-06 s)"


def test_conditions_are_never_run_on_the_callers_thread(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(gates, "celpy", None)  # celpy used in this process would raise
    assert condition_error(NORMAL) is None
    assert judge(_results(), _promotion(NORMAL)).decision == "Promoted"


def test_an_evaluator_that_ended_while_idle_is_replaced() -> None:
    assert condition_error(NORMAL) is None  # leaves an idle evaluator behind
    idle = list(gates._EVALUATORS._idle)
    assert idle
    for evaluator in idle:
        evaluator._process.kill()
        evaluator._process.wait()
    assert judge(_results(), _promotion(NORMAL)).decision == "Promoted"


def test_the_evaluator_holds_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-for-the-evaluator")
    gates._EVALUATORS.close()  # the next evaluator starts with the variable set here
    assert condition_error(NORMAL) is None
    (evaluator,) = gates._EVALUATORS._idle
    environment = Path(f"/proc/{evaluator._process.pid}/environ").read_bytes()
    assert b"planted-secret-for-the-evaluator" not in environment
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "planted-secret-for-the-evaluator"
