"""The local backend with real worker processes running fake (fast) pipelines."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from modelpress.jobfile import parse_job
from modelpress.operator.backends.base import TERMINAL_RUN_PHASES, RunRequest, RunState
from modelpress.operator.backends.local import LocalBackend, WorkerRecord

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
WAIT_SECONDS = 30.0


def request(tmp_path: Path, key: str = "uid-1", namespace: str = "default") -> RunRequest:
    document = yaml.safe_load((ROOT / "examples" / "digits-prune-quantize.yaml").read_text())
    document["metadata"]["namespace"] = namespace
    job = parse_job(document, "digits")
    return RunRequest(key=key, job=job, output=(tmp_path / "output" / key).as_uri())


def backend(tmp_path: Path, runner: str, max_runs: int = 2) -> LocalBackend:
    return LocalBackend(tmp_path / "runs", max_runs=max_runs, runner=f"fake_runners:{runner}")


def wait_for(condition: Callable[[], RunState | bool], timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def finished(local: LocalBackend, run_id: str) -> RunState:
    state: list[RunState] = []

    def done() -> bool:
        state[:] = [local.poll(run_id)]
        return state[0].phase in TERMINAL_RUN_PHASES

    wait_for(done)
    return state[0]


def test_a_successful_run(tmp_path: Path) -> None:
    local = backend(tmp_path, "succeed")
    run_id = local.submit(request(tmp_path))
    state = finished(local, run_id)
    assert state.phase == "Succeeded", (tmp_path / "runs" / run_id / "worker.log").read_text()
    assert [s.name for s in state.steps] == ["fetch", "prune", "quantize", "validate",
                                             "benchmark-cpu", "report"]
    assert {s.phase for s in state.steps} == {"Succeeded"}
    assert state.started_at is not None and state.finished_at is not None
    assert (tmp_path / "output" / "uid-1" / "results.json").is_file()


def test_a_failing_step_is_named(tmp_path: Path) -> None:
    local = backend(tmp_path, "fail_at_prune")
    state = finished(local, local.submit(request(tmp_path)))
    assert (state.phase, state.failed_step) == ("Failed", "prune")
    assert state.message == "sparsity 0.99 leaves no weights"
    assert [(s.name, s.phase) for s in state.steps] == [("fetch", "Succeeded"),
                                                        ("prune", "Failed")]


@pytest.mark.parametrize(("runner", "message"), [
    ("crash", "RuntimeError: the runner broke"),
    ("die", "the worker process ended without recording an outcome"),
])
def test_unexpected_failures_are_reported(tmp_path: Path, runner: str, message: str) -> None:
    local = backend(tmp_path, runner)
    state = finished(local, local.submit(request(tmp_path)))
    assert state.phase == "Failed"
    assert state.message is not None and state.message.startswith(message)


def test_submitting_the_same_job_twice_starts_one_run(tmp_path: Path) -> None:
    local = backend(tmp_path, "hang")
    first = local.submit(request(tmp_path))
    restarted = backend(tmp_path, "hang")  # a new operator process, same run folders
    assert restarted.submit(request(tmp_path)) == first
    assert len(list((tmp_path / "runs").iterdir())) == 1
    # Seen by the restarted operator once the worker has exec'd (its command line names
    # the run folder); a forked child not yet exec'd is not told from a recycled pid.
    wait_for(lambda: restarted.runs_in_flight() == 1)
    local.terminate(first)


def test_terminate_kills_the_worker_and_its_children(tmp_path: Path) -> None:
    local = backend(tmp_path, "hang")
    run_id = local.submit(request(tmp_path))
    child_pid = tmp_path / "runs" / run_id / "child.pid"
    wait_for(child_pid.is_file)
    local.terminate(run_id)
    state = local.poll(run_id)
    assert state.phase == "Canceled"
    wait_for(lambda: not _alive(int(child_pid.read_text())), timeout=10)


def test_capacity_counts_live_workers(tmp_path: Path) -> None:
    local = backend(tmp_path, "hang", max_runs=1)
    assert local.has_capacity()
    run_id = local.submit(request(tmp_path))
    assert not local.has_capacity()
    local.terminate(run_id)
    assert local.has_capacity()


def test_runs_are_counted_per_namespace(tmp_path: Path) -> None:
    local = backend(tmp_path, "hang", max_runs=5)
    first = local.submit(request(tmp_path, "a-1", namespace="team-a"))
    local.submit(request(tmp_path, "a-2", namespace="team-a"))
    local.submit(request(tmp_path, "b-1", namespace="team-b"))
    counts = {namespace: local.runs_in_namespace(namespace)
              for namespace in ("team-a", "team-b", "team-c")}
    assert counts == {"team-a": 2, "team-b": 1, "team-c": 0}
    local.terminate(first)
    assert local.runs_in_namespace("team-a") == 1
    restarted = backend(tmp_path, "hang", max_runs=5)  # reads the namespaces from the folders
    assert restarted.runs_in_namespace("team-a") == 1
    for run_id in ("local-a-2", "local-b-1"):
        local.terminate(run_id)


def test_an_unknown_run_is_lost(tmp_path: Path) -> None:
    assert backend(tmp_path, "succeed").poll("local-nothing").phase == "Lost"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def _niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


@pytest.mark.parametrize("niceness", [0, 7])
def test_workers_and_their_steps_run_below_the_operators_priority(
        tmp_path: Path, niceness: int) -> None:
    local = LocalBackend(tmp_path / "runs", max_runs=1, runner="fake_runners:hang",
                         worker_niceness=niceness)
    run_id = local.submit(request(tmp_path))
    child_pid = tmp_path / "runs" / run_id / "child.pid"
    wait_for(child_pid.is_file)
    worker_pid = WorkerRecord.model_validate_json(
        (tmp_path / "runs" / run_id / "worker.json").read_bytes()).pid
    expected = min(19, _niceness(0) + niceness)
    assert (_niceness(worker_pid), _niceness(int(child_pid.read_text()))) == (expected, expected)
    local.terminate(run_id)
