"""Run a job's pipeline on this machine with kfp.local (each step in its own process)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from modelpress.api import CompressionJob
from modelpress.errors import StepFailed
from modelpress.events import EVENTS_ENV, capped, failed_step, failure_message, read_events
from modelpress.pipelines.build import build_pipeline
from modelpress.records import ReportRecord, read_ledger, records_of
from modelpress.settings import get_settings

# How long a step may take to end after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 3.0


def run_local(job: CompressionJob, output: str, workdir: Path, events: Path, *,
              trust_model_code: bool = False) -> ReportRecord:
    """Run the whole pipeline; returns the report step's record (where it published what,
    with each file's sha256). Raises StepFailed on failure, with the step's own error and the
    path of the kept log. `trust_model_code`: whether the model may be a program
    (modelpress.trust)."""
    from kfp import local

    adopt_orphans()
    (workdir / "workspace").mkdir(parents=True, exist_ok=True)
    # Both roots inside the run's scratch: kfp.local would otherwise leave a workspace
    # folder in the system's temporary folder after every run.
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(workdir / "pipeline_root"),
               workspace_root=str(workdir / "workspace"), raise_on_error=True)
    pipeline = build_pipeline(job, output, trust_model_code=trust_model_code)
    log = io.StringIO()
    try:
        with _step_environment(workdir, events), contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            pipeline()
    except RuntimeError:
        kept = keep_log(job.metadata.name, log.getvalue())
        raise StepFailed(failed_step(read_events(events)) or "pipeline",
                         f"{_problem(events, log.getvalue())} (log: {kept})") from None
    return report_record(workdir / "pipeline_root")


def report_record(pipeline_root: Path) -> ReportRecord:
    """The report step's record, from the ledger it left among the run's step outputs
    (kfp.local keeps them under the pipeline root, in this run's own scratch)."""
    for ledger in sorted(pipeline_root.rglob("ledger")):
        found = records_of(read_ledger(ledger), ReportRecord) if ledger.is_file() else []
        if found:
            return found[-1]
    raise StepFailed("report", f"the run left no report record under {pipeline_root}")


@contextlib.contextmanager
def _step_environment(workdir: Path, events: Path) -> Iterator[None]:
    """What every step process inherits: the events file, safe import paths (from a
    checkout, operator/ would shadow the standard library's module), and a temporary
    folder inside the run's scratch, so stopping a run removes what its steps left."""
    temporary = workdir / "tmp"
    temporary.mkdir(exist_ok=True)
    overrides = {EVENTS_ENV: str(events), "PYTHONSAFEPATH": "1", "TMPDIR": str(temporary)}
    previous = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _problem(events: Path, log: str) -> str:
    """What went wrong, from the step's own report, else the last exception its process
    printed; a process that printed neither was killed (a signal or out of memory)."""
    reported = failure_message(read_events(events))
    if reported:
        return reported
    printed = last_exception(log)
    if printed:
        return capped(printed)
    return "its process ended without reporting an error or printing one (killed by a signal, " \
           "or out of memory?)"


_FRAME = re.compile(r"^\s")


def last_exception(log: str) -> str | None:
    """The `Type: message` line that ends the last traceback in `log`."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return None
    for line in lines[starts[-1] + 1:]:
        if line.strip() and not _FRAME.match(line):
            return line.strip()
    return None


def keep_log(job_name: str, log: str) -> Path:
    """Write a failed run's log where it outlives the run's scratch; its path."""
    folder = get_settings().cache_dir / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    path = folder / f"{job_name}-{stamp}-{os.getpid()}.log"
    path.write_text(log, encoding="utf-8")
    return path


def stop_steps(grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """End every process this one started (the running step and anything it started):
    SIGTERM, then SIGKILL for whatever is still there after `grace_seconds`. The tree is
    read again before each signal, so what a dying step started is found too."""
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
        running = _descendants(os.getpid())
        if not running:
            return
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_seconds
        while running and time.monotonic() < deadline:
            running = [pid for pid in running if _alive(pid)]
            time.sleep(0.05)


def adopt_orphans() -> None:
    """Make this process the reaper of its orphaned descendants (Linux), so a step whose
    wrapper shell died first is still below this process and can be stopped."""
    import ctypes

    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier}
        found += sorted(children)
        frontier = children
    return found
