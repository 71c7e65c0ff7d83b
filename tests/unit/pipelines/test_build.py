"""The pipeline built from a spec: its tasks, their order, and pool placement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelpress.api import DEFAULT_STORAGE_SECRET, CompressionJob, Storage
from modelpress.errors import InvalidInput
from modelpress.jobfile import load_job
from modelpress.pipelines.build import (
    DEFAULT_AUTO_BAR,
    compile_pipeline,
    latency_probe,
    resolved_options,
    run_deadline,
    searched_spec,
)
from modelpress.records import LatencyProbe

ROOT = Path(__file__).resolve().parents[3]


def _compiled(tmp_path: Path, example: str) -> dict:
    job = load_job(ROOT / "examples" / example)
    target = tmp_path / "pipeline.yaml"
    compile_pipeline(job, "s3://modelpress/test/", str(target))
    return list(yaml.safe_load_all(target.read_text()))


def _task(pipeline: dict, name: str) -> dict:
    return next(t for t in pipeline["root"]["dag"]["tasks"].values()
                if t["taskInfo"]["name"] == name)


def _constant(task: dict, parameter: str) -> str:
    return task["inputs"]["parameters"][parameter]["runtimeValue"]["constant"]


def test_each_task_gets_its_own_options_and_no_job_spec(tmp_path: Path) -> None:
    pipeline = _compiled(tmp_path, "digits-prune-quantize.yaml")[0]
    tasks = pipeline["root"]["dag"]["tasks"]
    names = {task["taskInfo"]["name"] for task in tasks.values()}
    assert names == {"fetch", "prune", "quantize", "validate", "benchmark-cpu", "report"}
    quantize = json.loads(_constant(_task(pipeline, "quantize"), "options"))
    assert quantize["mode"] == "static" and "sparsity" not in quantize
    prune = json.loads(_constant(_task(pipeline, "prune"), "options"))
    assert prune["sparsity"] == 0.5 and prune["schedule"]["fineTuneEpochs"] == 2
    assert set(_task(pipeline, "validate")["inputs"]["parameters"]) == {"name"}
    report = _task(pipeline, "report")
    assert json.loads(_constant(report, "promotion"))["gates"]["minCompressionRatio"] == 3.5
    assert list(pipeline["root"]["inputDefinitions"]["parameters"]) == ["output_uri"]
    assert pipeline["pipelineInfo"]["name"] == "modelpress-digits-prune-quantize"


def test_benchmark_gets_its_pool_and_the_settings(tmp_path: Path) -> None:
    pipeline = _compiled(tmp_path, "minilm-int8.yaml")[0]
    gpu = _task(pipeline, "benchmark-gpu")
    assert json.loads(_constant(gpu, "pool"))["device"] == "cuda"
    settings = json.loads(_constant(gpu, "settings"))
    assert [pool["name"] for pool in settings["pools"]] == ["gpu"]
    assert settings["batchSizes"] == [1, 32]


def test_auto_quantization_bar_and_probe_are_set_when_built() -> None:
    job = load_job(ROOT / "examples" / "minilm-auto.yaml")
    options = job.spec.steps[0].options.model_copy(update={"max_accuracy_drop": None})
    assert resolved_options(job.spec, options).max_accuracy_drop == 0.01  # from the gates
    job.spec.promotion.gates.max_accuracy_drop = None
    assert resolved_options(job.spec, options).max_accuracy_drop == DEFAULT_AUTO_BAR
    assert latency_probe(job.spec) == LatencyProbe(batch_size=32, threads=1)


def test_a_search_is_one_select_task_given_the_resolved_spec(tmp_path: Path) -> None:
    pipeline = _compiled(tmp_path, "digits-search.yaml")[0]
    tasks = pipeline["root"]["dag"]["tasks"]
    assert {task["taskInfo"]["name"] for task in tasks.values()} == {
        "fetch", "select", "benchmark-cpu", "report"}
    given = tasks["select-op"]["inputs"]["parameters"]
    spec = json.loads(given["spec"]["runtimeValue"]["constant"])
    assert spec["search"]["parameters"][0]["values"] == [0.3, 0.5, 0.7, 0.9]
    assert given["output"]["componentInputParameter"] == "output_uri"
    # the kept model is benchmarked after select, so whatever it keeps has figures
    assert "select-op" in _task(pipeline, "benchmark-cpu")["dependentTasks"]


def test_searched_spec_resolves_auto_quantizations_bar() -> None:
    job = load_job(ROOT / "examples" / "digits-search.yaml")
    wire = job.spec.to_wire()
    spec = type(job.spec).model_validate({**wire, "steps": [wire["steps"][0],
                                                           {"quantize": {"mode": "auto"}}]})
    assert searched_spec(spec).steps[1].quantize.max_accuracy_drop == DEFAULT_AUTO_BAR
    assert searched_spec(spec).search == spec.search


def test_gpu_pool_lands_on_its_nodes(tmp_path: Path) -> None:
    documents = _compiled(tmp_path, "minilm-int8.yaml")
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu = [spec for spec in platform.values() if "nodeSelector" in spec]
    assert len(gpu) == 1
    assert gpu[0]["nodeSelector"]["labels"] == {"modelpress.io/pool": "gpu"}
    assert gpu[0]["tolerations"][0]["key"] == "nvidia.com/gpu"
    executors = documents[0]["deploymentSpec"]["executors"]
    accelerated = [e for e in executors.values()
                   if e["container"].get("resources", {}).get("accelerator")]
    assert len(accelerated) == 1
    assert accelerated[0]["container"]["resources"]["accelerator"]["resourceCount"] == "1"


def test_step_image_comes_from_the_spec(tmp_path: Path) -> None:
    job = load_job(ROOT / "examples" / "digits-prune-quantize.yaml")
    job.spec.image = "registry.example/team/steps:1.2"
    target = tmp_path / "pipeline.yaml"
    compile_pipeline(job, "s3://modelpress/test/", str(target))
    executors = yaml.safe_load_all(target.read_text()).__next__()["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {
        "registry.example/team/steps:1.2"}


PLATFORM_SECRET = "modelpress-platform-s3"
PLANTED_SECRET_KEY = "pl4nted-S3cret-Key"


def _platform_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiling process holds the platform's credentials and names its Secret the way
    steps were once given it (MODELPRESS_S3_SECRET): neither may reach a step."""
    monkeypatch.setenv("MODELPRESS_S3_SECRET", PLATFORM_SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPLATFORM")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PLANTED_SECRET_KEY)


def _compile_job(tmp_path: Path, job: CompressionJob, **options: Any) -> tuple[str, list[dict]]:
    target = tmp_path / "pipeline.yaml"
    compile_pipeline(job, "s3://modelpress/team-a/x/", str(target), **options)
    text = target.read_text()
    return text, list(yaml.safe_load_all(text))


def _task_configs(documents: list[dict]) -> tuple[dict, dict]:
    """(the IR's executors, the kubernetes platform spec of each executor)."""
    executors = documents[0]["deploymentSpec"]["executors"]
    return executors, documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _secret_names(platform: dict) -> set[str]:
    return {entry["secretName"] for spec in platform.values() for entry in spec["secretAsEnv"]}


def test_steps_get_the_store_endpoint_and_the_namespace_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _platform_credentials(monkeypatch)
    monkeypatch.setenv("MODELPRESS_S3_ENDPOINT", "http://minio.modelpress:9000")
    monkeypatch.setenv("MODELPRESS_STEP_IMAGE", "registry.example/steps:9")
    text, documents = _compile_job(tmp_path, load_job(ROOT / "examples" /
                                                      "digits-prune-quantize.yaml"))
    executors, platform = _task_configs(documents)
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/steps:9"}
    for executor in executors.values():
        env = {v["name"]: v["value"] for v in executor["container"]["env"]}
        assert env["MODELPRESS_S3_ENDPOINT"] == "http://minio.modelpress:9000"
    assert set(platform) == set(executors)
    for spec in platform.values():
        assert [entry["secretName"] for entry in spec["secretAsEnv"]] == [DEFAULT_STORAGE_SECRET]
        assert {(m["secretKey"], m["envVar"]) for m in spec["secretAsEnv"][0]["keyToEnv"]} == {
            ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
            ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")}
    assert PLATFORM_SECRET not in text
    assert PLANTED_SECRET_KEY not in text and "AKIAPLATFORM" not in text


def test_the_default_secret_name_is_the_operators_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_STORAGE_SECRET_NAME", "team-storage")
    _, documents = _compile_job(tmp_path, load_job(ROOT / "examples" / "digits-search.yaml"))
    assert _secret_names(_task_configs(documents)[1]) == {"team-storage"}


def test_spec_storage_names_the_secret_of_every_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search's select task included."""
    _platform_credentials(monkeypatch)
    job = load_job(ROOT / "examples" / "digits-search.yaml")
    job.spec.storage = Storage(secret_name="team-a-minio")
    text, documents = _compile_job(tmp_path, job)
    executors, platform = _task_configs(documents)
    assert set(platform) == set(executors) and len(executors) >= 4
    assert _secret_names(platform) == {"team-a-minio"}
    assert DEFAULT_STORAGE_SECRET not in text and PLATFORM_SECRET not in text
    assert PLANTED_SECRET_KEY not in text


def test_every_task_pod_is_bounded_by_the_jobs_deadline(tmp_path: Path) -> None:
    job = load_job(ROOT / "examples" / "digits-search.yaml")
    _, documents = _compile_job(tmp_path, job, deadline_seconds=1800)
    executors, platform = _task_configs(documents)
    assert set(platform) == set(executors)
    assert {spec["activeDeadlineSeconds"] for spec in platform.values()} == {"1800"}


def test_a_task_bound_falls_back_to_the_specs_deadline(tmp_path: Path) -> None:
    job = load_job(ROOT / "examples" / "minilm-int8.yaml")
    _, unbounded = _compile_job(tmp_path, job)
    assert all("activeDeadlineSeconds" not in spec
               for spec in _task_configs(unbounded)[1].values())
    job.spec.deadline_seconds = 900
    _, bounded = _compile_job(tmp_path, job)
    platform = _task_configs(bounded)[1]
    assert {spec["activeDeadlineSeconds"] for spec in platform.values()} == {"900"}
    assert any("nodeSelector" in spec for spec in platform.values())  # placement kept


@pytest.mark.parametrize(("asked", "cap", "deadline"), [
    (None, 7200, 7200), (3600, 7200, 3600), (9000, 7200, 7200), (7200, 7200, 7200)])
def test_the_run_deadline_is_the_jobs_own_within_the_cap(asked: int | None, cap: int,
                                                        deadline: int) -> None:
    job = load_job(ROOT / "examples" / "digits-prune-quantize.yaml")
    job.spec.deadline_seconds = asked
    assert run_deadline(job.spec, cap) == deadline


def test_an_s3_endpoint_with_credentials_never_reaches_the_ir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_S3_ENDPOINT", "http://key:s3cr3t@127.0.0.1:9000")
    job = load_job(ROOT / "examples" / "digits-prune-quantize.yaml")
    with pytest.raises(InvalidInput, match="^MODELPRESS_S3_ENDPOINT: a uri may not") as refused:
        compile_pipeline(job, "s3://modelpress/default/x/", str(tmp_path / "ir.yaml"))
    assert "s3cr3t" not in str(refused.value) and not (tmp_path / "ir.yaml").exists()


def test_every_step_pod_carries_the_label_the_egress_policy_selects(tmp_path: Path) -> None:
    documents = _compiled(tmp_path, "digits-prune-quantize.yaml")
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = documents[0]["root"]["dag"]["tasks"]
    assert len(executors) == len(tasks)
    assert all(spec["podMetadata"]["labels"] == {"modelpress.io/step": "true"}
               for spec in executors.values())
