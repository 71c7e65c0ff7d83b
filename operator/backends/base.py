"""What every run backend offers the operator, and what it reports about a run.

A backend starts, observes and stops pipeline runs; it never decides anything about a job.
Its answers are plain values (`RunState`) so the reconciler can stay pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

from modelpress.api import CompressionJob, StagedCandidate, StepStatus

RunPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Canceled", "Lost"]
TERMINAL_RUN_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed", "Canceled", "Lost"})


class BackendError(Exception):
    """The backend could not be reached or refused a request; worth retrying later."""


@dataclass(frozen=True)
class RunState:
    """One observation of a run. `Lost`: the backend has no record of it any more.

    `recorded`: the sha256 of each file a succeeded run published (model.onnx,
    results.json, ...), by name, from the run's own record, kept where the job's tenant
    cannot write; empty when the backend keeps none. The operator trusts what it reads from
    the output only as far as it matches these."""

    run_id: str
    phase: RunPhase
    steps: list[StepStatus] = field(default_factory=list)
    failed_step: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    recorded: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunRequest:
    """Everything a backend needs to start a job's run.

    `key` is stable for one job (its uid): submitting the same key twice returns the run
    already started, which is what makes a crash between submit and status write safe.
    """

    key: str
    job: CompressionJob
    output: str


@dataclass(frozen=True)
class VerificationRequest:
    """A verification run (docs/verification.md): measure `candidate`, the model files the
    operator staged from job `key`'s run, as `job`'s compressed model; publish to `output`
    (a platform prefix). Submitting the same key twice returns the run already started."""

    key: str
    job: CompressionJob
    candidate: StagedCandidate
    output: str


@runtime_checkable
class Verifier(Protocol):
    """A backend that can re-measure a run's model in the platform's namespace, with the
    platform's credentials (the Kubeflow Pipelines backend)."""

    def submit_verification(self, request: VerificationRequest) -> str:
        """Start the verification run (or find the one already started); its id."""
        ...

    def poll(self, run_id: str) -> RunState: ...

    def terminate(self, run_id: str) -> None: ...


class Backend(Protocol):
    @property
    def name(self) -> Literal["kfp", "local"]:
        """Which backend this is (read-only, so each may narrow it to its own name)."""
        ...

    def submit(self, request: RunRequest) -> str:
        """Start the run (or find the one already started for `request.key`); its id."""
        ...

    def poll(self, run_id: str) -> RunState: ...

    def terminate(self, run_id: str) -> None: ...

    def has_capacity(self) -> bool:
        """Whether one more run may start under the operator's cap on runs in flight."""
        ...

    def runs_in_namespace(self, namespace: str) -> int:
        """Runs in flight of jobs in `namespace` (for the per-namespace cap)."""
        ...
