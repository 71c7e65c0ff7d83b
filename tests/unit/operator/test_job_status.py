"""Status helpers: condition times, step merging, and the status patch."""

from __future__ import annotations

from typing import Any

import pytest
from opfixtures import EARLIER, NOW, spec, status

from modelpress.api import CompressionSpec, CompressionStatus, StepStatus
from modelpress.operator.status import (
    merge_steps,
    parse_status,
    planned_steps,
    settle_steps,
    status_patch,
    with_condition,
)

CONDITIONS = [
    # id, previous (status, reason) or None, new status, new reason, time expected
    pytest.param(None, "Unknown", "Queued", NOW, id="first-set"),
    pytest.param(("Unknown", "Queued"), "Unknown", "Running", EARLIER, id="reason-only"),
    pytest.param(("Unknown", "Running"), "True", "RunSucceeded", NOW, id="status-changes"),
    pytest.param(("True", "RunSucceeded"), "True", "RunSucceeded", EARLIER, id="unchanged"),
]


@pytest.mark.parametrize(("previous", "value", "reason", "expected"), CONDITIONS)
def test_last_transition_time(previous: tuple[str, str] | None, value: str, reason: str,
                              expected: Any) -> None:
    start = CompressionStatus()
    if previous:
        start = with_condition(start, "Succeeded", previous[0], previous[1], "", EARLIER)  # type: ignore[arg-type]
    updated = with_condition(start, "Succeeded", value, reason, "m", NOW)  # type: ignore[arg-type]
    (condition,) = updated.conditions
    assert (condition.status, condition.reason, condition.message) == (value, reason, "m")
    assert condition.last_transition_time == expected


def test_succeeded_comes_before_promoted_whatever_the_order_set() -> None:
    value = with_condition(CompressionStatus(), "Promoted", "Unknown", "A", "", NOW)
    value = with_condition(value, "Succeeded", "Unknown", "B", "", NOW)
    value = with_condition(value, "Promoted", "True", "C", "", NOW)
    assert [c.type for c in value.conditions] == ["Succeeded", "Promoted"]


def test_planned_steps_follow_the_spec() -> None:
    value = spec()
    value["steps"].insert(0, {"prune": {"sparsity": 0.2}})
    value["benchmark"]["pools"].append({"name": "gpu", "device": "cuda"})
    names = [s.name for s in planned_steps(CompressionSpec.model_validate(value))]
    assert names == ["fetch", "prune", "prune", "quantize", "validate", "benchmark-cpu",
                     "benchmark-gpu", "report"]


def test_merge_steps_matches_repeated_names_in_order() -> None:
    plan = [StepStatus(name=n, phase="Pending") for n in ("fetch", "prune", "prune", "report")]
    observed = [StepStatus(name="fetch", phase="Succeeded"),
                StepStatus(name="prune", phase="Succeeded"),
                StepStatus(name="prune", phase="Running"),
                StepStatus(name="extra", phase="Running")]
    merged = merge_steps(plan, observed)
    assert [(s.name, s.phase) for s in merged] == [
        ("fetch", "Succeeded"), ("prune", "Succeeded"), ("prune", "Running"),
        ("report", "Pending"), ("extra", "Running")]


def test_settle_steps_never_leaves_a_step_running() -> None:
    steps = [StepStatus(name="a", phase="Succeeded"),
             StepStatus(name="b", phase="Running", started_at=EARLIER),
             StepStatus(name="c", phase="Pending")]
    settled = settle_steps(steps, NOW)
    assert [(s.phase, s.finished_at) for s in settled] == [
        ("Succeeded", None), ("Skipped", NOW), ("Skipped", None)]


def test_status_patch_is_empty_when_nothing_changed() -> None:
    raw = status(phase="Running", runId="r", conditions=[])
    assert status_patch(raw, parse_status(raw)) == {}


def test_status_patch_writes_changes_and_deletes_dropped_keys() -> None:
    raw = {**status(phase="Failed", finishedAt=EARLIER, runId="r"), "kopf": {"progress": {}}}
    new = parse_status(raw).model_copy(update={"phase": "Pending", "finished_at": None})
    assert status_patch(raw, new) == {"phase": "Pending", "finishedAt": None}


def test_status_patch_writes_defaults_missing_from_the_server() -> None:
    assert status_patch({}, CompressionStatus())["phase"] == "Pending"


def test_parse_status_ignores_other_writers_keys() -> None:
    parsed = parse_status({"phase": "Running", "kopf": {"dummy": "x"}})
    assert parsed.phase == "Running"
