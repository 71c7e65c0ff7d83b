"""The controller: observe a job's run, reconcile, perform the actions, return the patch.

This is the plumbing around the pure reconciler. It knows nothing about kopf (the handlers
hand it a `JobView` and an event sink, and apply the status patch it returns), so it is
tested with a fake backend and plain callables.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from modelpress.api import CompressionStatus, RegisteredVersion, StagedCandidate
from modelpress.errors import InvalidInput, ModelpressError
from modelpress.operator import kserve, promotion, verify
from modelpress.operator.backends.base import Backend, BackendError, RunState, Verifier
from modelpress.operator.kserve import PromotionRefused
from modelpress.operator.metrics import JobKey, OperatorMetrics
from modelpress.operator.promotion import CanaryStep, DigestMismatch, Promote
from modelpress.operator.reconcile import (
    FINALIZER,
    TERMINAL_PHASES,
    Action,
    Checked,
    Config,
    EmitEvent,
    JobView,
    Observation,
    RunResults,
    SubmitRun,
    TerminateRun,
    checked,
    finalize,
    output_of,
    reconcile,
    transition_events,
)
from modelpress.operator.scheduling import Waiting, waiting_for
from modelpress.operator.status import (
    DIGEST_MISMATCH,
    QUEUED,
    REGISTRY_REFUSED,
    SUCCEEDED,
    TERMINATED,
    Rollout,
    parse_status,
    promoted,
    promotion_failed,
    promotion_refused,
    rolled_out,
    status_patch,
    submit_failed,
    submitted,
)
from modelpress.records import read_results_with_digest
from modelpress.registry import (
    ModelRegistry,
    RegistryUnavailable,
    open_registry,
    preflight,
    register,
    registration_of,
)
from modelpress.tenancy import DEFAULT_REGISTRY_MODELS, registered_model_refused

EventSink = Callable[[str, str, str], None]  # (type, reason, message)
# For how long "every slot is taken" (overall, or in one namespace) is believed without
# asking the backend again. A run this operator sees end forgets it at once; this bounds
# the wait for slots freed elsewhere.
FULL_FOR_SECONDS = 0.25


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def view_of(body: Mapping[str, Any]) -> JobView:
    """A JobView of a CompressionJob body as kopf (or the API) gives it."""
    metadata = body.get("metadata", {})
    return JobView(namespace=metadata.get("namespace", "default"), name=metadata["name"],
                   uid=metadata.get("uid", ""), generation=int(metadata.get("generation", 1)),
                   resource_version=str(metadata.get("resourceVersion", "")),
                   spec=dict(body.get("spec") or {}), status=dict(body.get("status") or {}),
                   annotations=dict(metadata.get("annotations") or {}),
                   has_finalizer=FINALIZER in (metadata.get("finalizers") or []))


def read_results(output: str) -> RunResults:
    """results.json from a run's output store (what the report step publishes last), read
    with the same reader as the CLI's, with the sha256 of the bytes read."""
    document, digest = read_results_with_digest(output)
    return RunResults(results=document.results, artifacts=document.artifacts.to_wire(),
                      steps=document.steps, sha256=digest)


class Controller:
    def __init__(self, backend: Backend, config: Config, metrics: OperatorMetrics, *,
                 results_reader: Callable[[str], RunResults] = read_results,
                 kserve_api: Any = None,
                 copier: Callable[[str, str, Mapping[str, str]], None] = (
                     promotion.copy_to_target),
                 clock: Callable[[], datetime] = utc_now,
                 monotonic: Callable[[], float] = time.monotonic,
                 registry_models: Sequence[str] = DEFAULT_REGISTRY_MODELS,
                 registry_opener: Callable[[], ModelRegistry] = open_registry,
                 verifier: Verifier | None = None,
                 stager: Callable[[str, str], StagedCandidate] = verify.stage_candidate
                 ) -> None:
        self.backend = backend
        # Re-measures a run's model in the platform's namespace when its backend keeps no
        # record of its own (operator.verify; config.verify_prefix set).
        self._verifier = verifier
        self._stage_candidate = stager
        self.config = config
        self.metrics = metrics
        self._read_results = results_reader
        self._kserve_api = kserve_api
        self._copy = copier
        self._clock = clock
        self._monotonic = monotonic
        # The registered models each namespace's jobs may name (MODELPRESS_REGISTRY_MODELS).
        self._registry_models = tuple(registry_models)
        self._open_registry = registry_opener
        self._full_until = 0.0  # monotonic time until which no slot is free, as last seen
        # The same for each namespace at its own cap on runs in flight.
        self._namespace_full_until: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # Admission (capacity check + submit) is one critical section across all jobs.
        self._admission = threading.Lock()
        # The status last written for each job (by uid), and the resourceVersion of the
        # body it was computed from. kopf's view of an object lags behind a patch until
        # the watch delivers it; a body we already acted on is stale, so the status
        # written then is the one to continue from (no run submitted twice, no event
        # repeated).
        self._written: dict[str, tuple[str, dict[str, Any]]] = {}
        # Jobs whose phase this process has put in the metrics (a sync or an intake did).
        self._recorded: set[str] = set()
        # Each job's spec parsed (or the line saying why it is invalid), by uid, with the
        # generation it was parsed at: a spec changes only with its generation, and
        # validating hundreds of jobs on every poll costs the operator its responsiveness.
        self._parsed: dict[str, tuple[int, Checked]] = {}

    def sync(self, job: JobView, emit: EventSink) -> dict[str, Any]:
        """Bring `job` one step closer to done; the status merge patch ({} when unchanged)."""
        if self._still_queued(job):
            return {}
        with self._lock_for(job.uid):
            current = self._freshest(job)
            before = parse_status(current.status)
            if before.run_id is None:
                with self._admission:
                    after = self._step(current, emit)
            else:
                after = self._step(current, emit)
            self.metrics.record(self._key(job), before, after)
            if after.phase in TERMINAL_PHASES and before.run_id is not None \
                    and before.phase not in TERMINAL_PHASES:
                self._slot_freed(job.namespace)
            self._remember(job, after)
            self._recorded.add(job.uid)
            return status_patch(job.status, after)

    def observed(self, job: JobView) -> None:
        """A job this process sees for the first time (given its first status by the
        intake process, or after a restart): its phase goes into the metrics as it is."""
        status = parse_status(job.status)
        self.metrics.record(self._key(job), status, status)
        self._recorded.add(job.uid)

    def delete(self, job: JobView, emit: EventSink) -> None:
        """The finalizer: terminate a run still in flight, drop the job's metric series."""
        with self._lock_for(job.uid):
            job = self._freshest(job)
            status = parse_status(job.status)
            for action in finalize(job):
                self._perform(action, status, job, emit)
                self._slot_freed(job.namespace)
        self.forget(job)

    def forget(self, job: JobView) -> None:
        """Drop what this process keeps about a deleted job (its metric series too)."""
        with self._lock_for(job.uid):
            self.metrics.forget(self._key(job))
            self._written.pop(job.uid, None)
            self._recorded.discard(job.uid)
            self._parsed.pop(job.uid, None)
        with self._locks_guard:
            self._locks.pop(job.uid, None)

    def record_error(self, job: JobView, error: BaseException) -> None:
        self.metrics.reconcile_error(job.namespace, error)

    # ----------------------------------------------------------------------- internals

    def _checked(self, job: JobView) -> Checked:
        """`checked(job)`, parsed once per (uid, generation); only the newest generation
        of each job is kept, and a deleted job's entry goes with it."""
        cached = self._parsed.get(job.uid)
        if cached is None or cached[0] != job.generation:
            cached = (job.generation, checked(job, self.config))
            self._parsed[job.uid] = cached
        return cached[1]

    def _step(self, job: JobView, emit: EventSink) -> CompressionStatus:
        decision = reconcile(job, self._checked(job), self._observe(job), self.config)
        status = decision.status
        for action in decision.actions:
            status = self._perform(action, status, job, emit)
        return status

    def _observe(self, job: JobView) -> Observation:
        now = self._clock()
        status = parse_status(job.status)
        if status.run_id is None and not job.has_finalizer:
            return Observation(now=now, slot_free=False)  # a deletion could not stop its run
        if status.run_id is None:
            return self._observe_capacity(now, job.namespace)
        if status.phase in TERMINAL_PHASES:
            return Observation(now=now, verification=self._observe_verification(status))
        try:
            run = self.backend.poll(status.run_id)
        except BackendError as error:
            return Observation(now=now, backend_error=str(error))
        if run.phase != "Succeeded":
            return Observation(now=now, run=run)
        output = status.artifacts.get("output") or self._output_from_spec(job)
        return self._observe_results(now, run, output)

    def _observe_capacity(self, now: datetime, namespace: str) -> Observation:
        """Whether a run may start under both caps: overall, then the namespace's (asked
        only when the first has room). Each full cap is remembered for FULL_FOR_SECONDS."""
        try:
            if not self.backend.has_capacity():
                self._full_until = self._monotonic() + FULL_FOR_SECONDS
                return Observation(now=now, slot_free=False)
            in_namespace = self.backend.runs_in_namespace(namespace)
        except BackendError as error:
            return Observation(now=now, slot_free=False, backend_error=str(error))
        if in_namespace >= self.config.max_runs_per_namespace:
            self._namespace_full_until[namespace] = self._monotonic() + FULL_FOR_SECONDS
            return Observation(now=now, slot_free=False)
        return Observation(now=now)

    def _slot_freed(self, namespace: str) -> None:
        """A run of `namespace` ended here: the next queued job may look for a slot."""
        self._full_until = 0.0
        self._namespace_full_until.pop(namespace, None)

    def _still_queued(self, job: JobView) -> bool:
        """A job left Queued (by this process: its metrics are recorded), its spec
        unchanged, while every slot is taken, overall or in its namespace.

        Such a sync has nothing to do. Every queued job's timer asks each poll interval,
        and each new job's create handler once; with hundreds queued, reconciling each
        (validating the spec, counting runs in flight under the admission lock) took the
        time new jobs need to be seen."""
        status = job.status or {}
        queued = (status.get("phase") == "Pending" and not status.get("runId")
                  and status.get("observedGeneration") == job.generation
                  and any(c.get("type") == SUCCEEDED and c.get("reason") == QUEUED
                          for c in status.get("conditions") or []))
        return queued and job.uid in self._recorded and self.slots_taken(job.namespace)

    def slots_taken(self, namespace: str | None = None) -> bool:
        """Whether every slot is known taken (as last seen, for FULL_FOR_SECONDS): overall,
        or, given a namespace, overall or in that namespace."""
        full_until = self._full_until
        if namespace is not None:
            full_until = max(full_until, self._namespace_full_until.get(namespace, 0.0))
        return self._monotonic() < full_until

    def _observe_results(self, now: datetime, run: RunState, output: str | None) -> Observation:
        if output is None:
            return Observation(now=now, run=run, results_error="the status names no output")
        try:
            return Observation(now=now, run=run, results=self._read_results(output))
        except (ModelpressError, OSError, ValueError, KeyError, ValidationError) as error:
            return Observation(now=now, run=run,
                               results_error=f"its results.json could not be read: {error}")

    def _observe_verification(self, status: CompressionStatus) -> verify.Observed | None:
        """The job's verification run while it is in flight, and once it succeeded the
        figures it published (read from the platform's prefix: no digest to compare)."""
        verification = status.verification
        if verification is None or verification.phase != "Running" \
                or verification.run_id is None or self._verifier is None:
            return None
        try:
            run = self._verifier.poll(verification.run_id)
        except BackendError as error:
            return verify.Observed(problem=str(error))
        if run.phase != "Succeeded":
            return verify.Observed(run=run)
        try:
            found = self._read_results(verification.output)
        except (ModelpressError, OSError, ValueError, KeyError, ValidationError) as error:
            return verify.Observed(run=run, problem=str(error))
        return verify.Observed(run=run, results=found.results)

    def _perform(self, action: Action, status: CompressionStatus, job: JobView,
                 emit: EventSink) -> CompressionStatus:
        if isinstance(action, EmitEvent):
            emit(action.type, action.reason, action.message)
            return status
        if isinstance(action, TerminateRun):
            stopper = self._verifier if action.verification else self.backend
            if stopper is not None:
                stopper.terminate(action.run_id)
                emit("Normal", TERMINATED, f"run {action.run_id} terminated: {action.why}")
            return status
        if isinstance(action, SubmitRun):
            after = self._submit(action, status, job)
        elif isinstance(action, verify.StageCandidate):
            after = self._stage(action, status, job)
        elif isinstance(action, verify.SubmitVerification):
            after = self._submit_verification(action, status, job)
        else:
            after = self._promotion_outcome(action, status, job)
        for event in transition_events(status, after):
            emit(event.type, event.reason, event.message)
        return after

    def _submit(self, action: SubmitRun, status: CompressionStatus,
                job: JobView) -> CompressionStatus:
        try:
            run_id = self.backend.submit(action.request)
        except BackendError as error:
            self.record_error(job, error)
            return submit_failed(status, str(error), self._clock())
        return submitted(status, run_id, self.backend.name, self._clock())

    def _stage(self, action: verify.StageCandidate, status: CompressionStatus,
               job: JobView) -> CompressionStatus:
        """Copy the run's model to the platform's candidate prefix, hashing it."""
        try:
            candidate = self._stage_candidate(action.output, action.candidate)
        except verify.NothingToStage as error:
            return verify.refused(status, str(error), self._clock())
        except Exception as error:  # a failed read or write is reported, and retried
            self.record_error(job, error)
            return verify.retrying(status, str(error) or type(error).__name__, self._clock())
        return verify.staged(status, candidate, action.verified, self._clock())

    def _submit_verification(self, action: verify.SubmitVerification,
                             status: CompressionStatus, job: JobView) -> CompressionStatus:
        if self._verifier is None:
            return verify.refused(status, "this operator's backend cannot run verifications",
                                  self._clock())
        try:
            run_id = self._verifier.submit_verification(action.request)
        except InvalidInput as error:  # a model the platform will not run (a program)
            return verify.refused(status, str(error), self._clock())
        except BackendError as error:
            self.record_error(job, error)
            return verify.retrying(status, str(error), self._clock())
        return verify.submitted(status, run_id, self._clock())

    def _promotion_outcome(self, action: Promote, status: CompressionStatus,
                           job: JobView) -> CompressionStatus:
        if isinstance(action, CanaryStep):
            return self._canary_outcome(action, status, job)
        recorded = status.promotion.sha256 if status.promotion else {}
        refusal = self._registry_refusal(job)
        if refusal:
            return promotion.rejected(status, REGISTRY_REFUSED, [refusal], self._clock())
        try:
            self._promote(action, job.namespace, recorded)
            registered = self._register(action.output, status, job, recorded)
        except PromotionRefused as error:
            return promotion_refused(status, str(error), self._clock())
        except DigestMismatch as error:  # final: retrying reads the same forged bytes
            return promotion.rejected(status, DIGEST_MISMATCH, [str(error)], self._clock())
        except RegistryUnavailable as error:
            self.record_error(job, error)
            return promotion.registry_unavailable(status, str(error), self._clock())
        except Exception as error:  # any failure of the copy or patch is reported, retried
            self.record_error(job, error)
            return promotion_failed(status, str(error) or type(error).__name__, self._clock())
        status = promoted(status, action.target, action.inference_service, self._clock())
        status = promotion.with_registered(status, registered, self._clock())
        if action.inference_service:  # copied or checked: now the rollout to the service
            return self._canary_outcome(self._first_step(action, job), status, job,
                                        verified=True)
        return status

    def _promote(self, action: Promote, namespace: str, recorded: Mapping[str, str]) -> None:
        """Copy what the run recorded (`recorded`: sha256 by file name), for a rollout; an
        InferenceService that has not opted in stops both. A service pointed at the output
        itself gets it only while the model there is the one the run recorded."""
        service = action.inference_service
        if service:
            kserve.opted_in_service(self._kserve_api, namespace, service)
        if action.target:
            self._copy(action.output, action.target, recorded)
        elif service:
            promotion.check_model(action.output, recorded)

    # ------------------------------------------------------------------ KServe rollout

    def _first_step(self, action: Promote, job: JobView) -> CanaryStep:
        parsed = self._checked(job)
        canary = None if isinstance(parsed, str) else parsed.spec.promotion.canary
        return promotion.first_step(action, canary)

    def _canary_outcome(self, step: CanaryStep, status: CompressionStatus, job: JobView,
                        verified: bool = False) -> CompressionStatus:
        """The status after bringing the InferenceService to `step` (see _roll_out)."""
        recorded = status.promotion.sha256 if status.promotion else {}
        try:
            rollout = self._roll_out(step, job, recorded, verified)
        except PromotionRefused as error:
            return promotion_refused(status, str(error), self._clock())
        except DigestMismatch as error:  # final: retrying reads the same forged bytes
            return promotion.rejected(status, DIGEST_MISMATCH, [str(error)], self._clock())
        except Exception as error:  # a failed read or patch is reported, and retried
            self.record_error(job, error)
            return promotion_failed(status, str(error) or type(error).__name__, self._clock())
        return rolled_out(status, rollout, self._clock())

    def _roll_out(self, step: CanaryStep, job: JobView, recorded: Mapping[str, str],
                  verified: bool) -> Rollout:
        """Read the service (it must have opted in), patch it when it is not where `step`
        asks, and say how far KServe got. Before a patch sends traffic to the model, its
        bytes are checked against the run's record (unless the caller just did)."""
        assert step.inference_service is not None
        name, reference = step.inference_service, f"{job.namespace}/{job.name}"
        service = kserve.opted_in_service(self._kserve_api, job.namespace, name)
        change = kserve.rollout_change(service, step, reference)
        if change.patch is None:
            return kserve.observed_rollout(service, step, reference, change.stable_uri)
        if step.state != "RolledBack" and not verified:
            promotion.check_model(step.uri, recorded)
        self._kserve_api.patch_namespaced_custom_object(
            kserve.KSERVE_GROUP, kserve.KSERVE_VERSION, job.namespace,
            kserve.KSERVE_PLURAL, name, change.patch)
        return kserve.applied_rollout(step, change.stable_uri)

    def _registry_refusal(self, job: JobView) -> str | None:
        """Why the job's spec.promotion.registry may not be used from here (a registered
        model outside its namespace's, no registry configured), or None."""
        parsed = self._checked(job)
        target = None if isinstance(parsed, str) else parsed.spec.promotion.registry
        if target is None:
            return None
        refused = registered_model_refused(target.model, job.namespace, self._registry_models)
        if refused:
            return refused
        try:
            preflight()
        except InvalidInput as error:
            return str(error)
        return None

    def _register(self, output: str, status: CompressionStatus, job: JobView,
                  recorded: Mapping[str, str]) -> RegisteredVersion | None:
        """The job's model, read back and digest-verified, registered as spec.promotion
        .registry says (keyed by the job's uid, so a retry makes no second version)."""
        parsed = self._checked(job)
        if isinstance(parsed, str) or parsed.spec.promotion.registry is None:
            return None
        target = parsed.spec.promotion.registry
        assert status.results is not None  # a promotion follows a succeeded run
        with tempfile.TemporaryDirectory(prefix="modelpress-register-") as scratch:
            files = promotion.stage_verified(output, recorded, Path(scratch))
            registration = registration_of(parsed, job.uid, files, recorded, status.results)
            return register(self._open_registry(), target, registration)

    def _output_from_spec(self, job: JobView) -> str | None:
        parsed = self._checked(job)
        return None if isinstance(parsed, str) else output_of(parsed, self.config)

    def _freshest(self, job: JobView) -> JobView:
        written = self._written.get(job.uid)
        if written is None or written[0] != job.resource_version:
            return job
        return replace(job, status=written[1])

    def _remember(self, job: JobView, after: CompressionStatus) -> None:
        """Keep the status written (see _freshest) and the parsed spec of a job that will
        change again; a settled one's go (it is synced again only after an edit, which
        brings a new generation and a fresh body), so memory follows the jobs in flight."""
        wire = after.to_wire()
        if waiting_for(wire) is Waiting.EDIT:
            self._written.pop(job.uid, None)
            self._parsed.pop(job.uid, None)
        else:
            self._written[job.uid] = (job.resource_version, wire)

    def _lock_for(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    @staticmethod
    def _key(job: JobView) -> JobKey:
        model = job.spec.get("model") if isinstance(job.spec.get("model"), Mapping) else {}
        return JobKey(job.namespace, job.name, str((model or {}).get("uri", "")))
