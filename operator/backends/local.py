"""The local backend: each run is a detached worker process running the pipeline through
kfp.local, with everything about the run kept in its folder.

A run folder holds `request.json` (job, output, runner), `worker.json` (pid, start time),
`events.jsonl` (the steps' progress events, read with `modelpress.events`), `exit.json`
(how the run ended), `canceled` (written before a terminate) and `worker.log`. Run state
is read back from those files alone, so a restarted operator finds its runs again and
never starts one twice: the folder is named after the job's uid and claimed with an
atomic mkdir.

Workers run in their own session: they outlive an operator restart, and terminating one
kills its whole process group (kfp.local's step subprocesses included). They run at a lower
CPU priority than the operator (`worker_niceness` above its own; their step subprocesses
inherit it), the way a cluster keeps its control plane apart from its workloads: tenant
work never starves the loop that gives new jobs their status.

`python -m modelpress.operator.backends.local RUN_FOLDER` is the worker's entry point.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from modelpress.api import CompressionJob, StepStatus
from modelpress.errors import StepFailed
from modelpress.events import ProgressEvent, failed_step, failure_message, read_events
from modelpress.operator.backends.base import RunRequest, RunState
from modelpress.records import ReportRecord

DEFAULT_RUNNER = "modelpress.pipelines.local:run_local"
TERMINATE_GRACE_SECONDS = 5.0
# A run folder without a worker after this long was claimed by an operator that died
# before it could start the worker.
START_TIMEOUT_SECONDS = 60.0
# How much lower than the operator's the workers' CPU priority is (nice(1) steps).
DEFAULT_WORKER_NICENESS = 10
LOWEST_PRIORITY = 19  # the largest nice value


class _Record(BaseModel):
    """A file of the run folder: written by one process, read by another."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class RequestRecord(_Record):
    """request.json: what the worker runs."""

    job: CompressionJob
    output: str
    runner: str
    trust_model_code: bool = False  # the operator's MODELPRESS_TRUST_MODEL_CODE


class WorkerRecord(_Record):
    """worker.json: the worker process, written once it started."""

    pid: int
    started_at: float


class ExitRecord(_Record):
    """exit.json: how the run ended, written by the worker as its last act. A succeeded
    run's `sha256` is the report step's record of each file it published: the run's own
    record, in the operator's run folder, which the job's tenant cannot write."""

    phase: Literal["Succeeded", "Failed"]
    step: str | None = None
    message: str | None = None
    finished_at: float
    sha256: dict[str, str] = {}


class LocalBackend:
    name: Literal["local"] = "local"

    def __init__(self, workdir: Path, max_runs: int, runner: str = DEFAULT_RUNNER, *,
                 trust_model_code: bool = False,
                 worker_niceness: int = DEFAULT_WORKER_NICENESS) -> None:
        self.workdir = workdir.resolve()
        self.max_runs = max_runs
        self.runner = runner
        self.trust_model_code = trust_model_code
        self.worker_niceness = worker_niceness
        self._workers: dict[str, subprocess.Popen[bytes]] = {}
        # Runs that may be in flight: found by one look through the workdir (runs started
        # before a restart), then kept up to date here, so counting them costs in
        # proportion to the runs in flight, not to every run folder ever made.
        self._maybe_live: set[str] | None = None
        self._namespaces: dict[str, str] = {}  # run folder -> its job's namespace
        self.workdir.mkdir(parents=True, exist_ok=True)

    def submit(self, request: RunRequest) -> str:
        run_id = "local-" + re.sub(r"[^A-Za-z0-9-]", "-", request.key)
        folder = self.workdir / run_id
        try:
            folder.mkdir()
        except FileExistsError:
            return run_id  # already started for this job (e.g. before an operator restart)
        _write_record(folder / "request.json", RequestRecord(
            job=request.job, output=request.output, runner=self.runner,
            trust_model_code=self.trust_model_code))
        with (folder / "worker.log").open("ab") as log:
            # cwd: the run folder, never a checkout whose operator/ would shadow the
            # standard library's `operator` on the `-m` path.
            worker = subprocess.Popen(
                [sys.executable, "-m", __name__, str(folder)], cwd=folder,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        _lower_priority(worker.pid, self.worker_niceness)
        self._workers[run_id] = worker
        self._live_run_ids().add(run_id)
        _write_record(folder / "worker.json", WorkerRecord(pid=worker.pid,
                                                           started_at=time.time()))
        return run_id

    def poll(self, run_id: str) -> RunState:
        folder = self.workdir / run_id
        if not (folder / "request.json").is_file():
            return RunState(run_id=run_id, phase="Lost")
        events = read_events(folder / "events.jsonl")
        steps = steps_from_events(events)
        worker = _read_record(folder / "worker.json", WorkerRecord)
        started = _time(worker.started_at) if worker else None
        ended = _read_record(folder / "exit.json", ExitRecord)
        if (folder / "canceled").exists():
            return RunState(run_id, "Canceled", steps, started_at=started,
                            finished_at=_time(ended.finished_at) if ended else None)
        if ended is not None:
            self._reap(run_id)
            return RunState(run_id, ended.phase, steps, failed_step=ended.step,
                            message=ended.message, started_at=started,
                            finished_at=_time(ended.finished_at), recorded=ended.sha256)
        if worker is None:
            return _not_started(run_id, folder)
        if self._alive(run_id, worker.pid):
            return RunState(run_id, "Running", steps, started_at=started)
        return _died(run_id, folder, events, steps, started)

    def terminate(self, run_id: str) -> None:
        folder = self.workdir / run_id
        if not folder.is_dir() or (folder / "exit.json").exists():
            return
        (folder / "canceled").touch()
        worker = _read_record(folder / "worker.json", WorkerRecord)
        if worker is None:
            return
        _signal_group(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        while self._alive(run_id, worker.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_group(worker.pid, signal.SIGKILL)
        self._reap(run_id)

    def has_capacity(self) -> bool:
        return self.runs_in_flight() < self.max_runs

    def runs_in_flight(self) -> int:
        """Live workers. Called for every queued job admitted, so ended runs cost nothing."""
        return sum(1 for _ in self._live_runs())

    def runs_in_namespace(self, namespace: str) -> int:
        return sum(1 for folder in self._live_runs() if self._namespace_of(folder) == namespace)

    def _live_runs(self) -> Iterator[Path]:
        live = self._live_run_ids()
        for run_id in list(live):
            folder = self.workdir / run_id
            if (folder / "exit.json").exists():
                live.discard(run_id)
                continue
            worker = _read_record(folder / "worker.json", WorkerRecord)
            if worker is None:
                continue  # being started (counted as it was before a restart: not yet)
            if self._alive(run_id, worker.pid):
                yield folder
            else:
                live.discard(run_id)

    def _live_run_ids(self) -> set[str]:
        if self._maybe_live is None:
            self._maybe_live = {folder.name for folder in self.workdir.iterdir()
                                if folder.is_dir() and not (folder / "exit.json").exists()}
        return self._maybe_live

    def _namespace_of(self, folder: Path) -> str | None:
        """The namespace of the job a run folder holds, read once (it never changes)."""
        if folder.name not in self._namespaces:
            request = _read_record(folder / "request.json", RequestRecord)
            if request is None:
                return None
            self._namespaces[folder.name] = request.job.metadata.namespace
        return self._namespaces[folder.name]

    def _reap(self, run_id: str) -> None:
        """Wait for a finished worker of ours, so it leaves no zombie and no Popen behind."""
        child = self._workers.pop(run_id, None)
        if child is not None:
            child.wait(timeout=TERMINATE_GRACE_SECONDS)

    def _alive(self, run_id: str, pid: int) -> bool:
        child = self._workers.get(run_id)
        if child is None:
            return _process_runs(pid, str(self.workdir / run_id))
        if child.poll() is None:  # poll() also reaps it, so it never lingers as a zombie
            return True
        del self._workers[run_id]
        return False


def _died(run_id: str, folder: Path, events: list[ProgressEvent], steps: list[StepStatus],
          started: datetime | None) -> RunState:
    """The worker is gone without an exit.json: killed, or out of memory. The step it was
    in is the one that started and never finished."""
    problem = failure_message(events) or "the worker process ended without recording an " \
        f"outcome (see {folder / 'worker.log'})"
    return RunState(run_id, "Failed", steps, failed_step=failed_step(events), message=problem,
                    started_at=started)


def _not_started(run_id: str, folder: Path) -> RunState:
    if time.time() - folder.stat().st_mtime < START_TIMEOUT_SECONDS:
        return RunState(run_id=run_id, phase="Pending")
    return RunState(run_id=run_id, phase="Failed",
                    message="the worker never started (the operator stopped while starting it)")


def _process_runs(pid: int, folder: str) -> bool:
    """Whether `pid` is still the worker of `folder` (not a recycled pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True
    return folder in cmdline.read_bytes().decode(errors="replace").split("\0")


def _lower_priority(pid: int, niceness: int) -> None:
    """Give a worker just started `niceness` more than the operator's own. Done from here,
    right after exec (Popen has returned), rather than in a preexec_fn, which is unsafe in a
    process with threads; the worker's interpreter start-up is its costliest part for a short
    run, and runs already at the lower priority."""
    if niceness <= 0:
        return
    own = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        os.setpriority(os.PRIO_PROCESS, pid, min(LOWEST_PRIORITY, own + niceness))
    except ProcessLookupError:
        pass  # it already ended: poll() reports how


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def steps_from_events(events: list[ProgressEvent]) -> list[StepStatus]:
    """Step states from the progress events; a repeated step name starts a new entry."""
    steps: list[StepStatus] = []
    for event in events:
        when = _time(event.time)
        if event.event == "started":
            steps.append(StepStatus(name=event.step, phase="Running", started_at=when))
            continue
        index = next((i for i in range(len(steps) - 1, -1, -1)
                      if steps[i].name == event.step and steps[i].phase == "Running"), None)
        finished = event.event == "finished"
        update: dict[str, Any] = {"phase": "Succeeded" if finished else "Failed",
                                  "finished_at": when, "message": event.message or None}
        if finished:
            update["duration_seconds"] = round(event.seconds or 0.0, 3)
        if index is None:
            steps.append(StepStatus(name=event.step, **update))
        else:
            steps[index] = steps[index].model_copy(update=update)
    return steps


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


R = TypeVar("R", bound=_Record)


def _read_record(path: Path, record: type[R]) -> R | None:
    """The record in `path`, or None when it is not there (yet) or not one."""
    try:
        return record.model_validate_json(path.read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def _write_record(path: Path, record: _Record) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(record.model_dump_json(by_alias=True, exclude_none=True),
                       encoding="utf-8")
    os.replace(partial, path)


# ------------------------------------------------------------------------------ worker


def run_worker(folder: Path) -> int:
    """Run the pipeline of the request in `folder`; record how it ended in exit.json, with
    the digests of what a succeeded run published (the runner returns its ReportRecord)."""
    request = RequestRecord.model_validate_json((folder / "request.json").read_bytes())
    module, _, function = request.runner.partition(":")
    runner = getattr(importlib.import_module(module), function)
    try:
        record: ReportRecord = runner(request.job, request.output, folder / "work",
                                      folder / "events.jsonl",
                                      trust_model_code=request.trust_model_code)
        outcome = ExitRecord(phase="Succeeded", sha256=record.sha256, finished_at=time.time())
    except StepFailed as error:
        outcome = ExitRecord(phase="Failed", step=error.step, message=error.problem,
                             finished_at=time.time())
    except Exception as error:  # the worker's whole job is to report any failure
        outcome = ExitRecord(phase="Failed", message=f"{type(error).__name__}: {error}",
                             finished_at=time.time())
    _write_record(folder / "exit.json", outcome)
    return 0 if outcome.phase == "Succeeded" else 1


if __name__ == "__main__":
    sys.exit(run_worker(Path(sys.argv[1])))
