"""The operator and its intake process live and die together (operator/intake.py): the
operator stops when its intake is gone (to be restarted whole, not to run with new jobs
never given a phase), and the intake ends with the operator."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runs import LIGHT_SPEC, job_document
from standin_operator import (
    KubeStandIn,
    OperatorProcess,
    create_job,
    phase_of,
    start_standin,
    wait_until,
)

STOP_TIMEOUT_S = 60.0


@pytest.fixture
def api() -> Iterator[KubeStandIn]:
    standin = start_standin()
    yield standin
    standin.stop()


@pytest.fixture
def operator(api: KubeStandIn, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(tmp_path, api)
    process.start()
    yield process
    process.stop()


def _intake_pid(operator: OperatorProcess) -> int:
    found = re.search(r"The intake \(pid (\d+)\) gives new jobs their first status",
                      operator.log_path.read_text(errors="replace"))
    assert found, "the operator logged no intake"
    return int(found[1])


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, not yet reaped by its new parent


def test_a_new_job_gets_its_phase_from_the_intake(api: KubeStandIn,
                                                  operator: OperatorProcess) -> None:
    pid = _intake_pid(operator)
    assert pid != operator.process.pid and not _gone(pid)  # type: ignore[union-attr]
    create_job(api, job_document("fresh", LIGHT_SPEC))
    wait_until("a phase", lambda: phase_of(api, "fresh"), timeout=30)


def test_the_operator_stops_when_its_intake_dies(operator: OperatorProcess) -> None:
    assert operator.process is not None
    os.kill(_intake_pid(operator), signal.SIGKILL)
    operator.process.wait(timeout=STOP_TIMEOUT_S)
    assert re.search(r"The intake \(pid \d+\) exited \(killed by signal 9\); stopping the operator",
                     operator.log_path.read_text(errors="replace"))


def test_the_intake_ends_with_the_operator(operator: OperatorProcess) -> None:
    assert operator.process is not None
    pid = _intake_pid(operator)
    operator.process.kill()  # no clean shutdown: the intake notices on its own
    operator.process.wait(timeout=STOP_TIMEOUT_S)
    wait_until("the intake's end", lambda: _gone(pid), timeout=STOP_TIMEOUT_S)
