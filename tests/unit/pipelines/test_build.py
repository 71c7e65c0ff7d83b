"""The pipeline built from a spec: its tasks, their order, and pool placement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from modelpress.errors import InvalidInput
from modelpress.jobfile import load_job
from modelpress.pipelines.build import (
    DEFAULT_AUTO_BAR,
    candidate_options,
    compile_pipeline,
    latency_probe,
    resolved_options,
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


def test_search_candidates_are_options_fixed_when_built(tmp_path: Path) -> None:
    pipeline = _compiled(tmp_path, "digits-search.yaml")[0]
    loop = _task(pipeline, "for-loop-2")
    items = [json.loads(item) for item in json.loads(loop["parameterIterator"]["items"]["raw"])]
    assert [item["sparsity"] for item in items] == [0.3, 0.5, 0.7, 0.9]
    assert all(item["structured"] for item in items)
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    inner = pipeline["components"]["comp-for-loop-2"]["dag"]["tasks"]
    assert {task["taskInfo"]["name"] for task in inner.values()} == {"prune", "quantize",
                                                                   "validate"}
    # the kept model is benchmarked after select, so whatever it keeps has figures
    benchmark = _task(pipeline, "benchmark-cpu")
    assert "select-op" in benchmark["dependentTasks"]


def test_candidate_options_set_only_the_searched_field() -> None:
    job = load_job(ROOT / "examples" / "digits-search.yaml")
    options = candidate_options(job.spec)
    assert [option.sparsity for option in options] == [0.3, 0.5, 0.7, 0.9]
    assert all(option.model_copy(update={"sparsity": 0.5}) == job.spec.steps[0].options
               for option in options)
    assert job.spec.searched_option() == (0, "sparsity")


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


def test_steps_get_the_store_endpoint_and_credentials_secret(tmp_path: Path,
                                                             monkeypatch) -> None:
    monkeypatch.setenv("MODELPRESS_S3_ENDPOINT", "http://minio.modelpress:9000")
    monkeypatch.setenv("MODELPRESS_S3_SECRET", "modelpress-minio")
    monkeypatch.setenv("MODELPRESS_STEP_IMAGE", "registry.example/steps:9")
    ir, platform = _compiled(tmp_path, "digits-prune-quantize.yaml")
    executors = ir["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {"registry.example/steps:9"}
    for executor in executors.values():
        env = {v["name"]: v["value"] for v in executor["container"]["env"]}
        assert env["MODELPRESS_S3_ENDPOINT"] == "http://minio.modelpress:9000"
    secrets = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(secrets) == len(executors)
    for spec in secrets.values():
        assert spec["secretAsEnv"][0]["secretName"] == "modelpress-minio"
        assert {m["envVar"] for m in spec["secretAsEnv"][0]["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_an_s3_endpoint_with_credentials_never_reaches_the_ir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_S3_ENDPOINT", "http://key:s3cr3t@127.0.0.1:9000")
    job = load_job(ROOT / "examples" / "digits-prune-quantize.yaml")
    with pytest.raises(InvalidInput, match="^MODELPRESS_S3_ENDPOINT: a uri may not") as refused:
        compile_pipeline(job, "s3://modelpress/default/x/", str(tmp_path / "ir.yaml"))
    assert "s3cr3t" not in str(refused.value) and not (tmp_path / "ir.yaml").exists()
