"""A Hugging Face image classifier folder and a class-per-subfolder image folder end to end,
handed over as a user would (file:// uris): the builtin digits ViT (genuinely trained) is
pruned structurally and quantized, and the figures are honest: onnxruntime on the published
model, fed by the published image processor, reproduces the reported accuracy, and the
baseline's reported accuracy is the original model's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _images(folder: Path) -> tuple[list[Path], np.ndarray]:
    """Every image of the folder in a fixed order, with its class (the subfolder's name)."""
    paths = sorted(folder.glob("*/*.png"))
    return paths, np.array([int(path.parent.name) for path in paths])


def _pixels(processor_folder: Path, paths: list[Path]) -> np.ndarray:
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(processor_folder), local_files_only=True)
    images = [Image.open(path).convert("RGB") for path in paths]
    return processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess,
                                                                 Path, Path, Path]:
    from modelpress.components import zoo

    work = tmp_path_factory.mktemp("hf-image")
    model, evaluation = zoo.digits_vit_folder(), zoo.digits_image_folder("test")
    job = {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
           "metadata": {"name": "hf-image", "namespace": "default"},
           "spec": {"model": {"uri": model.as_uri() + "/", "task": "image-classification"},
                    "data": {"eval": evaluation.as_uri() + "/"},
                    "steps": [{"prune": {"structured": True, "sparsity": 0.25}},
                              {"quantize": {"mode": "dynamic"}}],
                    "benchmark": {"batchSizes": [1], "iterations": 20,
                                  "pools": [{"name": "cpu", "device": "cpu", "threads": 1}]}}}
    (work / "job.yaml").write_text(yaml.safe_dump(job))
    output = work / "out"
    completed = subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "run", str(work / "job.yaml"),
         "--output", str(output)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"})
    return completed, output, model, evaluation


# validate runs the eval set in batches of this many rows; a dynamically quantized model's
# activation scales are per batch, so an independent check runs the same batches.
VALIDATE_BATCH = 64


def _accuracy(onnx_file: Path, pixels: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file))
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: pixels[start:start + VALIDATE_BATCH]})[0]
                             for start in range(0, len(pixels), VALIDATE_BATCH)])
    return float((logits.argmax(-1) == labels).mean())


def test_the_published_model_reproduces_the_reported_accuracy(image_run) -> None:
    completed, output, _, evaluation = image_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (output / "preprocessor_config.json").is_file()
    paths, labels = _images(evaluation)
    reported = json.loads((output / "results.json").read_text())["results"]
    accuracy = _accuracy(output / "model.onnx", _pixels(output, paths), labels)
    assert reported["compressed"]["metric"]["value"] == pytest.approx(accuracy, abs=1e-6)


def test_the_baseline_figure_is_the_original_models_own(image_run) -> None:
    import torch
    from transformers import AutoModelForImageClassification

    completed, output, model_folder, evaluation = image_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    paths, labels = _images(evaluation)
    model = AutoModelForImageClassification.from_pretrained(str(model_folder),
                                                            local_files_only=True).eval()
    with torch.no_grad():
        logits = model(pixel_values=torch.from_numpy(_pixels(model_folder, paths))).logits
    accuracy = float((logits.argmax(-1).numpy() == labels).mean())
    reported = json.loads((output / "results.json").read_text())["results"]
    assert reported["baseline"]["metric"]["value"] == pytest.approx(accuracy, abs=1e-6)
    assert accuracy > 0.85  # a trained model, so the figures mean something
    assert reported["compressed"]["parameters"] < reported["baseline"]["parameters"]
