"""The reconciler: (job, what was observed, operator config) -> (next status, actions).

Pure: no I/O and no clock (the time comes in the observation), so every transition is a
row in a table test. The controller gathers the observation, calls `reconcile`, performs
the actions and writes the status. Phases: Pending (queued or submitted) → Running →
Succeeded | Failed; a terminal job only re-judges its promotion when `spec.promotion`
changed. A run is submitted only while the status holds no runId.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from modelpress.api import (
    API_GROUP,
    API_VERSION,
    KIND,
    CompressionJob,
    CompressionStatus,
    PromotionStatus,
    Results,
    StepStatus,
)
from modelpress.jobfile import describe
from modelpress.operator import promotion
from modelpress.operator.backends.base import RunRequest, RunState
from modelpress.operator.status import (
    PROMOTED,
    SUCCEEDED,
    find_condition,
    merge_steps,
    parse_status,
    planned_steps,
    running_step,
    settle_steps,
    with_condition,
)
from modelpress.settings import within_allowed_roots
from modelpress.store import local_folder

INFERENCE_SERVICE_ANNOTATION = "modelpress.io/inference-service"
TERMINAL_PHASES = ("Succeeded", "Failed")


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class JobView:
    """A CompressionJob as the API server holds it (spec and status as raw JSON)."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any] | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""


@dataclass(frozen=True)
class RunResults:
    """The run's results.json, read from the artifact store."""

    results: Results
    artifacts: dict[str, str]
    steps: list[StepStatus]


@dataclass(frozen=True)
class Observation:
    now: datetime
    run: RunState | None = None
    backend_error: str | None = None
    slot_free: bool = True
    results: RunResults | None = None
    results_error: str | None = None


@dataclass(frozen=True)
class Config:
    default_output: str  # may name {namespace} and {name}
    kserve_enabled: bool = False
    # Where file:// outputs and promotion targets may point (MODELPRESS_ALLOWED_FILE_ROOTS);
    # empty: anywhere the operator can write.
    allowed_file_roots: tuple[Path, ...] = ()


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class SubmitRun:
    request: RunRequest


@dataclass(frozen=True)
class TerminateRun:
    run_id: str


@dataclass(frozen=True)
class Promote:
    """Copy the output to `target` (when set), then point `inference_service` at it."""

    output: str
    target: str | None
    inference_service: str | None = None


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = SubmitRun | TerminateRun | Promote | EmitEvent


@dataclass(frozen=True)
class Decision:
    status: CompressionStatus
    actions: list[Action] = field(default_factory=list)


# ------------------------------------------------------------------------------- entry


def reconcile(job: JobView, observed: Observation, config: Config) -> Decision:
    """The next status of `job` and what must happen to get there."""
    before = parse_status(job.status)
    parsed = checked(job, config)
    if _is_settled(before, job):
        status, actions = _settled(job, before, parsed, observed, config)
    elif before.run_id is not None:
        status, actions = _follow(job, before, parsed, observed, config)
    elif isinstance(parsed, str):
        status, actions = _invalid(before, parsed, observed.now), []
    else:
        status, actions = _admit(job, before, parsed, observed, config)
    status = status.model_copy(update={"observed_generation": job.generation})
    return Decision(status, [*actions, *transition_events(before, status)])


def accept(job: JobView, now: datetime, config: Config) -> CompressionStatus:
    """The first status of a job no sync has seen yet: Pending and queued, or Failed when
    its spec is invalid. Neither needs the backend, so the operator writes it in the
    processing cycle that adds its finalizer and a job has a phase right after it is
    applied; the sync that follows admits it."""
    parsed = checked(job, config)
    before = parse_status(job.status)
    if isinstance(parsed, str):
        status = _invalid(before, parsed, now)
    else:
        status = _queued(_pending(before, now), now)
    return status.model_copy(update={"observed_generation": job.generation})


def finalize(job: JobView) -> list[Action]:
    """What deleting `job` requires: stop its run while it is still in flight."""
    status = parse_status(job.status)
    if status.run_id and status.phase not in TERMINAL_PHASES:
        return [TerminateRun(status.run_id)]
    return []


def validate(job: JobView) -> CompressionJob | str:
    """The parsed job, or one line naming the offending field (what the schema let by)."""
    document = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND,
                "metadata": {"name": job.name, "namespace": job.namespace}, "spec": job.spec}
    try:
        parsed = CompressionJob.model_validate(document)
    except ValidationError as error:
        return describe(error)
    condition = parsed.spec.promotion.condition
    problem = promotion.condition_error(condition) if condition else None
    return f"spec.promotion.condition: {problem}" if problem else parsed


def checked(job: JobView, config: Config) -> CompressionJob | str:
    """`validate`, and the places the job writes to lie under the allowed roots: a spec
    may not aim its output or promotion at another job's files or the operator's own."""
    parsed = validate(job)
    if isinstance(parsed, str):
        return parsed
    for where, location in (("spec.output", parsed.spec.output),
                            ("spec.promotion.target", parsed.spec.promotion.target)):
        if location and location.startswith("file://") and not within_allowed_roots(
                local_folder(location), list(config.allowed_file_roots)):
            return f"{where}: {location} lies outside the allowed roots"
    return parsed


def output_of(job: CompressionJob, config: Config) -> str:
    return job.spec.output or config.default_output.format(
        namespace=job.metadata.namespace, name=job.metadata.name)


def transition_events(before: CompressionStatus, after: CompressionStatus) -> list[EmitEvent]:
    """One Event per condition whose status or reason changed, but for the Promoted
    condition only a decision is news: not that one is awaited, and not its turning False
    along with a failed job (which says so once)."""
    events = []
    for condition in after.conditions:
        previous = find_condition(before, condition.type)
        if previous and (previous.status, previous.reason) == (condition.status, condition.reason):
            continue
        if condition.type == PROMOTED and (after.phase == "Failed"
                                           or condition.status == "Unknown"):
            continue
        warning = condition.status == "False" or condition.reason in _WARNING_REASONS
        events.append(EmitEvent("Warning" if warning else "Normal", condition.reason,
                                condition.message))
    return events


_WARNING_REASONS = ("BackendUnavailable", "SubmitFailed")


# ------------------------------------------------------------------------------ phases


def _is_settled(status: CompressionStatus, job: JobView) -> bool:
    """Terminal, except a spec rejected before any run: an edit may have fixed it."""
    if status.phase not in TERMINAL_PHASES:
        return False
    condition = find_condition(status, SUCCEEDED)
    retry_invalid = (status.run_id is None and condition is not None
                     and condition.reason == "InvalidSpec"
                     and status.observed_generation != job.generation)
    return not retry_invalid


def _invalid(status: CompressionStatus, problem: str, now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"phase": "Failed", "finished_at": now})
    status = with_condition(status, SUCCEEDED, "False", "InvalidSpec", problem, now)
    return _no_promotion(status, "InvalidSpec", f"the spec is invalid: {problem}", now)


def _pending(status: CompressionStatus, now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"phase": "Pending", "finished_at": None})
    return _awaiting_promotion(status, now)


def _queued(status: CompressionStatus, now: datetime) -> CompressionStatus:
    """Waiting for a slot. One message whether or not a slot was looked for yet, so a job
    accepted at the cap needs no second status write."""
    return with_condition(status, SUCCEEDED, "Unknown", "Queued", "waiting for a free slot "
                          "under the operator's cap on runs in flight", now)


def _admit(job: JobView, status: CompressionStatus, parsed: CompressionJob,
           observed: Observation, config: Config) -> tuple[CompressionStatus, list[Action]]:
    now = observed.now
    status = _pending(status, now)
    if observed.backend_error is not None:
        return with_condition(status, SUCCEEDED, "Unknown", "BackendUnavailable",
                              observed.backend_error, now), []
    if not observed.slot_free:
        return _queued(status, now), []
    output = output_of(parsed, config)
    status = status.model_copy(update={"steps": planned_steps(parsed.spec),
                                       "artifacts": {"output": output}})
    return status, [SubmitRun(RunRequest(key=job.uid, job=parsed, output=output))]


def _follow(job: JobView, status: CompressionStatus, parsed: CompressionJob | str,
            observed: Observation, config: Config) -> tuple[CompressionStatus, list[Action]]:
    now, run = observed.now, observed.run
    if observed.backend_error is not None:
        return with_condition(status, SUCCEEDED, "Unknown", "BackendUnavailable",
                              observed.backend_error, now), []
    if run is None:
        return status, []
    steps = merge_steps(status.steps, run.steps)
    status = status.model_copy(update={"steps": steps})
    if run.phase == "Pending":
        return with_condition(status, SUCCEEDED, "Unknown", "Submitted",
                              f"run {run.run_id} is waiting to start", now), []
    if run.phase == "Running":
        return _running(status, run, now), []
    if run.phase == "Succeeded":
        return _succeeded(job, status, parsed, observed, config)
    return _failed(status, run, now), []


def _running(status: CompressionStatus, run: RunState, now: datetime) -> CompressionStatus:
    status = status.model_copy(update={
        "phase": "Running", "started_at": status.started_at or run.started_at or now})
    step = running_step(status.steps)
    message = f"running {step}" if step else f"run {run.run_id} is running"
    return with_condition(status, SUCCEEDED, "Unknown", "Running", message, now)


def _failure_reason(run: RunState) -> tuple[str, str]:
    if run.phase == "Canceled":
        return "RunCanceled", f"run {run.run_id} was canceled outside the operator"
    if run.phase == "Lost":
        return "RunLost", f"the backend has no record of run {run.run_id}"
    problem = run.message or "no message"
    if run.failed_step:
        return "StepFailed", f"step {run.failed_step} failed: {problem}"
    return "RunFailed", f"run {run.run_id} failed: {problem}"


def _failed(status: CompressionStatus, run: RunState, now: datetime) -> CompressionStatus:
    reason, message = _failure_reason(run)
    return _stopped(status, reason, message, run.finished_at or now, now)


def _stopped(status: CompressionStatus, reason: str, message: str, finished_at: datetime,
             now: datetime) -> CompressionStatus:
    status = status.model_copy(update={
        "phase": "Failed", "finished_at": finished_at,
        "steps": settle_steps(status.steps, finished_at)})
    status = with_condition(status, SUCCEEDED, "False", reason, message, now)
    return _no_promotion(status, "JobFailed", f"no results to judge: {message}", now)


def _succeeded(job: JobView, status: CompressionStatus, parsed: CompressionJob | str,
               observed: Observation, config: Config) -> tuple[CompressionStatus, list[Action]]:
    now, run, found = observed.now, observed.run, observed.results
    assert run is not None
    if found is None:
        problem = observed.results_error or "results.json was not read"
        return _stopped(status, "ResultsMissing", f"run {run.run_id} succeeded but "
                        f"{problem}", run.finished_at or now, now), []
    status = status.model_copy(update={
        "phase": "Succeeded", "started_at": status.started_at or run.started_at or now,
        "finished_at": run.finished_at or now, "results": found.results,
        "artifacts": {**status.artifacts, **found.artifacts},
        "steps": found.steps or settle_steps(status.steps, now)})
    status = with_condition(status, SUCCEEDED, "True", "RunSucceeded",
                            _summary(found.results), now)
    return _judge(job, status, parsed, config, now)


def _summary(results: Results) -> str:
    speedups = ", ".join(f"{pool} {value:g}x" for pool, value in results.speedup.items())
    return (f"compression ratio {results.compression_ratio:g}x, accuracy drop "
            f"{results.accuracy_drop:g}, speedup {speedups or 'not measured'}")


def _settled(job: JobView, status: CompressionStatus, parsed: CompressionJob | str,
             observed: Observation, config: Config) -> tuple[CompressionStatus, list[Action]]:
    """A finished job: re-judge only when its spec changed or a promotion is unfinished."""
    changed = status.observed_generation != job.generation
    unfinished = status.promotion is not None and status.promotion.decision == "Pending"
    if status.phase != "Succeeded" or status.results is None or not (changed or unfinished):
        return status, []
    return _judge(job, status, parsed, config, observed.now)


# --------------------------------------------------------------------------- promotion


def _judge(job: JobView, status: CompressionStatus, parsed: CompressionJob | str,
           config: Config, now: datetime) -> tuple[CompressionStatus, list[Action]]:
    assert status.results is not None
    if isinstance(parsed, str):
        return _reject(status, "InvalidSpec", [parsed], now), []
    spec = parsed.spec.promotion
    verdict = promotion.judge(status.results, spec)
    if verdict.decision == "Rejected":
        return _reject(status, "GatesFailed", verdict.reasons, now), []
    service = job.annotations.get(INFERENCE_SERVICE_ANNOTATION)
    reasons = list(verdict.reasons)
    if service and not config.kserve_enabled:
        reasons.append(f"annotation {INFERENCE_SERVICE_ANNOTATION} ignored: KServe patching "
                       "is not enabled in the operator")
        service = None
    if spec.target is None and service is None:
        status = status.model_copy(update={"promotion": PromotionStatus(
            decision="Promoted", reasons=[*reasons, "no promotion.target: nothing copied"])})
        return with_condition(status, PROMOTED, "True", "GatesPassed",
                              "every gate passed; no promotion.target is set", now), []
    current = status.promotion
    if current and current.decision == "Promoted" and current.promoted_uri == spec.target:
        return status.model_copy(update={"promotion": current.model_copy(
            update={"reasons": reasons})}), []
    status = status.model_copy(update={"promotion": PromotionStatus(
        decision="Pending", reasons=reasons)})
    output = status.artifacts.get("output") or output_of(parsed, config)
    return status, [Promote(output=output, target=spec.target, inference_service=service)]


def _reject(status: CompressionStatus, reason: str, reasons: list[str],
            now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"promotion": PromotionStatus(
        decision="Rejected", reasons=reasons)})
    return with_condition(status, PROMOTED, "False", reason, "; ".join(reasons), now)


def _no_promotion(status: CompressionStatus, reason: str, message: str,
                  now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"promotion": PromotionStatus(
        decision="Rejected", reasons=[message])})
    return with_condition(status, PROMOTED, "False", reason, message, now)


def _awaiting_promotion(status: CompressionStatus, now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"promotion": PromotionStatus(
        decision="Pending", reasons=["the job has not finished"])})
    return with_condition(status, PROMOTED, "Unknown", "AwaitingResults",
                          "the gates are judged when the run succeeds", now)
