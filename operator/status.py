"""Status computation: conditions, step lists, and the patch that writes a status.

Everything here is pure. A status is written only when it changed, and a condition's
lastTransitionTime moves only when its status does (a new reason alone is not a
transition), so `kubectl get` and alerts see stable timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from modelpress.api import CompressionSpec, CompressionStatus, Condition, StepStatus

SUCCEEDED = "Succeeded"
PROMOTED = "Promoted"
ConditionStatus = Literal["True", "False", "Unknown"]
_FINISHED_STEP_PHASES = ("Succeeded", "Failed", "Skipped")


def find_condition(status: CompressionStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def with_condition(status: CompressionStatus, type_: str, value: ConditionStatus, reason: str,
                   message: str, now: datetime) -> CompressionStatus:
    """`status` with condition `type_` set (Succeeded listed before Promoted)."""
    previous = find_condition(status, type_)
    since = previous.last_transition_time if previous and previous.status == value else now
    updated = Condition(type=type_, status=value, reason=reason, message=message,
                        last_transition_time=since)
    others = [c for c in status.conditions if c.type != type_]
    return status.model_copy(update={"conditions": sorted([*others, updated],
                                                          key=_condition_order)})


def _condition_order(condition: Condition) -> int:
    """Succeeded before Promoted, whichever was set first: the order people read them in."""
    return {SUCCEEDED: 0, PROMOTED: 1}.get(condition.type, 2)


def planned_steps(spec: CompressionSpec) -> list[StepStatus]:
    """The steps a run of `spec` will go through, all Pending, named as the steps report."""
    names = ["fetch", *(step.kind for step in spec.steps), "validate",
             *(f"benchmark-{pool.name}" for pool in spec.benchmark.pools), "report"]
    return [StepStatus(name=name, phase="Pending") for name in names]


def merge_steps(current: list[StepStatus], observed: list[StepStatus]) -> list[StepStatus]:
    """`current` with each observed step laid over the entry of the same name.

    Names can repeat (two prune steps): the n-th observation of a name goes to its n-th
    entry. Observed steps the plan did not name are appended.
    """
    merged = list(current)
    used: set[int] = set()
    for step in observed:
        index = next((i for i, c in enumerate(merged) if c.name == step.name and i not in used),
                     None)
        if index is None:
            merged.append(step)
            used.add(len(merged) - 1)
        else:
            merged[index] = step
            used.add(index)
    return merged


def settle_steps(steps: list[StepStatus], now: datetime) -> list[StepStatus]:
    """After a run stopped: steps that never finished are Skipped (never left Running)."""
    return [step if step.phase in _FINISHED_STEP_PHASES else
            step.model_copy(update={"phase": "Skipped", "finished_at": step.finished_at
                                    or (now if step.started_at else None)})
            for step in steps]


def running_step(steps: list[StepStatus]) -> str | None:
    names = [step.name for step in steps if step.phase == "Running"]
    return ", ".join(names) if names else None


_STATUS_KEYS = {info.alias or name for name, info in CompressionStatus.model_fields.items()}


def parse_status(raw: Mapping[str, Any] | None) -> CompressionStatus:
    """The status as the API server holds it; keys other writers add (kopf's) are ignored."""
    known = {key: value for key, value in (raw or {}).items() if key in _STATUS_KEYS}
    return CompressionStatus.model_validate(known)


def status_patch(raw: Mapping[str, Any] | None, new: CompressionStatus) -> dict[str, Any]:
    """A JSON merge patch from `raw` to `new`: {} when nothing changed, None deletes a key."""
    old = {key: value for key, value in (raw or {}).items() if key in _STATUS_KEYS}
    wanted = new.to_wire()
    patch: dict[str, Any] = {key: value for key, value in wanted.items() if old.get(key) != value}
    patch.update({key: None for key in old if key not in wanted})
    return patch


# ----------------------------------------------- outcomes of the controller's actions


def submitted(status: CompressionStatus, run_id: str, backend: Literal["kfp", "local"],
              now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"run_id": run_id, "backend": backend})
    return with_condition(status, SUCCEEDED, "Unknown", "Submitted",
                          f"run {run_id} submitted to the {backend} backend", now)


def submit_failed(status: CompressionStatus, problem: str, now: datetime) -> CompressionStatus:
    return with_condition(status, SUCCEEDED, "Unknown", "SubmitFailed",
                          f"could not submit the run (will retry): {problem}", now)


def promoted(status: CompressionStatus, target: str | None, inference_service: str | None,
             now: datetime) -> CompressionStatus:
    assert status.promotion is not None
    where = [f"copied to {target}"] if target else []
    if inference_service:
        where.append(f"InferenceService {inference_service} now serves it")
    status = status.model_copy(update={"promotion": status.promotion.model_copy(
        update={"decision": "Promoted", "promoted_uri": target})})
    return with_condition(status, PROMOTED, "True", "Promoted", "; ".join(where), now)


def promotion_failed(status: CompressionStatus, problem: str,
                     now: datetime) -> CompressionStatus:
    """The gates passed but the copy or patch did not: the decision stays Pending (retried)."""
    return with_condition(status, PROMOTED, "False", "PromotionFailed",
                          f"every gate passed but promoting failed (will retry): {problem}", now)
