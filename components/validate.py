"""Validate: the task metric of the original and the compressed model, both through ORT.

Classification: top-1 accuracy on labelled data. Embeddings: the mean (and min) cosine of
each compressed embedding to the original's, and the Spearman correlation of all pairwise
similarities (does the compressed model still rank pairs alike?).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from modelpress.components.data import LABELS, Arrays
from modelpress.components.fetch import BASELINE_ONNX
from modelpress.components.modelio import load_torch, onnx_working_model, read_manifest
from modelpress.components.noise import drop_intervals
from modelpress.components.onnxstats import onnx_figures, run_batched, session
from modelpress.components.result import timed
from modelpress.records import MeasuredModel, ValidateRecord


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=-1) == labels).mean())


def cosine_to_reference(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(outputs, axis=-1) * np.linalg.norm(reference, axis=-1)
    return (outputs * reference).sum(axis=-1) / np.maximum(norms, 1e-12)


def pairwise_spearman(outputs: np.ndarray, reference: np.ndarray) -> float:
    from scipy.stats import spearmanr

    upper = np.triu_indices(len(outputs), k=1)
    return float(spearmanr(_similarities(outputs)[upper], _similarities(reference)[upper])[0])


def _similarities(embeddings: np.ndarray) -> np.ndarray:
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=-1, keepdims=True), 1e-12)
    return unit @ unit.T


def row_scores(task: str, outputs: np.ndarray, reference: np.ndarray,
               labels: np.ndarray | None) -> np.ndarray:
    """The headline metric of each row, whose mean it is: 1.0/0.0 for a correct/wrong
    class, the cosine to the original's embedding otherwise."""
    if task == "classification":
        assert labels is not None
        return (outputs.argmax(axis=-1) == labels).astype(np.float64)
    return cosine_to_reference(outputs, reference).astype(np.float64)


def headline_drop(task: str, outputs: np.ndarray, reference: np.ndarray,
                  labels: np.ndarray | None) -> float:
    """The headline metric of the reference (the original) minus that of `outputs`."""
    return float(row_scores(task, reference, reference, labels).mean()
                 - row_scores(task, outputs, reference, labels).mean())


def task_metrics(task: str, outputs: np.ndarray, reference: np.ndarray,
                 labels: np.ndarray | None) -> dict[str, float]:
    """The headline metric first (`accuracy` or `cosine`), then supporting ones."""
    if task == "classification":
        assert labels is not None
        return {"accuracy": accuracy(outputs, labels),
                "agreement": float((outputs.argmax(-1) == reference.argmax(-1)).mean())}
    cosines = cosine_to_reference(outputs, reference)
    return {"cosine": float(cosines.mean()), "cosineMin": float(cosines.min()),
            "spearman": pairwise_spearman(outputs, reference)}


def ensure_onnx(model_in: Path, sample: Arrays, onnx_out: Path) -> Path:
    """The compressed model as ONNX in `onnx_out` (exported fp32 if still torch)."""
    manifest = read_manifest(model_in)
    if manifest.format == "onnx":
        shutil.copytree(model_in, onnx_out, dirs_exist_ok=True)
    else:
        onnx_working_model(load_torch(model_in), manifest, sample, onnx_out)
    return onnx_out / "model.onnx"


def _measured(path: Path, metrics: dict[str, float]) -> MeasuredModel:
    return MeasuredModel.model_validate({**onnx_figures(path), "metrics": metrics})


def validate(original: Path, model_in: Path, evaluation: Arrays, onnx_out: Path
             ) -> ValidateRecord:
    """Both models' task metrics on the eval set, with the drop's bootstrap intervals
    (`noise`); the working model lands in `onnx_out` as ONNX (exported fp32 if it is still
    torch). The only step that reads the eval set's figures."""
    with timed() as clock:
        task = read_manifest(original).task
        compressed_onnx = ensure_onnx(model_in, evaluation, onnx_out)
        reference = run_batched(session(original / BASELINE_ONNX), evaluation)
        outputs = run_batched(session(compressed_onnx), evaluation)
        labels = evaluation.get(LABELS)
        baseline_metrics = task_metrics(task, reference, reference, labels)
        compressed_metrics = task_metrics(task, outputs, reference, labels)
        headline = next(iter(compressed_metrics))
        record = ValidateRecord(
            metric_name=headline,
            baseline=_measured(original / BASELINE_ONNX, baseline_metrics),
            compressed=_measured(compressed_onnx, compressed_metrics),
            drop_intervals=drop_intervals(row_scores(task, reference, reference, labels),
                                          row_scores(task, outputs, reference, labels)),
            message=f"{headline} {baseline_metrics[headline]:.4f} -> "
                    f"{compressed_metrics[headline]:.4f} on {len(outputs)} rows")
    return clock.stamp(record)
