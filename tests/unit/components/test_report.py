"""The report publishes a verifiable set of artifacts and the gates' verdict with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpress.api import Gates, Promotion
from modelpress.components.report import report
from modelpress.lineage import LineageInput, verify_outputs
from modelpress.records import (
    FetchRecord,
    Ledger,
    MeasuredModel,
    QuantizeRecord,
    ValidateRecord,
    read_results_document,
)
from modelpress.store import LocalStore, sha256_of


def _ledger(compressed_accuracy: float) -> Ledger:
    def side(size: int, accuracy: float) -> MeasuredModel:
        return MeasuredModel(size_bytes=size, parameters=100, nonzero_parameters=100,
                             metrics={"accuracy": accuracy})

    return [
        FetchRecord(name="fetch", format="bundle", inputs=["x"], eval_rows=10,
                    lineage_inputs={"model": LineageInput(uri="builtin://digits-cnn",
                                                          sha256="b" * 64)}),
        QuantizeRecord(name="quantize", mode="dynamic", size_bytes=1000, seconds=2.0),
        ValidateRecord(name="validate", metric_name="accuracy", baseline=side(4000, 0.93),
                       compressed=side(4150, compressed_accuracy)),
    ]


def _onnx(path: Path, label: str) -> None:
    """A one-node ONNX model that says which it is (its doc string)."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], label, [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, doc_string=label), str(path))


def _publish(tmp_path: Path, promotion: Promotion, accuracy: float = 0.93) -> Path:
    _onnx(tmp_path / "model.onnx", "compressed")
    _onnx(tmp_path / "baseline.onnx", "fp32 baseline")
    output = tmp_path / "out"
    record = report("report", "collapsed", promotion, _ledger(accuracy), tmp_path / "model.onnx",
                    tmp_path / "baseline.onnx", str(output))
    assert record.artifacts == read_results_document(str(output)).artifacts
    return output


FAILING = Promotion(gates=Gates(min_compression_ratio=3.0, max_accuracy_drop=0.01))


def test_failed_gates_are_listed_in_results_and_the_report(tmp_path: Path) -> None:
    output = _publish(tmp_path, FAILING, accuracy=0.10)
    verdict = read_results_document(str(output)).promotion
    assert verdict.decision == "Rejected"
    assert len(verdict.reasons) == 2
    assert verdict.reasons[0].startswith("compressionRatio 0.9639 is below minCompressionRatio 3")
    assert verdict.reasons[1].startswith("accuracyDrop 0.83 is above maxAccuracyDrop 0.01")
    page = (output / "report.html").read_text()
    banner = page[page.index("<h1>"):page.index("<p>Compression ratio")]
    assert "REJECTED" in banner and "2 gate(s) failed" in banner
    assert all(reason in banner for reason in verdict.reasons)


def test_passed_gates_say_so(tmp_path: Path) -> None:
    lenient = Promotion(gates=Gates(max_accuracy_drop=0.05))
    output = _publish(tmp_path, lenient)
    verdict = read_results_document(str(output)).promotion
    assert verdict.decision == "Promoted"
    assert "Gates passed" in (output / "report.html").read_text()


def test_no_gates_are_said_to_be_none(tmp_path: Path) -> None:
    output = _publish(tmp_path, Promotion())
    assert read_results_document(str(output)).promotion.reasons == ["no gates configured"]
    page = (output / "report.html").read_text()
    assert "No promotion gates set" in page and "REJECTED" not in page


def test_the_baseline_is_published_with_its_digest(tmp_path: Path) -> None:
    output = _publish(tmp_path, Promotion())
    assert (output / "baseline.onnx").read_bytes() == (tmp_path / "baseline.onnx").read_bytes()
    lineage = verify_outputs(LocalStore(output))
    assert set(lineage.artifacts) == {"model.onnx", "baseline.onnx", "report.html"}
    baseline = lineage.artifacts["baseline.onnx"]
    assert baseline.sha256 == sha256_of(tmp_path / "baseline.onnx")
    assert baseline.producer == "fetch"
    assert lineage.artifacts["model.onnx"].producer == "quantize"
    assert lineage.artifacts["report.html"].producer == "report"
    assert lineage.inputs["model"].sha256 == "b" * 64
    assert [step.name for step in lineage.steps] == ["fetch", "quantize", "validate"]
    document = json.loads((output / "results.json").read_text())
    assert document["artifacts"]["baseline"].endswith("/out/baseline.onnx")


@pytest.mark.parametrize("key", ["results.json", "lineage.json", "report.html", "model.onnx",
                                 "baseline.onnx"])
def test_published_files_are_readable_by_others(tmp_path: Path, key: str) -> None:
    output = _publish(tmp_path, Promotion())
    assert (output / key).stat().st_mode & 0o777 == 0o644


def test_a_model_with_external_data_is_published_with_it(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [weight])
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    _onnx(tmp_path / "baseline.onnx", "fp32 baseline")
    output = tmp_path / "out"
    record = report("report", "large", Promotion(), _ledger(0.93), tmp_path / "model.onnx",
                    tmp_path / "baseline.onnx", str(output))
    assert (output / "model.onnx.data").read_bytes() == (tmp_path / "model.onnx.data").read_bytes()
    assert record.sha256["model.onnx.data"] == sha256_of(tmp_path / "model.onnx.data")
    lineage = verify_outputs(LocalStore(output))
    assert lineage.artifacts["model.onnx.data"].producer == "quantize"
