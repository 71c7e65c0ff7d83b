"""Models and data read from s3:// uris, and a missing object named in one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelpress.components import zoo
from modelpress.components.modelio import export_onnx

pytestmark = pytest.mark.e2e


def _job(model_uri: str, eval_uri: str) -> dict:
    return {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": "s3-inputs"},
            "spec": {"model": {"uri": model_uri, "task": "classification"},
                     "data": {"eval": eval_uri},
                     "steps": [{"quantize": {"mode": "dynamic"}}],
                     "benchmark": {"batchSizes": [8], "iterations": 5}}}


def _run(job: dict, tmp_path: Path, server) -> subprocess.CompletedProcess:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    environment = {**os.environ, "COLUMNS": "200", "MODELPRESS_S3_ENDPOINT": server.endpoint,
                   "AWS_ACCESS_KEY_ID": server.access_key,
                   "AWS_SECRET_ACCESS_KEY": server.secret_key}
    return subprocess.run([sys.executable, "-m", "modelpress.cli", "run", str(path), "--output",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                          env=environment)


@pytest.fixture(scope="module")
def uploaded(s3_server, tmp_path_factory) -> str:
    """An ONNX digits model and a labelled .npz eval set in a bucket; returns the bucket."""
    import torch

    folder = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    module = zoo.digits_cnn()
    module.load_state_dict(zoo.pretrained_state("digits-cnn"))
    evaluation = zoo.digits("test")
    export_onnx(module, evaluation, ["x"], folder / "digits.onnx")
    np.savez(folder / "eval.npz", **evaluation)
    client = s3_server.client()
    client.make_bucket("inputs")
    for name in ("digits.onnx", "eval.npz"):
        client.fput_object("inputs", f"team/{name}", str(folder / name))
    return "inputs"


def test_a_job_reads_its_model_and_data_from_s3(s3_server, uploaded, tmp_path) -> None:
    completed = _run(_job("s3://inputs/team/digits.onnx", "s3://inputs/team/eval.npz"),
                     tmp_path, s3_server)
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert results["baseline"]["metric"]["value"] > 0.95
    assert results["compressionRatio"] > 3.0
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert lineage["inputs"]["model"]["uri"] == "s3://inputs/team/digits.onnx"


def test_a_missing_object_is_named(s3_server, uploaded, tmp_path) -> None:
    completed = _run(_job("s3://inputs/team/nope.onnx", "s3://inputs/team/eval.npz"),
                     tmp_path, s3_server)
    assert completed.returncode == 2
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, completed.stderr
    assert "spec.model.uri" in lines[0] and "s3://inputs/team/nope.onnx" in lines[0]
    assert not (tmp_path / "out" / "results.json").exists()
