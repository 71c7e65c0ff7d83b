"""How a local run reports a failed step, and how it stops its step processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelpress.events import ProgressEvent, append_event
from modelpress.pipelines import local

ORT_FAILURE = """\
Traceback (most recent call last):
  File "/x/ops_runtime.py", line 40, in _recorded
    result = work()
onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument: [ONNXRuntimeError] : 2 : \
INVALID_ARGUMENT : Unexpected input data type. Actual: (tensor(double)) , expected: (tensor(float))
"""


def test_the_last_traceback_names_any_exception_type() -> None:
    log = "noise\nTraceback (most recent call last):\n  File x\nValueError: first\n" + ORT_FAILURE
    line = local.last_exception(log)
    assert line is not None
    assert line.startswith("onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument: ")
    assert local.last_exception("all fine\n") is None


def test_the_step_own_report_comes_first(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    append_event(events, ProgressEvent(event="started", step="validate", time=1.0))
    append_event(events, ProgressEvent(event="failed", step="validate", time=2.0,
                                       message="InvalidArgument: Unexpected input data type"))
    assert local._problem(events, ORT_FAILURE) == "InvalidArgument: Unexpected input data type"


def test_a_printed_exception_is_capped(tmp_path: Path) -> None:
    long_failure = "Traceback (most recent call last):\n  x\nValueError: " + "a" * 5000
    problem = local._problem(tmp_path / "none.jsonl", long_failure)
    assert problem.startswith("ValueError: aaa") and len(problem) <= 300


def test_only_a_silent_death_is_called_a_kill(tmp_path: Path) -> None:
    assert "killed" in local._problem(tmp_path / "none.jsonl", "step log without an error\n")
    assert "killed" not in local._problem(tmp_path / "none.jsonl", ORT_FAILURE)


def test_a_failed_run_keeps_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_CACHE_DIR", str(tmp_path))
    kept = local.keep_log("digits", ORT_FAILURE)
    assert kept.parent == tmp_path / "logs" and kept.read_text() == ORT_FAILURE


def test_stopping_ends_the_step_and_what_it_started() -> None:
    step = subprocess.Popen([sys.executable, "-c", "import subprocess, time; "
                             "subprocess.Popen(['sleep', '60']); time.sleep(60)"])
    deadline = time.monotonic() + 10
    while len(local._descendants(step.pid)) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = local._descendants(step.pid)[0]
    local.stop_steps(grace_seconds=2.0)
    assert step.wait(timeout=5) != 0
    deadline = time.monotonic() + 5
    while local._alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)  # an orphan is reaped by init once killed
    assert not local._alive(grandchild)
