"""The digits example publishing to a real S3 server, and a consumer catching tampering."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modelpress.cli", *args], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def published(s3_server, tmp_path_factory) -> tuple[str, str]:
    """Run the digits example once with --output s3://…; returns (bucket, prefix)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODELPRESS_S3_ENDPOINT", s3_server.endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
        patch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
        completed = _cli("run", str(ROOT / "examples" / "digits-prune-quantize.yaml"),
                         "--output", "s3://e2e-runs/team-a/digits/")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert s3_server.secret_key not in completed.stdout + completed.stderr
    return "e2e-runs", "team-a/digits"


def test_every_artifact_lands_in_the_bucket(s3_server, published) -> None:
    bucket, prefix = published
    names = {o.object_name.removeprefix(prefix + "/")
             for o in s3_server.client().list_objects(bucket, prefix=prefix + "/", recursive=True)}
    assert {"results.json", "report.html", "model.onnx", "lineage.json"} <= names
    assert not [name for name in names if ".tmp" in name], "temporary keys left behind"


def test_results_link_a_working_presigned_report(s3_server, published) -> None:
    bucket, prefix = published
    document = json.loads(s3_server.client().get_object(bucket, f"{prefix}/results.json").read())
    assert document["results"]["compressionRatio"] >= 3.5
    assert document["artifacts"]["model"] == f"s3://{bucket}/{prefix}/model.onnx"
    with urllib.request.urlopen(document["artifacts"]["reportUrl"], timeout=10) as response:
        assert b"<img" in response.read()
    assert s3_server.secret_key not in json.dumps(document)


def test_lineage_records_inputs_and_producers(s3_server, published) -> None:
    bucket, prefix = published
    lineage = json.loads(s3_server.client().get_object(bucket, f"{prefix}/lineage.json").read())
    assert lineage["artifacts"]["model.onnx"]["producer"] == "quantize"
    assert lineage["inputs"]["model"]["uri"] == "builtin://digits-cnn"
    assert len(lineage["inputs"]["data.eval"]["sha256"]) == 64


def test_verify_passes_then_catches_a_tampered_model(s3_env, published) -> None:
    bucket, prefix = published
    clean = _cli("verify", f"s3://{bucket}/{prefix}/")
    assert clean.returncode == 0, clean.stderr
    assert "artifacts match lineage.json" in clean.stderr
    client = s3_env.client()
    original = client.get_object(bucket, f"{prefix}/report.html").read()
    forged = original.replace(b"<h1>", b"<h1>forged ")
    client.put_object(bucket, f"{prefix}/report.html", io.BytesIO(forged), len(forged))
    tampered = _cli("verify", f"s3://{bucket}/{prefix}/")
    assert tampered.returncode == 1
    assert f"s3://{bucket}/{prefix}/report.html" in tampered.stderr
    assert "Traceback" not in tampered.stderr
