"""Run a job's pipeline on this machine with kfp.local (each step in its own process)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from modelpress.api import CompressionJob
from modelpress.components.ops_runtime import EVENTS_ENV
from modelpress.errors import StepFailed, one_line
from modelpress.pipelines.build import build_pipeline


def run_local(job: CompressionJob, output: str, workdir: Path, events: Path) -> str:
    """Run the whole pipeline; returns the kfp.local log. Raises StepFailed on failure."""
    from kfp import local

    workdir.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(workdir / "pipeline_root"), raise_on_error=True)
    pipeline = build_pipeline(job, output)
    log = io.StringIO()
    # Steps run as `python -m …` in this process's folder; from a modelpress checkout its
    # operator/ folder would shadow the standard library's `operator` without safe paths.
    overrides = {EVENTS_ENV: str(events), "PYTHONSAFEPATH": "1"}
    previous = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            pipeline()
    except RuntimeError as error:
        problem = _last_error(events) or _last_exception(log.getvalue()) or (
            f"its process ended without reporting a result (killed, or out of memory?): "
            f"{one_line(str(error))}")
        raise StepFailed(_failed_step(events) or "pipeline", problem) from None
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return log.getvalue()


def _events(events: Path) -> list[dict[str, object]]:
    import json

    if not events.is_file():
        return []
    return [json.loads(line) for line in events.read_text().splitlines() if line.strip()]


def _failed_step(events: Path) -> str | None:
    started = [e["step"] for e in _events(events) if e["event"] == "started"]
    finished = {e["step"] for e in _events(events) if e["event"] == "finished"}
    unfinished = [step for step in started if step not in finished]
    return str(unfinished[-1]) if unfinished else None


def _last_exception(log: str) -> str | None:
    """The last `SomeError: message` line a step printed (an unexpected failure)."""
    import re

    plain = re.sub(r"\x1b\[[0-9;]*m", "", log)
    found = re.findall(r"^\s*([\w.]+(?:Error|Exception): .+)$", plain, flags=re.MULTILINE)
    return found[-1].strip() if found else None


def _last_error(events: Path) -> str | None:
    failures = [e for e in _events(events) if e["event"] == "failed"]
    return str(failures[-1]["message"]) if failures else None
