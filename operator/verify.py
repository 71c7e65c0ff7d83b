"""Verification: the platform's own measurement of a Kubeflow run's model before it is
promoted (docs/verification.md).

On a multi-user Kubeflow a job's run executes in its tenant's namespace with the tenant's
credentials, so nothing it writes (its output, KFP's metadata) is a record the operator
can trust. When such a run succeeded, its own figures pass the gates and its promotion has
something to do, the operator

1. stages: copies the model files the run published (the fixed names below, from the job's
   output, never from a path inside results.json) to `{prefix}{namespace}/{uid}/candidate/`,
   a place only the platform writes, hashing the very bytes it writes (its own record);
2. verifies: submits a run in the platform's namespace, with the platform's credentials,
   that takes the staged files as the compressed model (each checked against that record)
   and validates, benchmarks and reports them to `{prefix}{namespace}/{uid}/verified/`;
3. judges the gates on the verified figures and promotes the staged bytes, digest-verified
   against its staging record.

The decisions are pure (`judge`, called by the reconciler); the staging copy is the one
side effect here, performed by the controller.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeAlias

from modelpress.api import (
    TEXT_GENERATION,
    CompressionJob,
    CompressionStatus,
    ReportedFigures,
    Results,
    StagedCandidate,
    VerificationStatus,
)
from modelpress.operator import promotion
from modelpress.operator.backends.base import RunState, VerificationRequest
from modelpress.operator.promotion import MODEL, Promote
from modelpress.operator.status import (
    PROMOTED,
    VERIFICATION_FAILED,
    VERIFYING,
    with_condition,
)
from modelpress.store import Store, open_store, sha256_of

# What a run publishes as its model, by fixed name: the model and, when it has one, its
# external data. Nothing else is staged, so nothing else is promoted.
STAGED_FILES = (MODEL, f"{MODEL}.data")
# How far a verified figure may lie from the run's own before the status says they differ:
# sizes and the metric are deterministic; timings vary from run to run.
_EXACT_TOLERANCE = 1e-4
_TIMING_TOLERANCE = 0.25


class NothingToStage(Exception):
    """The job's output holds no model to stage: final, the promotion is Rejected."""


@dataclass(frozen=True)
class StageCandidate:
    """Copy the run's model files from the job's `output` to `candidate` (a platform
    prefix), hashing them; the verification run will publish to `verified`."""

    output: str
    candidate: str
    verified: str


@dataclass(frozen=True)
class SubmitVerification:
    request: VerificationRequest


VerifyAction: TypeAlias = StageCandidate | SubmitVerification


@dataclass(frozen=True)
class Observed:
    """What the controller saw of a verification run: its state (None: the backend could
    not be asked, `problem` says why), and once it succeeded the figures it published (or
    why they could not be read)."""

    run: RunState | None = None
    results: Results | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Judging:
    """A succeeded job whose run left no record of its own, as the reconciler judges it."""

    job: CompressionJob
    uid: str
    annotations: Mapping[str, str]
    kserve_enabled: bool
    output: str  # the job's output: where its run published
    prefix: str  # MODELPRESS_VERIFY_PREFIX
    now: datetime


def locations(prefix: str, namespace: str, uid: str) -> tuple[str, str]:
    """Where a job's candidate is staged and where its verification run publishes."""
    base = f"{prefix.rstrip('/')}/{namespace}/{uid}/"
    return base + "candidate/", base + "verified/"


def judge(judging: Judging, status: CompressionStatus, observed: Observed | None
          ) -> tuple[CompressionStatus, list[Promote | VerifyAction]]:
    """The next step of a succeeded job's verified promotion (see the module's docstring)."""
    verification = status.verification
    if verification is None:
        return _start(judging, status)
    if verification.phase == "Succeeded":
        return _decide(judging, status, verification)
    if verification.phase == "Failed":
        return _rejected(status, verification.message or "the verification failed",
                         judging.now), []
    if verification.phase == "Staged":
        request = VerificationRequest(key=judging.uid, job=judging.job,
                                      candidate=verification.candidate,
                                      output=verification.output)
        return _verifying(status, f"model staged at {verification.candidate.uri}; submitting "
                          "its verification run", judging.now), [SubmitVerification(request)]
    return _follow(judging, status, verification, observed or Observed())


def _start(judging: Judging, status: CompressionStatus
           ) -> tuple[CompressionStatus, list[Promote | VerifyAction]]:
    """Judge the run's own figures first (a job they fail, or one with nothing to promote,
    needs no verification); otherwise stage its model."""
    spec = judging.job.spec
    unverified = {MODEL: "unverified"}  # stands in for a record, to ask what decide would do
    after, actions = promotion.decide(status, spec.promotion, judging.annotations,
                                      judging.kserve_enabled, judging.output,
                                      judging.job.metadata.namespace, judging.now, unverified)
    promotes = [action for action in actions if type(action) is Promote]
    if not promotes:
        return after, list(actions)
    problem = unverifiable(judging.job, promotes)
    if problem:
        return _rejected(after, f"{problem}; nothing was promoted", judging.now), []
    candidate, verified = locations(judging.prefix, judging.job.metadata.namespace,
                                    judging.uid)
    message = ("the run's own figures pass the gates; its model is staged and measured again "
               "in the platform's namespace before anything is promoted")
    return _verifying(after, message, judging.now), [
        StageCandidate(output=judging.output, candidate=candidate, verified=verified)]


def unverifiable(job: CompressionJob, promotes: list[Promote]) -> str | None:
    """Why the platform will not verify this job's model, or None. A text-generation model
    is an onnxruntime-genai folder, which staging and the candidate step do not take yet; an
    InferenceService must be pointed at promotion.target, where the verified bytes are
    copied, never at the platform's staging prefix."""
    if job.spec.model.task == TEXT_GENERATION:
        return ("the platform cannot verify a text-generation model (an onnxruntime-genai "
                "folder) yet")
    if any(action.inference_service and action.target is None for action in promotes):
        return ("an InferenceService is pointed at spec.promotion.target, where the verified "
                "model is copied, and none is set")
    return None


def _follow(judging: Judging, status: CompressionStatus, verification: VerificationStatus,
            observed: Observed) -> tuple[CompressionStatus, list[Promote | VerifyAction]]:
    run, now = observed.run, judging.now
    if run is None:
        problem = observed.problem or "not polled yet"
        return _verifying(status, f"verification run {verification.run_id}: {problem}",
                          now), []
    if run.phase in ("Pending", "Running"):
        return _verifying(status, f"verification run {run.run_id} is {run.phase.lower()} in "
                          "the platform's namespace", now), []
    if run.phase != "Succeeded":
        why = run.message or "no message"
        step = f" (step {run.failed_step})" if run.failed_step else ""
        return _failed(status, verification, f"verification run {run.run_id} ended "
                       f"{run.phase}{step}: {why}; nothing was promoted", now), []
    if observed.results is None:
        return _failed(status, verification, f"verification run {run.run_id} succeeded but "
                       f"its results.json could not be read: {observed.problem}; nothing was "
                       "promoted", now), []
    assert status.results is not None  # the job's run succeeded
    done = verification.model_copy(update={
        "phase": "Succeeded", "message": f"measured by run {run.run_id}",
        "reported": _figures(status.results)})
    status = status.model_copy(update={
        "results": observed.results, "verification": done,
        "artifacts": {**status.artifacts, "verified": verification.output}})
    return _decide(judging, status, done)


def _decide(judging: Judging, status: CompressionStatus, verification: VerificationStatus
            ) -> tuple[CompressionStatus, list[Promote | VerifyAction]]:
    """The gates on the verified figures (status.results); the staged candidate is what a
    promotion copies, checked against the operator's own record of it."""
    spec, staged = judging.job.spec, verification.candidate
    status, actions = promotion.decide(status, spec.promotion, judging.annotations,
                                       judging.kserve_enabled, staged.uri,
                                       judging.job.metadata.namespace, judging.now,
                                       staged.sha256)
    assert status.promotion is not None and status.results is not None
    notes = ["judged on the figures the platform measured of the staged model"]
    if verification.reported is not None:
        notes += differences(verification.reported, status.results)
    status = status.model_copy(update={"promotion": status.promotion.model_copy(
        update={"reasons": [*status.promotion.reasons, *notes]})})
    return status, list(actions)


def differences(reported: ReportedFigures, verified: Results) -> list[str]:
    """A line for each headline figure the run reported that the platform did not measure."""
    lines = []
    for name, ours, theirs, tolerance in (
            ("compressionRatio", verified.compression_ratio, reported.compression_ratio,
             _EXACT_TOLERANCE),
            ("accuracyDrop", verified.accuracy_drop, reported.accuracy_drop, _EXACT_TOLERANCE),
            *((f"speedup.{pool}", verified.speedup.get(pool, math.nan), value,
               _TIMING_TOLERANCE) for pool, value in reported.speedup.items())):
        if not math.isclose(ours, theirs, rel_tol=tolerance, abs_tol=_EXACT_TOLERANCE):
            lines.append(f"the run reported {name} {theirs:g} but the platform measured "
                         f"{ours:g}")
    return lines


def _figures(results: Results) -> ReportedFigures:
    return ReportedFigures(compression_ratio=results.compression_ratio,
                           accuracy_drop=results.accuracy_drop, speedup=dict(results.speedup))


def _verifying(status: CompressionStatus, message: str, now: datetime) -> CompressionStatus:
    assert status.promotion is not None
    status = status.model_copy(update={"promotion": status.promotion.model_copy(
        update={"decision": "Pending"})})
    return with_condition(status, PROMOTED, "Unknown", VERIFYING, message, now)


def _failed(status: CompressionStatus, verification: VerificationStatus, message: str,
            now: datetime) -> CompressionStatus:
    status = status.model_copy(update={"verification": verification.model_copy(
        update={"phase": "Failed", "message": message})})
    return _rejected(status, message, now)


def _rejected(status: CompressionStatus, message: str, now: datetime) -> CompressionStatus:
    reasons = [reason for reason in (status.promotion.reasons if status.promotion else [])
               if reason != "the job has not finished"]
    return promotion.rejected(status, VERIFICATION_FAILED, [*reasons, message], now)


# --------------------------------------------------------------- the controller's side


def staged(status: CompressionStatus, candidate: StagedCandidate, verified: str,
           now: datetime) -> CompressionStatus:
    """The model is staged: the operator's record goes into status.verification."""
    verification = VerificationStatus(phase="Staged", candidate=candidate, output=verified)
    status = status.model_copy(update={"verification": verification})
    return _verifying(status, f"model staged at {candidate.uri}", now)


def submitted(status: CompressionStatus, run_id: str, now: datetime) -> CompressionStatus:
    assert status.verification is not None
    status = status.model_copy(update={"verification": status.verification.model_copy(
        update={"phase": "Running", "run_id": run_id})})
    return _verifying(status, f"verification run {run_id} submitted to the platform's "
                      "namespace", now)


def refused(status: CompressionStatus, problem: str, now: datetime) -> CompressionStatus:
    """Staging or submitting was refused for good (no model to stage, a model the platform
    will not run): Rejected, nothing copied."""
    message = f"the platform could not verify the run's model: {problem}; nothing was promoted"
    if status.verification is not None:
        return _failed(status, status.verification, message, now)
    return _rejected(status, message, now)


def retrying(status: CompressionStatus, problem: str, now: datetime) -> CompressionStatus:
    """A staging copy or a submission failed for now: still Pending, tried again."""
    return _verifying(status, f"verification could not proceed (will retry): {problem}", now)


def stage_candidate(output: str, candidate: str,
                    opener: Callable[[str], Store] = open_store) -> StagedCandidate:
    """Copy the run's model files (STAGED_FILES, the data file when present) from the job's
    `output` to `candidate`, the sha256 taken of the very bytes written: the operator's own
    record. NothingToStage when the output holds no model."""
    source, destination = opener(output), opener(candidate)
    if not source.exists(MODEL):
        raise NothingToStage(f"{source.uri(MODEL)} does not exist")
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="modelpress-stage-") as scratch:
        for key in STAGED_FILES:
            if key != MODEL and not source.exists(key):
                continue
            local = source.get_file(key, Path(scratch) / key)
            digests[key] = sha256_of(local)
            destination.put_file(local, key)
    return StagedCandidate(uri=candidate, sha256=digests)
