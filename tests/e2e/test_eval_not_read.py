"""No decision reads the eval set: a digits job (prune, distill, auto quantization) run twice
through the steps' own runners, the second time with the eval labels shuffled, decides
everything alike, while the figures it reports differ.

Candidates are timed by a stand-in that ranks them by file size, so that the one figure
that is not a function of the data (latency) cannot make the two runs differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelpress.api import CompressionSpec
from modelpress.components import quantize_auto, zoo
from modelpress.components.data import save_arrays
from modelpress.components.ops_runtime import (
    Chain,
    run_distill,
    run_fetch,
    run_prune,
    run_quantize,
    run_validate,
)
from modelpress.records import (
    DistillRecord,
    FetchRecord,
    LatencyProbe,
    Ledger,
    LossyRecord,
    PruneRecord,
    QuantizeRecord,
    ValidateRecord,
    last_of,
    read_ledger,
    records_of,
)

pytestmark = pytest.mark.e2e
PROBE = LatencyProbe(batch_size=1, threads=1)


def _spec(evaluation: Path, train: Path) -> CompressionSpec:
    return CompressionSpec.model_validate({
        "model": {"uri": "builtin://digits-cnn", "task": "classification"},
        "data": {"eval": evaluation.as_uri(), "train": train.as_uri()},
        "steps": [{"prune": {"sparsity": 0.6}},
                  {"distill": {"student": "builtin://digits-mlp", "epochs": 1,
                               "learningRate": 0.003}},
                  {"quantize": {"mode": "auto", "maxAccuracyDrop": 0.5}}]})


def _by_size(models: dict[str, Path], evaluation: object, probe: LatencyProbe
             ) -> dict[str, float]:
    return {name: path.stat().st_size / 1e6 for name, path in models.items()}


def _run(work: Path, spec: CompressionSpec) -> Ledger:
    """fetch, the job's steps and validate, each through its KFP component's runner."""
    original, datasets = work / "original", work / "datasets"
    ledger = work / "fetch.json"
    run_fetch("fetch", spec.model_dump_json(by_alias=True, exclude_none=True), False,
              original, datasets, ledger)
    model = original
    runners = {"prune": run_prune, "distill": run_distill}
    for step in spec.steps:
        chain = Chain(datasets, model, ledger, work / step.kind, work / f"{step.kind}.json")
        options = step.options.model_dump_json(by_alias=True, exclude_none=True)
        if step.kind == "quantize":
            run_quantize(step.kind, options, PROBE.model_dump_json(), original, chain)
        else:
            runners[step.kind](step.kind, options, original, chain)
        model, ledger = chain.model_out, chain.ledger_out
    run_validate("validate", original, Chain(datasets, model, ledger, work / "validated",
                                             work / "validate.json"))
    return read_ledger(work / "validate.json")


def _decisions(ledger: Ledger) -> dict[str, object]:
    """Everything the job decided, and the figures it decided on."""
    distilled = last_of(ledger, DistillRecord)
    quantized = last_of(ledger, QuantizeRecord)
    return {
        "data": last_of(ledger, FetchRecord).decision_data,
        "spent": [(r.name, r.validation_drop) for r in records_of(ledger, LossyRecord)],
        "distill": (distilled.kept, distilled.holdout_accuracy_kd,
                    distilled.holdout_accuracy_labels_only, distilled.holdout_rows),
        "auto": [(c.name, c.accuracy_drop, c.chosen, c.reason) for c in quantized.candidates],
        "pruned": last_of(ledger, PruneRecord).nonzero_parameters,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ledger, Ledger]:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(quantize_auto, "p50_latencies", _by_size)
    work = tmp_path_factory.mktemp("eval-not-read")
    test = zoo.digits("test")
    shuffled = {**test, "y": np.random.default_rng(7).permutation(test["y"])}
    save_arrays(test, work / "eval.npz")
    save_arrays(shuffled, work / "eval-shuffled.npz")
    save_arrays({name: array[:600] for name, array in zoo.digits("train").items()},
                work / "train.npz")
    try:
        return (_run(work / "true", _spec(work / "eval.npz", work / "train.npz")),
                _run(work / "shuffled", _spec(work / "eval-shuffled.npz", work / "train.npz")))
    finally:
        monkeypatch.undo()


def test_every_decision_is_alike_when_the_eval_labels_are_shuffled(runs) -> None:
    true, shuffled = runs
    decided = _decisions(true)
    assert decided == _decisions(shuffled)
    # The decisions were real ones, made on the validation split carved from train.
    data = decided["data"]
    assert data is not None and data.source == "data.train" and data.carved and data.rows == 120
    assert len(decided["auto"]) >= 3 and sum(chosen for _, _, chosen, _ in decided["auto"]) <= 1
    assert all(drop is not None for _, drop in decided["spent"])
    assert decided["distill"][3] == data.rows


def test_the_reported_figures_do_differ(runs) -> None:
    true, shuffled = runs
    reported = [last_of(ledger, ValidateRecord) for ledger in (true, shuffled)]
    baseline = [record.baseline.metrics["accuracy"] for record in reported]
    compressed = [record.compressed.metrics["accuracy"] for record in reported]
    assert baseline[0] > 0.9 > 0.3 > baseline[1]
    assert compressed[0] != compressed[1]
    assert reported[0].drop_intervals != reported[1].drop_intervals
