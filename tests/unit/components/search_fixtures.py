"""A fetched tiny digits CNN and a search over it, shared by the search tests (and run as a
script by the test that kills a search half way: `python search_fixtures.py WORK SPEC`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from modelpress.api import CompressionSpec
from modelpress.components.data import load_arrays
from modelpress.components.search import SearchRun, TrialInputs, search
from modelpress.records import LatencyProbe, Ledger, SelectRecord

DATA = {"eval": "builtin://digits?split=test", "train": "builtin://digits?split=train"}
PROBE = LatencyProbe(batch_size=8, threads=1)


def digits_spec(search: dict[str, Any]) -> CompressionSpec:
    """Structured prune (no fine-tuning: fast) then dynamic int8, searched by `search`."""
    return CompressionSpec.model_validate({
        "model": {"uri": "builtin://digits-cnn", "task": "classification"}, "data": DATA,
        "steps": [{"prune": {"structured": True, "sparsity": 0.5}},
                  {"quantize": {"mode": "dynamic"}}],
        "search": {"maxAccuracyDrop": 0.5, **search}})


def fetched(work: Path) -> Ledger:
    """The original model and datasets under `work` (fetched once)."""
    from modelpress.components.fetch import fetch

    if not (work / "ledger.json").is_file():
        record = fetch(digits_spec({"parameter": "steps[0].prune.sparsity", "values": [0.5]}),
                       work / "original", work / "datasets")
        (work / "ledger.json").write_text(record.model_dump_json(), encoding="utf-8")
    from modelpress.records import FetchRecord

    return [FetchRecord.model_validate_json((work / "ledger.json").read_text())]


def run_search(work: Path, spec: CompressionSpec, out: Path) -> tuple[Ledger, SelectRecord]:
    """The whole search step on the fetched model; its output store is `out/output`."""
    ledger = fetched(work)
    evaluation = load_arrays(work / "datasets" / "eval.npz")
    inputs = TrialInputs(work / "original", decision=evaluation,
                         train=load_arrays(work / "datasets" / "train.npz"), calibration=None)
    run = SearchRun(spec, PROBE, auto_bar=0.01, output=str(out / "output"))
    return search(run, inputs, evaluation, ledger, out / "compressed")


if __name__ == "__main__":
    run_search(Path(sys.argv[1]), CompressionSpec.model_validate_json(sys.argv[2]),
               Path(sys.argv[3]))
