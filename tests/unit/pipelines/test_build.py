"""The pipeline built from a spec: its tasks, their order, and pool placement."""

from __future__ import annotations

from pathlib import Path

import yaml

from modelpress.jobfile import load_job
from modelpress.pipelines.build import compile_pipeline

ROOT = Path(__file__).resolve().parents[3]


def _compiled(tmp_path: Path, example: str) -> dict:
    job = load_job(ROOT / "examples" / example)
    target = tmp_path / "pipeline.yaml"
    compile_pipeline(job, "s3://modelpress/test/", str(target))
    return list(yaml.safe_load_all(target.read_text()))


def test_tasks_follow_the_spec_order(tmp_path: Path) -> None:
    pipeline = _compiled(tmp_path, "digits-prune-quantize.yaml")[0]
    tasks = pipeline["root"]["dag"]["tasks"]
    names = {task["taskInfo"]["name"] for task in tasks.values()}
    assert names == {"fetch", "0-prune", "1-quantize", "validate", "benchmark-cpu", "report"}
    quantize = next(t for t in tasks.values() if t["taskInfo"]["name"] == "1-quantize")
    assert quantize["inputs"]["parameters"]["index"]["runtimeValue"]["constant"] == 1
    assert pipeline["pipelineInfo"]["name"] == "modelpress-digits-prune-quantize"


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
