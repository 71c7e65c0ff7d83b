"""Status computation: the condition reasons, every transition of a job's status, step
lists, and the patch that writes a status.

Everything here is pure. A status is written only when it changed, and a condition's
lastTransitionTime moves only when its status does (a new reason alone is not a
transition), so `kubectl get` and alerts see stable timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from modelpress.api import (
    CompressionSpec,
    CompressionStatus,
    Condition,
    PromotionStatus,
    Results,
    StepStatus,
)
from modelpress.operator.backends.base import RunState
from modelpress.pipelines import steps

# Condition types.
SUCCEEDED = "Succeeded"
PROMOTED = "Promoted"
ConditionStatus = Literal["True", "False", "Unknown"]

# Condition reasons (the Events a transition posts carry the same ones).
INVALID_SPEC = "InvalidSpec"
QUEUED = "Queued"
BACKEND_UNAVAILABLE = "BackendUnavailable"
SUBMITTED = "Submitted"
SUBMIT_FAILED = "SubmitFailed"
RUNNING = "Running"
RUN_SUCCEEDED = "RunSucceeded"
STEP_FAILED = "StepFailed"
RUN_FAILED = "RunFailed"
RUN_CANCELED = "RunCanceled"
RUN_LOST = "RunLost"
RESULTS_MISSING = "ResultsMissing"
# results.json differs from the run's own record of it: changed after the run wrote it.
RESULTS_MISMATCH = "ResultsMismatch"
DEADLINE_EXCEEDED = "DeadlineExceeded"
AWAITING_RESULTS = "AwaitingResults"
JOB_FAILED = "JobFailed"
GATES_PASSED = "GatesPassed"
GATES_FAILED = "GatesFailed"
MODEL_PROMOTED = "Promoted"
PROMOTION_FAILED = "PromotionFailed"
# A promoted file's bytes differ from the digest the run recorded: nothing was copied.
DIGEST_MISMATCH = "DigestMismatch"
# The backend kept no record of what the run published: nothing can be verified to promote.
NO_RUN_RECORD = "NoRunRecord"
# A Kubeflow run's model is being staged and re-measured in the platform's namespace.
VERIFYING = "Verifying"
# The platform's verification of a Kubeflow run's model failed or was refused: not promoted.
VERIFICATION_FAILED = "VerificationFailed"
# The annotation names an InferenceService in another namespace: no promotion at all.
SERVICE_REFUSED = "InferenceServiceRefused"
# spec.promotion.registry cannot be used: a model outside the namespace's, or no registry
# configured (MLFLOW_TRACKING_URI). Final until the spec or the operator changes.
REGISTRY_REFUSED = "RegistryRefused"
# The registry did not answer or failed a request: the promotion stays Pending, retried.
REGISTRY_UNAVAILABLE = "RegistryUnavailable"
# The reason of the Event posted when a deleted job's run is stopped (no condition has it).
TERMINATED = "Terminated"

# The KServe rollout of a promoted model (promotion.py), mirrored from the InferenceService.
CANARY_READY = "CanaryReady"
AWAITING_KSERVE = "AwaitingKServe"  # KServe has not yet observed what modelpress set
ROLLING_OUT = "RollingOut"  # the new revision is not ready, or not yet given its traffic
ROLLOUT_FAILED = "RolloutFailed"  # KServe reports the new revision failed
CANARY_SERVING = "CanaryServing"  # the canary serves its share of traffic
CANARY_PROMOTED = "CanaryPromoted"  # the new model serves all traffic
CANARY_ROLLED_BACK = "CanaryRolledBack"  # the previous model is back
RolloutState = Literal["Canary", "Promoted", "RolledBack"]

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
    """The steps a run of `spec` will go through, all Pending, named as the steps report
    (the plan of modelpress.pipelines.steps)."""
    return [StepStatus(name=step.name, phase="Pending") for step in steps.planned_steps(spec)]


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


# ------------------------------------------------------------- transitions of a job


def invalid(status: CompressionStatus, problem: str, now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"phase": "Failed", "finished_at": now})
    status = with_condition(status, SUCCEEDED, "False", INVALID_SPEC, problem, now)
    return no_promotion(status, INVALID_SPEC, f"the spec is invalid: {problem}", now)


def pending(status: CompressionStatus, now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"phase": "Pending", "finished_at": None})
    return awaiting_promotion(status, now)


def queued(status: CompressionStatus, now: datetime) -> CompressionStatus:
    """Waiting for a slot. One message whether or not a slot was looked for yet, so a job
    accepted at the cap needs no second status write."""
    return with_condition(status, SUCCEEDED, "Unknown", QUEUED, "waiting for a free slot "
                          "under the operator's caps on runs in flight (overall and per "
                          "namespace)", now)


def backend_unavailable(status: CompressionStatus, problem: str,
                        now: datetime) -> CompressionStatus:
    """The backend could not be asked; the phase stays, the next sync asks again."""
    return with_condition(status, SUCCEEDED, "Unknown", BACKEND_UNAVAILABLE, problem, now)


def submitted(status: CompressionStatus, run_id: str, backend: Literal["kfp", "local"],
              now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"run_id": run_id, "backend": backend})
    return with_condition(status, SUCCEEDED, "Unknown", SUBMITTED,
                          f"run {run_id} submitted to the {backend} backend", now)


def submit_failed(status: CompressionStatus, problem: str, now: datetime) -> CompressionStatus:
    return with_condition(status, SUCCEEDED, "Unknown", SUBMIT_FAILED,
                          f"could not submit the run (will retry): {problem}", now)


def waiting(status: CompressionStatus, run: RunState, now: datetime) -> CompressionStatus:
    return with_condition(status, SUCCEEDED, "Unknown", SUBMITTED,
                          f"run {run.run_id} is waiting to start", now)


def running(status: CompressionStatus, run: RunState, now: datetime) -> CompressionStatus:
    status = status.model_copy(update={
        "phase": "Running", "started_at": status.started_at or run.started_at or now})
    step = running_step(status.steps)
    message = f"running {step}" if step else f"run {run.run_id} is running"
    return with_condition(status, SUCCEEDED, "Unknown", RUNNING, message, now)


def succeeded(status: CompressionStatus, run: RunState, results: Results,
              artifacts: Mapping[str, str], steps: list[StepStatus],
              now: datetime) -> CompressionStatus:
    """The run succeeded and its results were read; promotion is judged next."""
    status = status.model_copy(update={
        "phase": "Succeeded", "started_at": status.started_at or run.started_at or now,
        "finished_at": run.finished_at or now, "results": results,
        "artifacts": {**status.artifacts, **artifacts},
        "steps": steps or settle_steps(status.steps, now)})
    return with_condition(status, SUCCEEDED, "True", RUN_SUCCEEDED, _summary(results), now)


def _summary(results: Results) -> str:
    speedups = ", ".join(f"{pool} {value:g}x" for pool, value in results.speedup.items())
    return (f"compression ratio {results.compression_ratio:g}x, accuracy drop "
            f"{results.accuracy_drop:g}, speedup {speedups or 'not measured'}")


def failed(status: CompressionStatus, run: RunState, now: datetime) -> CompressionStatus:
    """The run ended without success (failed, canceled outside the operator, or lost)."""
    reason, message = _failure_reason(run)
    return stopped(status, reason, message, run.finished_at or now, now)


def deadline_exceeded(status: CompressionStatus, run: RunState, deadline_seconds: int,
                      now: datetime) -> CompressionStatus:
    """The run took longer than its deadline; the operator terminates it."""
    return stopped(status, DEADLINE_EXCEEDED, f"run {run.run_id} ran past its deadline of "
                   f"{deadline_seconds} s and was terminated", now, now)


def _failure_reason(run: RunState) -> tuple[str, str]:
    if run.phase == "Canceled":
        return RUN_CANCELED, f"run {run.run_id} was canceled outside the operator"
    if run.phase == "Lost":
        return RUN_LOST, f"the backend has no record of run {run.run_id}"
    problem = run.message or "no message"
    if run.failed_step:
        return STEP_FAILED, f"step {run.failed_step} failed: {problem}"
    return RUN_FAILED, f"run {run.run_id} failed: {problem}"


def stopped(status: CompressionStatus, reason: str, message: str, finished_at: datetime,
            now: datetime) -> CompressionStatus:
    """Failed for `reason` after a run: unfinished steps Skipped, nothing to promote."""
    status = status.model_copy(update={
        "phase": "Failed", "finished_at": finished_at,
        "steps": settle_steps(status.steps, finished_at)})
    status = with_condition(status, SUCCEEDED, "False", reason, message, now)
    return no_promotion(status, JOB_FAILED, f"no results to judge: {message}", now)


# ------------------------------------------------------ transitions of the promotion
# Here rather than in promotion.py: the job's own transitions above set them, and
# promotion.py (the decision) builds on this module, not the other way round.


def awaiting_promotion(status: CompressionStatus, now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"promotion": PromotionStatus(
        decision="Pending", reasons=["the job has not finished"])})
    return with_condition(status, PROMOTED, "Unknown", AWAITING_RESULTS,
                          "the gates are judged when the run succeeds", now)


def no_promotion(status: CompressionStatus, reason: str, message: str,
                 now: datetime) -> CompressionStatus:
    """Rejected without judging: there are no results (or no valid spec) to judge."""
    status = status.model_copy(update={"promotion": PromotionStatus(
        decision="Rejected", reasons=[message])})
    return with_condition(status, PROMOTED, "False", reason, message, now)


def promoted(status: CompressionStatus, target: str | None, inference_service: str | None,
             now: datetime) -> CompressionStatus:
    assert status.promotion is not None
    where = [f"copied to {target}"] if target else []
    if inference_service:
        where.append(f"InferenceService {inference_service} now serves it")
    status = status.model_copy(update={"promotion": status.promotion.model_copy(
        update={"decision": "Promoted", "promoted_uri": target})})
    return with_condition(status, PROMOTED, "True", MODEL_PROMOTED, "; ".join(where), now)


def promotion_refused(status: CompressionStatus, problem: str,
                      now: datetime) -> CompressionStatus:
    """The InferenceService has not opted in: nothing is copied or patched, and the decision
    stays Pending, so labelling the service lets the next poll finish the promotion."""
    return with_condition(status, PROMOTED, "False", SERVICE_REFUSED,
                          f"every gate passed but nothing was promoted: {problem}", now)


def promotion_failed(status: CompressionStatus, problem: str,
                     now: datetime) -> CompressionStatus:
    """The gates passed but the copy or patch did not: the decision stays Pending (retried)."""
    return with_condition(status, PROMOTED, "False", PROMOTION_FAILED,
                          f"every gate passed but promoting failed (will retry): {problem}", now)


# ------------------------------------------------------------- the KServe rollout


@dataclass(frozen=True)
class Rollout:
    """What modelpress set on an InferenceService (`state`, `uri`, `percent`; `stable_uri`
    is what it served before) and what KServe reports of it (`ready`, `reason`, `message`:
    the CanaryReady condition)."""

    service: str
    state: RolloutState
    uri: str
    stable_uri: str | None
    percent: int
    ready: ConditionStatus
    reason: str
    message: str


def rolled_out(status: CompressionStatus, rollout: Rollout, now: datetime) -> CompressionStatus:
    """`status` with the rollout recorded in status.promotion and mirrored in CanaryReady.

    The decision is Promoted once KServe reports the canary serving its share (or, after a
    promote, all traffic), and stays Pending while it rolls out, so the poll comes back to
    look. A rollback makes it Rejected (a decision the gates made already keeps its reasons).
    """
    current = status.promotion or PromotionStatus(decision="Pending")
    recorded = current.model_copy(update={
        "canary_service": rollout.service, "canary_state": rollout.state,
        "canary_uri": rollout.uri, "canary_traffic_percent": rollout.percent,
        "stable_uri": rollout.stable_uri})
    status = with_condition(status.model_copy(update={"promotion": recorded}), CANARY_READY,
                            rollout.ready, rollout.reason, rollout.message, now)
    if rollout.state == "RolledBack":
        return _rolled_back(status, rollout, now)
    if rollout.ready != "True":
        status = _with_decision(status, "Pending")
        return with_condition(status, PROMOTED, "Unknown", rollout.reason, rollout.message, now)
    promoted_uri = recorded.promoted_uri
    copied = f"copied to {promoted_uri}" if promoted_uri else ""
    served = (f"InferenceService {rollout.service} serves it to all traffic"
              if rollout.state == "Promoted" else
              f"InferenceService {rollout.service} serves it to {rollout.percent}% of traffic "
              "as a canary: set spec.promotion.canary.action to promote or rollback")
    status = _with_decision(status, "Promoted")
    return with_condition(status, PROMOTED, "True", MODEL_PROMOTED,
                          "; ".join(filter(None, [copied, served])), now)


def _rolled_back(status: CompressionStatus, rollout: Rollout, now: datetime) -> CompressionStatus:
    """Rejected by the rollback; a rejection by the gates keeps its own reasons."""
    assert status.promotion is not None
    promoted = find_condition(status, PROMOTED)
    if promoted is not None and promoted.reason == GATES_FAILED:
        return status
    why = (f"rolled back: InferenceService {rollout.service} serves "
           f"{rollout.stable_uri or 'its previous model'} again")
    reasons = [reason for reason in status.promotion.reasons if reason != why]
    status = status.model_copy(update={"promotion": status.promotion.model_copy(
        update={"decision": "Rejected", "reasons": [*reasons, why]})})
    return with_condition(status, PROMOTED, "False", CANARY_ROLLED_BACK, why, now)


def _with_decision(status: CompressionStatus, decision: Literal["Promoted", "Pending"]
                   ) -> CompressionStatus:
    assert status.promotion is not None
    return status.model_copy(update={"promotion": status.promotion.model_copy(
        update={"decision": decision})})
