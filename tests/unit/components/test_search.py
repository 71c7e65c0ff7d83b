"""Select: keep the best candidate within the bar, or the original, validated, when none is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelpress.api import Search
from modelpress.components.fetch import BASELINE_ONNX
from modelpress.components.modelio import Manifest, write_manifest
from modelpress.components.search import candidate_names, select
from modelpress.records import (
    FetchRecord,
    LatencyProbe,
    Ledger,
    MeasuredModel,
    PruneRecord,
    ValidateRecord,
)

PROBE = LatencyProbe(batch_size=4, threads=1)
MANIFEST = Manifest(format="onnx", task="classification", inputs=["x"])


def _linear_onnx(path: Path, weights: np.ndarray) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _evaluation() -> dict[str, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    return {"x": x, "y": (x[:, :3]).argmax(axis=1)}


def _ledger(drop: float, size: int) -> Ledger:
    side = MeasuredModel(size_bytes=4000, parameters=12, nonzero_parameters=12,
                         metrics={"accuracy": 0.9})
    return [FetchRecord(name="fetch", format="onnx", inputs=["x"], eval_rows=32,
                        lineage_inputs={}),
            PruneRecord(name="prune", parameters_before=12, parameters=12, nonzero_parameters=6,
                        parameter_reduction=0.5),
            ValidateRecord(name="validate", metric_name="accuracy", baseline=side,
                           compressed=MeasuredModel(size_bytes=size, parameters=12,
                                                    nonzero_parameters=6,
                                                    metrics={"accuracy": 0.9 - drop}))]


@pytest.fixture
def candidates(tmp_path: Path) -> tuple[Path, list[Path]]:
    identity = np.eye(4, 3)
    original = tmp_path / "original"
    write_manifest(original, MANIFEST)
    _linear_onnx(original / BASELINE_ONNX, identity)
    models = []
    for position in range(3):
        folder = tmp_path / f"candidate-{position}"
        write_manifest(folder, MANIFEST)
        _linear_onnx(folder / "model.onnx", identity * (position + 1))
        models.append(folder)
    return original, models


SEARCH = Search(parameter="steps[0].prune.sparsity", values=[0.3, 0.6, 0.9],
                max_accuracy_drop=0.01)


def test_the_most_compressed_candidate_within_the_bar_is_kept(
        tmp_path: Path, candidates: tuple[Path, list[Path]]) -> None:
    original, models = candidates
    ledgers = [_ledger(0.0, 3000), _ledger(0.005, 2000), _ledger(0.2, 1000)]
    kept, record = select(SEARCH, PROBE, original, _evaluation(), models, ledgers,
                          tmp_path / "kept")
    assert record.chosen == "steps[0].prune.sparsity=0.6"
    assert record.message == ("chose steps[0].prune.sparsity=0.6: smallest within the accuracy "
                              "bar 0.01")
    assert kept == ledgers[1]
    assert (tmp_path / "kept" / "model.onnx").read_bytes() == \
        (models[1] / "model.onnx").read_bytes()
    assert [c.name for c in record.candidates] == candidate_names(SEARCH)
    assert [c.chosen for c in record.candidates] == [False, True, False]
    assert all(c.latency_ms is not None and c.latency_ms > 0 for c in record.candidates)
    assert record.candidates[2].reason == "accuracy drop 0.2000 exceeds 0.01"


def test_when_none_qualifies_the_original_is_kept_and_validated(
        tmp_path: Path, candidates: tuple[Path, list[Path]]) -> None:
    original, models = candidates
    ledgers = [_ledger(0.1, 3000), _ledger(0.2, 2000), _ledger(0.3, 1000)]
    kept, record = select(SEARCH, PROBE, original, _evaluation(), models, ledgers,
                          tmp_path / "kept")
    assert record.chosen is None and not any(c.chosen for c in record.candidates)
    assert "the original model is kept" in record.message
    assert [(type(r).__name__, r.name) for r in kept] == [("FetchRecord", "fetch"),
                                                          ("ValidateRecord", "validate")]
    validation = kept[1]
    assert isinstance(validation, ValidateRecord) and validation.accuracy_drop == 0.0
    assert (tmp_path / "kept" / "model.onnx").read_bytes() == \
        (original / BASELINE_ONNX).read_bytes()
    assert not (tmp_path / "kept-original").exists()
