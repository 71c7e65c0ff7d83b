"""The reconciler: (job, its checked spec, what was observed, operator config) -> (next
status, actions).

Pure: no I/O and no clock (the time comes in the observation), so every transition is a
row in a table test. The controller parses a job's spec once per generation (`checked`),
gathers the observation, calls `reconcile`, performs the actions and writes the status.
Phases: Pending (queued or submitted) → Running → Succeeded | Failed; a terminal job only
re-judges its promotion when `spec.promotion` changed. A run is submitted only while the
status holds no runId; a run past the job's deadline is terminated. The transitions
themselves are in `status`, the promotion decision in `promotion`, what a namespace's job
may touch in `scope`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeAlias

from modelpress import gates
from modelpress.api import (
    API_GROUP,
    API_VERSION,
    KIND,
    CompressionJob,
    CompressionStatus,
    Results,
    StepStatus,
)
from modelpress.errors import StoreError, one_line
from modelpress.jobfile import validate_job
from modelpress.operator import promotion, verify
from modelpress.operator.backends.base import RunRequest, RunState
from modelpress.operator.promotion import Promote
from modelpress.operator.scope import image_refused, outside_namespace
from modelpress.operator.status import (
    BACKEND_UNAVAILABLE,
    INVALID_SPEC,
    PROMOTED,
    RESULTS_MISMATCH,
    RESULTS_MISSING,
    SUBMIT_FAILED,
    SUCCEEDED,
    backend_unavailable,
    deadline_exceeded,
    failed,
    find_condition,
    invalid,
    merge_steps,
    parse_status,
    pending,
    planned_steps,
    queued,
    running,
    stopped,
    succeeded,
    waiting,
)
from modelpress.operator.verify import VerifyAction
from modelpress.pipelines.build import run_deadline
from modelpress.records import RESULTS
from modelpress.settings import within_allowed_roots
from modelpress.store import local_folder
from modelpress.tenancy import DEFAULT_PREFIXES
from modelpress.trust import untrusted_program

TERMINAL_PHASES = ("Succeeded", "Failed")
# The operator's finalizer: put on a job when the ticker admits it, always before its run is
# submitted, so deleting a job stops its run.
FINALIZER = f"{API_GROUP}/finalizer"
DEFAULT_MAX_DEADLINE_SECONDS = 6 * 3600
# A job's spec as the operator acts on it: parsed, or one line saying why it is invalid.
Checked = CompressionJob | str


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
    # Whether FINALIZER is on the job. The ticker puts it on when it admits the job; no run
    # is submitted for a job without it.
    has_finalizer: bool = True


@dataclass(frozen=True)
class RunResults:
    """The run's results.json, read from the artifact store; `sha256`: of the bytes read."""

    results: Results
    artifacts: dict[str, str]
    steps: list[StepStatus]
    sha256: str | None = None


@dataclass(frozen=True)
class Observation:
    now: datetime
    run: RunState | None = None
    backend_error: str | None = None
    slot_free: bool = True
    results: RunResults | None = None
    results_error: str | None = None
    # The platform's verification run of a succeeded job's model (operator.verify).
    verification: verify.Observed | None = None


@dataclass(frozen=True)
class Config:
    default_output: str  # may name {namespace} and {name}
    kserve_enabled: bool = False
    # Where file:// outputs and promotion targets may point (MODELPRESS_ALLOWED_FILE_ROOTS);
    # empty: anywhere the operator can write.
    allowed_file_roots: tuple[Path, ...] = ()
    # Where a job's outputs, target and stored inputs may lie, by template naming
    # {namespace} (MODELPRESS_NAMESPACE_PREFIXES).
    namespace_prefixes: tuple[str, ...] = DEFAULT_PREFIXES
    # The images spec.image may name (MODELPRESS_ALLOWED_IMAGES); empty spec.image, the
    # operator's step image, is always allowed.
    allowed_images: tuple[str, ...] = ()
    # The longest any run may take; also the deadline of a job that sets none.
    max_deadline_seconds: int = DEFAULT_MAX_DEADLINE_SECONDS
    # Runs in flight per namespace (the controller asks the backend; reconcile sees the
    # answer as Observation.slot_free).
    max_runs_per_namespace: int = 2
    # Whether a job may name a model format that is a program (MODELPRESS_TRUST_MODEL_CODE).
    trust_model_code: bool = False
    # Whether a job may choose its storage Secret (spec.storage): only where each job's
    # steps run in its own namespace (a multi-user Kubeflow). Elsewhere every job's steps
    # share one namespace, whose Secrets (the platform's among them) are not a tenant's.
    job_secrets: bool = False
    # Where the operator stages and re-measures the model of a run that keeps no record of
    # its own (MODELPRESS_VERIFY_PREFIX; the Kubeflow backend). None: runs keep their own
    # record (the local backend), and one without is not promoted.
    verify_prefix: str | None = None


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class SubmitRun:
    request: RunRequest


@dataclass(frozen=True)
class TerminateRun:
    run_id: str
    why: str = "the job was deleted"
    verification: bool = False  # the job's verification run, not its own


@dataclass(frozen=True)
class EmitEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action: TypeAlias = SubmitRun | TerminateRun | Promote | VerifyAction | EmitEvent


@dataclass(frozen=True)
class Decision:
    status: CompressionStatus
    actions: list[Action] = field(default_factory=list)


# ------------------------------------------------------------------------------- entry


def reconcile(job: JobView, parsed: Checked, observed: Observation,
              config: Config) -> Decision:
    """The next status of `job` (whose spec `checked` gave `parsed`) and what must happen
    to get there."""
    before = parse_status(job.status)
    if _is_settled(before, job):
        status, actions = _settled(job, before, parsed, observed, config)
    elif before.run_id is not None:
        status, actions = _follow(job, before, parsed, observed, config)
    elif isinstance(parsed, str):
        status, actions = invalid(before, parsed, observed.now), []
    else:
        status, actions = _admit(job, before, parsed, observed, config)
    status = status.model_copy(update={"observed_generation": job.generation})
    return Decision(status, [*actions, *transition_events(before, status)])


def accept(job: JobView, parsed: Checked, now: datetime) -> CompressionStatus:
    """The first status of a job no sync has seen yet: Pending and queued, or Failed when
    its spec is invalid. Neither needs the backend, so the operator writes it in the first
    processing cycle of the job and a job has a phase right after it is applied; the
    ticker admits it when a slot is free, putting its finalizer on first."""
    before = parse_status(job.status)
    if isinstance(parsed, str):
        status = invalid(before, parsed, now)
    else:
        status = queued(pending(before, now), now)
    return status.model_copy(update={"observed_generation": job.generation})


def finalize(job: JobView) -> list[Action]:
    """What deleting `job` requires: stop its run, or its verification run, while it is
    still in flight."""
    status = parse_status(job.status)
    if status.run_id and status.phase not in TERMINAL_PHASES:
        return [TerminateRun(status.run_id)]
    verification = status.verification
    if verification and verification.run_id and verification.phase == "Running":
        return [TerminateRun(verification.run_id, verification=True)]
    return []


def checked(job: JobView, config: Config) -> Checked:
    """The parsed job, or one line naming the offending field (what the schema let by):
    validated as the CLI validates a job file, its CEL condition compiled, and the places
    it writes to under the allowed roots (a spec may not aim its output or promotion at
    another job's files or the operator's own), every place it reads or writes under its
    namespace's prefixes, and its image on the allowlist."""
    document = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND,
                "metadata": {"name": job.name, "namespace": job.namespace}, "spec": job.spec}
    parsed = validate_job(document)
    if isinstance(parsed, str):
        return parsed
    condition = parsed.spec.promotion.condition
    problem = gates.condition_error(condition) if condition else None
    if problem:
        return f"spec.promotion.condition: {problem}"
    for where, location in (("spec.output", parsed.spec.output),
                            ("spec.promotion.target", parsed.spec.promotion.target)):
        problem = _unwritable(location, config) if location else None
        if problem:
            return f"{where}: {problem}"
    problem = outside_namespace(parsed, output_of(parsed, config), config.namespace_prefixes)
    if problem:
        return problem
    problem = image_refused(parsed.spec.image, config.allowed_images)
    if problem:
        return problem
    refused = untrusted_program(parsed.spec, config.trust_model_code)
    if refused:
        return str(refused)
    if parsed.spec.storage is not None and not config.job_secrets:
        return ("spec.storage.secretName: this operator runs every job's steps in one "
                "namespace (the local backend or a single-user Kubeflow), where a job may not "
                "choose a Secret; remove spec.storage")
    return parsed


def _unwritable(location: str, config: Config) -> str | None:
    """Why the operator may not write to `location`, or None (s3:// is checked on use)."""
    if not location.startswith("file://"):
        return None
    try:
        folder = local_folder(location)
    except StoreError as error:  # a host, or no path: not a folder on this machine
        return one_line(str(error))
    if not within_allowed_roots(folder, list(config.allowed_file_roots)):
        return f"{location} lies outside the allowed roots"
    return None


def output_of(job: CompressionJob, config: Config) -> str:
    return job.spec.output or config.default_output.format(
        namespace=job.metadata.namespace, name=job.metadata.name)


def deadline_of(parsed: Checked, config: Config) -> int:
    """The job's deadline as its compiled tasks carry it (an invalid spec: the cap)."""
    if isinstance(parsed, str):
        return config.max_deadline_seconds
    return run_deadline(parsed.spec, config.max_deadline_seconds)


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


_WARNING_REASONS = (BACKEND_UNAVAILABLE, SUBMIT_FAILED)


# ------------------------------------------------------------------------------ phases


def _is_settled(status: CompressionStatus, job: JobView) -> bool:
    """Terminal, except a spec rejected before any run: an edit may have fixed it."""
    if status.phase not in TERMINAL_PHASES:
        return False
    condition = find_condition(status, SUCCEEDED)
    retry_invalid = (status.run_id is None and condition is not None
                     and condition.reason == INVALID_SPEC
                     and status.observed_generation != job.generation)
    return not retry_invalid


def _admit(job: JobView, status: CompressionStatus, parsed: CompressionJob,
           observed: Observation, config: Config) -> tuple[CompressionStatus, list[Action]]:
    now = observed.now
    status = pending(status, now)
    if observed.backend_error is not None:
        return backend_unavailable(status, observed.backend_error, now), []
    if not observed.slot_free:
        return queued(status, now), []
    output = output_of(parsed, config)
    status = status.model_copy(update={"steps": planned_steps(parsed.spec),
                                       "artifacts": {"output": output}})
    return status, [SubmitRun(RunRequest(key=job.uid, job=parsed, output=output))]


def _follow(job: JobView, status: CompressionStatus, parsed: Checked,
            observed: Observation, config: Config) -> tuple[CompressionStatus, list[Action]]:
    now, run = observed.now, observed.run
    if observed.backend_error is not None:
        return backend_unavailable(status, observed.backend_error, now), []
    if run is None:
        return status, []
    status = status.model_copy(update={"steps": merge_steps(status.steps, run.steps)})
    deadline = deadline_of(parsed, config)
    if run.phase in ("Pending", "Running") and _overdue(status, run, deadline, now):
        return deadline_exceeded(status, run, deadline, now), [
            TerminateRun(run.run_id, f"it ran past its deadline of {deadline} s")]
    if run.phase == "Pending":
        return waiting(status, run, now), []
    if run.phase == "Running":
        return running(status, run, now), []
    if run.phase == "Succeeded":
        return _succeeded(job, status, parsed, observed, config)
    return failed(status, run, now), []


def _overdue(status: CompressionStatus, run: RunState, deadline_seconds: int,
             now: datetime) -> bool:
    """Whether the run started (as the backend or the status has it) more than
    `deadline_seconds` ago; a run with no known start is not judged yet."""
    started = status.started_at or run.started_at
    return started is not None and (now - started).total_seconds() > deadline_seconds


def _succeeded(job: JobView, status: CompressionStatus, parsed: Checked,
               observed: Observation, config: Config) -> tuple[CompressionStatus, list[Action]]:
    now, run, found = observed.now, observed.run, observed.results
    assert run is not None
    if found is None:
        problem = observed.results_error or "results.json was not read"
        return stopped(status, RESULTS_MISSING, f"run {run.run_id} succeeded but {problem}",
                       run.finished_at or now, now), []
    forged = _unlike_record(found, run)
    if forged:
        return stopped(status, RESULTS_MISMATCH, f"run {run.run_id} succeeded but {forged}",
                       run.finished_at or now, now), []
    status = succeeded(status, run, found.results, found.artifacts, found.steps, now)
    return _judge(job, status, parsed, config, observed, run.recorded)


def _unlike_record(found: RunResults, run: RunState) -> str | None:
    """Why the results.json read is not the one the run wrote, or None. Without a record
    the figures are shown but nothing is promoted (promotion.decide)."""
    expected = run.recorded.get(RESULTS)
    if expected is None or found.sha256 == expected:
        return None
    return (f"results.json does not match the run's record (sha256 {found.sha256} read, "
            f"{expected} recorded): it was changed after the run wrote it, so its figures are "
            "not taken and nothing is promoted")


def _settled(job: JobView, status: CompressionStatus, parsed: Checked,
             observed: Observation, config: Config) -> tuple[CompressionStatus, list[Action]]:
    """A finished job: re-judge only when its spec changed or a promotion is unfinished."""
    changed = status.observed_generation != job.generation
    unfinished = status.promotion is not None and status.promotion.decision == "Pending"
    if status.phase != "Succeeded" or status.results is None or not (changed or unfinished):
        return status, []
    recorded = status.promotion.sha256 if status.promotion else {}
    return _judge(job, status, parsed, config, observed, recorded)


def _judge(job: JobView, status: CompressionStatus, parsed: Checked, config: Config,
           observed: Observation, recorded: Mapping[str, str]
           ) -> tuple[CompressionStatus, list[Action]]:
    """The promotion decision; the run's record of its digests is kept in status.promotion
    (where a later re-judgement and the copy find it). A run that keeps no record of its
    own is judged on the platform's verification of its model (operator.verify), whose
    staging record is the one kept."""
    now = observed.now
    actions: list[Action]
    if isinstance(parsed, str):
        status, actions = promotion.rejected(status, INVALID_SPEC, [parsed], now), []
    elif config.verify_prefix and (status.verification or promotion.MODEL not in recorded):
        judging = verify.Judging(job=parsed, uid=job.uid, annotations=job.annotations,
                                 kserve_enabled=config.kserve_enabled,
                                 output=status.artifacts.get("output")
                                 or output_of(parsed, config),
                                 prefix=config.verify_prefix, now=now)
        status, verifying = verify.judge(judging, status, observed.verification)
        actions = list(verifying)
        verification = status.verification
        recorded = verification.candidate.sha256 \
            if verification and verification.phase == "Succeeded" else {}
    else:
        output = status.artifacts.get("output") or output_of(parsed, config)
        status, promoting = promotion.decide(status, parsed.spec.promotion, job.annotations,
                                             config.kserve_enabled, output, job.namespace, now,
                                             recorded)
        actions = list(promoting)
    assert status.promotion is not None
    status = status.model_copy(update={"promotion": status.promotion.model_copy(update={
        "sha256": {key: digest for key, digest in recorded.items()
                   if key in promotion.promoted_files(recorded)},
        "model_sha256": recorded.get(promotion.MODEL)})})
    return status, list(actions)
