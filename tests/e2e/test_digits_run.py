"""The embedded default, end to end: `modelpress run` on the digits example through kfp.local."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess,
                                                                  Path]:
    output = tmp_path_factory.mktemp("digits-out")
    completed = subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "run",
         str(ROOT / "examples" / "digits-prune-quantize.yaml"), "--output", str(output)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,  # as the README runs it
        env={**os.environ, "COLUMNS": "200"})
    return completed, output


def test_run_succeeds_and_meets_the_issue_bar(digits_run) -> None:
    completed, output = digits_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads((output / "results.json").read_text())
    results = document["results"]
    assert results["compressionRatio"] >= 3.5
    assert results["accuracyDrop"] <= 0.01
    assert results["baseline"]["metric"]["name"] == "accuracy"
    assert results["baseline"]["metric"]["value"] >= 0.95
    assert results["compressed"]["nonzeroParameters"] < results["baseline"]["nonzeroParameters"]
    cpu = next(pool for pool in results["benchmarks"] if pool["pool"] == "cpu")
    assert cpu["available"] and set(cpu["batches"]) == {"1", "64"}
    assert results["speedup"]["cpu"] == cpu["speedup"]["64"]


def test_every_step_reports_its_own_time(digits_run) -> None:
    completed, output = digits_run
    steps = json.loads((output / "results.json").read_text())["steps"]
    assert [s["name"] for s in steps] == ["fetch", "prune", "quantize", "validate",
                                          "benchmark-cpu", "report"][:len(steps)]
    assert all(s["phase"] == "Succeeded" and s["durationSeconds"] > 0 for s in steps)


def test_artifacts_are_published_and_usable(digits_run) -> None:
    import numpy as np
    import onnxruntime as ort

    completed, output = digits_run
    assert "<img" in (output / "report.html").read_text()
    lineage = json.loads((output / "lineage.json").read_text())
    model = lineage["artifacts"]["model.onnx"]
    assert model["producer"] == "quantize" and len(model["sha256"]) == 64
    session = ort.InferenceSession(str(output / "model.onnx"))
    logits = session.run(None, {"x": np.zeros((3, 1, 8, 8), dtype=np.float32)})[0]
    assert logits.shape == (3, 10)


def test_cli_prints_the_results_on_stdout(digits_run) -> None:
    completed, output = digits_run
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["output"] == str(output)
    assert summary["wallSeconds"] > 0
    assert "compression ratio" in completed.stderr
    for step in ("fetch", "prune", "quantize", "validate", "benchmark-cpu", "report"):
        assert f"✓ {step}" in completed.stderr, f"no progress line for {step}"
