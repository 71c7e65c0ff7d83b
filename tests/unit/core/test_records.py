"""The step contract: ledger records by kind, and results.json, each through one reader."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelpress.api import Candidate, MetricValue, ModelFigures, PoolBenchmark, Results, StepStatus
from modelpress.errors import StoreError
from modelpress.lineage import LineageInput
from modelpress.records import (
    Artifacts,
    BenchmarkRecord,
    FetchRecord,
    MeasuredModel,
    PromotionVerdict,
    PruneRecord,
    ResultsDocument,
    SelectRecord,
    ValidateRecord,
    last_of,
    read_ledger,
    read_results_document,
    records_of,
    write_ledger,
    write_results_document,
)

STARTED = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)


def _ledger() -> list:
    side = MeasuredModel(size_bytes=400, parameters=100, nonzero_parameters=100,
                         metrics={"accuracy": 0.9})
    return [
        FetchRecord(name="fetch", started_at=STARTED, seconds=1.0, format="bundle",
                    inputs=["x"], eval_rows=5,
                    lineage_inputs={"model": LineageInput(uri="builtin://digits-cnn",
                                                          sha256="a" * 64)}),
        PruneRecord(name="prune", started_at=STARTED, seconds=2.0, parameters_before=100,
                    parameters=100, nonzero_parameters=50, parameter_reduction=0.5),
        PruneRecord(name="prune", started_at=STARTED, seconds=2.0, parameters_before=100,
                    parameters=60, nonzero_parameters=30, parameter_reduction=0.7,
                    strategy="channels", removed_channels=12),
        ValidateRecord(name="validate", metric_name="accuracy", baseline=side,
                       compressed=side.model_copy(update={"metrics": {"accuracy": 0.85}})),
        SelectRecord(name="select", candidates=[Candidate(name="a", chosen=True)], chosen="a"),
        BenchmarkRecord(name="benchmark-cpu", benchmark=PoolBenchmark(
            pool="cpu", device="cpu", available=False, reason="busy")),
    ]


def test_a_ledger_reads_back_as_the_records_it_was(tmp_path: Path) -> None:
    path, ledger = tmp_path / "ledger.json", _ledger()
    write_ledger(ledger, path)
    assert read_ledger(path) == ledger


def test_each_record_says_its_kind_in_camel_case(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    write_ledger(_ledger(), path)
    wire = json.loads(path.read_text())
    assert [entry["kind"] for entry in wire] == ["fetch", "prune", "prune", "validate", "select",
                                                 "benchmark"]
    assert wire[0]["lineageInputs"]["model"]["uri"] == "builtin://digits-cnn"
    assert wire[2]["removedChannels"] == 12 and "startedAt" in wire[2]


def test_records_are_found_by_type_not_by_name() -> None:
    ledger = _ledger()
    assert [r.nonzero_parameters for r in records_of(ledger, PruneRecord)] == [50, 30]
    assert last_of(ledger, ValidateRecord).accuracy_drop == pytest.approx(0.05)
    with pytest.raises(StoreError, match="no DistillRecord"):
        from modelpress.records import DistillRecord

        last_of(ledger, DistillRecord)


@pytest.mark.parametrize(("content", "problem"), [
    ('[{"kind": "compress", "name": "x"}]', "0: Input tag 'compress' found using 'kind'"),
    ('[{"kind": "prune", "name": "x"}]', "0.prune.parametersBefore: Field required"),
    ("not json", "Invalid JSON"),
])
def test_a_ledger_that_is_not_one_is_refused_naming_the_file(tmp_path: Path, content: str,
                                                            problem: str) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(content)
    with pytest.raises(StoreError, match=f"ledger.json is not a modelpress step ledger: "
                                         f"{re.escape(problem)}"):
        read_ledger(path)


def _document() -> ResultsDocument:
    figures = ModelFigures(size_bytes=400, parameters=100,
                           metric=MetricValue(name="accuracy", value=0.9))
    return ResultsDocument(
        results=Results(baseline=figures, compressed=figures.model_copy(update={"size_bytes": 100}),
                        compression_ratio=4.0, accuracy_drop=0.0),
        artifacts=Artifacts(model="file:///o/model.onnx", baseline="file:///o/baseline.onnx",
                            report="file:///o/report.html", results="file:///o/results.json",
                            lineage="file:///o/lineage.json"),
        steps=[StepStatus(name="fetch", phase="Succeeded", duration_seconds=1.25),
               StepStatus(name="validate", phase="Succeeded", duration_seconds=0.5)],
        promotion=PromotionVerdict(decision="Rejected",
                                   reasons=["compressionRatio 4 is below minCompressionRatio 5"]))


def test_results_document_reads_back_from_a_folder(tmp_path: Path) -> None:
    write_results_document(_document(), tmp_path / "results.json")
    document = read_results_document(str(tmp_path))
    assert document == _document()
    assert document.compute_seconds == pytest.approx(1.75)
    wire = json.loads((tmp_path / "results.json").read_text())
    assert wire["promotion"]["decision"] == "Rejected"
    assert wire["results"]["compressionRatio"] == 4.0 and "reportUrl" not in wire["artifacts"]


def test_missing_results_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"results\.json does not exist"):
        read_results_document(str(tmp_path))


def test_results_that_are_not_a_document_name_the_field(tmp_path: Path) -> None:
    wire = _document().to_wire()
    del wire["promotion"]
    (tmp_path / "results.json").write_text(json.dumps(wire))
    with pytest.raises(StoreError, match=r"results\.json is not a modelpress results document: "
                                         r"promotion: Field required"):
        read_results_document(f"file://{tmp_path}")
