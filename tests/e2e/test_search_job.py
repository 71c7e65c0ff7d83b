"""A search through the whole pipeline (kfp.local): trials inside select, the best so far in
the output, the kept model benchmarked and reported with the trials' Pareto front."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_a_tpe_search_runs_end_to_end_and_keeps_its_best(tmp_path: Path) -> None:
    job = yaml.safe_load((ROOT / "examples" / "digits-search.yaml").read_text())
    job["metadata"]["name"] = "digits-tpe"
    job["spec"]["steps"][0]["prune"]["schedule"] = {"iterations": 1, "fineTuneEpochs": 0}
    job["spec"]["steps"][1] = {"quantize": {"mode": "dynamic"}}
    job["spec"]["search"] = {
        "sampler": "tpe", "seed": 3, "maxTrials": 3, "maxAccuracyDrop": 0.5,
        "parameters": [{"parameter": "steps[0].prune.sparsity", "low": 0.1, "high": 0.6},
                       {"parameter": "steps[1].quantize.perChannel", "values": [True, False]}]}
    job["spec"]["benchmark"] = {"batchSizes": [8], "iterations": 5, "warmup": 1}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    output = tmp_path / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "run", str(tmp_path / "job.yaml"),
         "--output", str(output)], capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads((output / "results.json").read_text())
    assert [step["name"] for step in document["steps"]] == [
        "fetch", "prune", "quantize", "validate", "select", "benchmark-cpu", "report"]
    trials = json.loads((output / "search" / "trials.json").read_text())
    assert trials["finished"] and len(trials["trials"]) == 3
    chosen = [c for c in document["results"]["candidates"] if c["chosen"]]
    assert [c["name"] for c in chosen] == [trials["chosen"]]
    assert (output / "search" / "best" / "model.onnx").read_bytes() == \
        (output / "model.onnx").read_bytes()
    assert "Pareto front of the candidates" in (output / "report.html").read_text()
