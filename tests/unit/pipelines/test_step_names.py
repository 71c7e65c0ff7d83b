"""One plan names the steps: the pipeline's tasks, the names steps record, the operator's
planned steps and the KFP backend's task filter all agree, for every shape of job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from modelpress.api import CompressionJob
from modelpress.operator.backends.kfp import run_state
from modelpress.operator.status import planned_steps as status_steps
from modelpress.pipelines.build import compile_pipeline, pipeline_name
from modelpress.pipelines.steps import is_step_name, planned_steps

_PRUNE = {"prune": {"sparsity": 0.5}}
_QUANTIZE = {"quantize": {"mode": "dynamic"}}
_CPU = {"name": "cpu", "device": "cpu"}
_GPU = {"name": "gpu", "device": "cuda", "accelerator": {"count": 1}}


def _job(steps: list[dict[str, Any]], **spec: Any) -> CompressionJob:
    return CompressionJob.model_validate({
        "apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
        "metadata": {"name": "table"},
        "spec": {"model": {"uri": "builtin://digits-cnn"},
                 "data": {"eval": "builtin://digits", "train": "builtin://digits"},
                 "steps": steps, **spec}})


TABLE = [
    pytest.param(_job([_PRUNE, _QUANTIZE]),
                 ["fetch", "prune", "quantize", "validate", "benchmark-cpu", "report"],
                 id="plain"),
    pytest.param(_job([_PRUNE, {"prune": {"sparsity": 0.2}}, _QUANTIZE]),
                 ["fetch", "prune", "prune", "quantize", "validate", "benchmark-cpu", "report"],
                 id="two-prune-steps"),
    pytest.param(_job([_PRUNE, _QUANTIZE], search={"parameter": "steps[0].prune.sparsity",
                                                   "values": [0.3, 0.6, 0.9]}),
                 ["fetch", "select", "benchmark-cpu", "report"], id="search"),
    pytest.param(_job([{"distill": {"epochs": 1}}], benchmark={"pools": [_CPU, _GPU]}),
                 ["fetch", "distill", "validate", "benchmark-cpu", "benchmark-gpu", "report"],
                 id="two-pools"),
]


def _tasks(ir: dict[str, Any], dag: dict[str, Any]) -> list[dict[str, Any]]:
    """The executor tasks of `dag` in dependency order, loops expanded in place."""
    placed: list[str] = []
    tasks = dag["tasks"]
    while len(placed) < len(tasks):
        ready = sorted(key for key, task in tasks.items() if key not in placed
                       and set(task.get("dependentTasks", [])) <= set(placed))
        assert len(ready) == 1, f"the steps form a chain, got {ready} ready together"
        placed += ready
    ordered = []
    for key in placed:
        component = ir["components"][tasks[key]["componentRef"]["name"]]
        ordered += _tasks(ir, component["dag"]) if "dag" in component else [tasks[key]]
    return ordered


def _pipeline(job: CompressionJob, tmp_path: Path) -> list[dict[str, Any]]:
    target = tmp_path / "pipeline.yaml"
    compile_pipeline(job, "s3://modelpress/test/", str(target))
    ir = next(yaml.safe_load_all(target.read_text()))
    return _tasks(ir, ir["root"]["dag"])


def _kfp_run(names: list[str]) -> SimpleNamespace:
    """A finished KFP run whose task details hold `names` plus the engine's own tasks."""
    begin = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    details = [SimpleNamespace(display_name=name, state="SUCCEEDED", error=None,
                               start_time=begin + timedelta(seconds=10 * position),
                               end_time=begin + timedelta(seconds=10 * position + 5))
               for position, name in enumerate(["root", "for-loop-2", *names])]
    return SimpleNamespace(run_id="run-1", state="SUCCEEDED", error=None, created_at=begin,
                           scheduled_at=begin, finished_at=begin + timedelta(hours=1),
                           run_details=SimpleNamespace(task_details=details))


@pytest.mark.parametrize(("job", "names"), TABLE)
def test_step_names_agree_everywhere(job: CompressionJob, names: list[str],
                                     tmp_path: Path) -> None:
    planned = [step.name for step in planned_steps(job.spec)]
    assert planned == names
    assert [step.name for step in status_steps(job.spec)] == planned
    tasks = _pipeline(job, tmp_path)
    shown = [task["taskInfo"]["name"] for task in tasks]
    assert shown == planned  # one task per planned step (a search's run inside its loop)
    recorded = [task["inputs"]["parameters"]["name"]["runtimeValue"]["constant"]
                for task in tasks]
    assert recorded == planned
    observed = run_state(_kfp_run([pipeline_name(job), *shown]))
    assert [step.name for step in observed.steps] == planned


@pytest.mark.parametrize("name", ["root", "for-loop-2", "iteration-0", "modelpress-report",
                                  "0-prune", "benchmark-", "prunes", "fetch-op"])
def test_engine_tasks_are_not_steps(name: str) -> None:
    assert not is_step_name(name)


def test_a_search_runs_its_trials_inside_select() -> None:
    job = TABLE[2].values[0]
    observed = run_state(_kfp_run(["fetch", "select", "benchmark-cpu", "report"]))
    assert [step.name for step in observed.steps] == [
        step.name for step in planned_steps(job.spec)]
    assert not any(step.in_chain for step in planned_steps(job.spec))
