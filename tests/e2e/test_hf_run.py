"""A Hugging Face text classifier folder and `.jsonl` data with named labels end to end:
`modelpress run` prunes heads and FFN neurons, distills and quantizes (auto), and the
published folder (model.onnx + tokenizer + config.json) reproduces the reported accuracy
with onnxruntime and the published tokenizer alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hf_folders import write_text_classifier

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
WORDS = ("module", "string", "socket", "thread", "path", "number", "time", "queue", "file")
ROWS = 48  # one batch of validate's 64: the published model is run on the same batches


NAMES = ("negative", "neutral", "positive")


def _texts(seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 9)))) for _ in range(ROWS)]


def _labels(texts: list[str]) -> np.ndarray:
    """A label the text determines (its first word), so training has something to learn."""
    return np.array([WORDS.index(text.split()[0]) % 3 for text in texts])


def _jsonl(path: Path, texts: list[str]) -> Path:
    rows = [{"text": text, "label": NAMES[label]} for text, label in zip(
        texts, _labels(texts), strict=True)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _tokenized(folder: Path, texts: list[str], names: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    encoded = tokenizer(texts, padding="longest", truncation=True, max_length=128,
                        return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in names}


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess,
                                                              Path, np.ndarray]:
    work = tmp_path_factory.mktemp("hf-run")
    folder = write_text_classifier(work / "classifier")
    labels = _labels(_texts())
    evaluation = _jsonl(work / "eval.jsonl", _texts())
    train = _jsonl(work / "train.jsonl", _texts(seed=1) + _texts(seed=2))
    job = {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
           "metadata": {"name": "hf-text", "namespace": "default"},
           "spec": {"model": {"uri": folder.as_uri() + "/", "task": "text-classification"},
                    "data": {"eval": evaluation.as_uri(), "train": train.as_uri(),
                             "calibration": train.as_uri()},
                    "steps": [{"prune": {"structured": True, "sparsity": 0.5}},
                              {"distill": {"epochs": 2}},
                              {"quantize": {"mode": "auto", "maxAccuracyDrop": 0.5}}],
                    "benchmark": {"batchSizes": [1], "iterations": 20,
                                  "pools": [{"name": "cpu", "device": "cpu", "threads": 1}]}}}
    (work / "job.yaml").write_text(yaml.safe_dump(job))
    output = work / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "run", str(work / "job.yaml"),
         "--output", str(output)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"})
    return completed, output, labels


def test_the_published_folder_is_usable_as_is(hf_run) -> None:
    completed, output, _ = hf_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    published = {path.name for path in output.iterdir()}
    assert {"model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json"} <= published
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}


def test_every_published_file_is_recorded_with_its_digest(hf_run) -> None:
    from modelpress.store import sha256_of

    completed, output, _ = hf_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    artifacts = json.loads((output / "lineage.json").read_text())["artifacts"]
    for name in ("model.onnx", "tokenizer.json", "config.json"):
        assert artifacts[name]["sha256"] == sha256_of(output / name)
    assert artifacts["tokenizer.json"]["producer"] == "fetch"


def test_onnxruntime_with_the_published_tokenizer_reproduces_the_reported_accuracy(
        hf_run) -> None:
    import onnxruntime as ort

    completed, output, labels = hf_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    reported = json.loads((output / "results.json").read_text())["results"]["compressed"]
    session = ort.InferenceSession(str(output / "model.onnx"))
    names = [item.name for item in session.get_inputs()]
    logits = session.run(None, _tokenized(output, _texts(), names))[0]
    accuracy = float((logits.argmax(-1) == labels).mean())
    assert reported["metric"]["name"] == "accuracy"
    assert accuracy == pytest.approx(reported["metric"]["value"], abs=1e-6)


def test_the_prune_removed_heads_and_neurons_and_auto_judged_its_candidates(hf_run) -> None:
    completed, output, _ = hf_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads((output / "results.json").read_text())
    prune = next(step for step in document["steps"] if step["name"] == "prune")
    assert "0.5 of the attention heads" in prune["message"]
    results = document["results"]
    assert results["compressed"]["parameters"] < results["baseline"]["parameters"]
    assert len(results["candidates"]) >= 2
