"""Search: one spec parameter takes each candidate value; the select step keeps the winner.

The pipeline builder applies the values (modelpress.pipelines.build): each candidate is its
own chain of steps with plain options, validated like any job. Select then times every
candidate against the others on one machine and keeps the most compressed within
`maxAccuracyDrop` (objective `size`) or the fastest (objective `latency`). When none
qualifies, the original model is what comes out, validated, with every candidate's
figures and the reason: search never hands on a model that misses its target. Whatever
is kept is benchmarked afterwards on every pool, like the model of a job without search.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from modelpress.api import Search
from modelpress.components.benchmark import p50_latencies
from modelpress.components.data import Arrays
from modelpress.components.fetch import BASELINE_ONNX
from modelpress.components.modelio import read_manifest, write_manifest
from modelpress.components.onnxfiles import copy_onnx
from modelpress.components.result import timed
from modelpress.components.selection import Measured, choose
from modelpress.records import (
    FetchRecord,
    LatencyProbe,
    Ledger,
    SelectRecord,
    ValidateRecord,
    last_of,
    records_of,
)


def candidate_names(search: Search) -> list[str]:
    return [f"{search.parameter}={value}" for value in search.values]


def _measured(name: str, ledger: Ledger, latency_ms: float) -> Measured:
    validation = last_of(ledger, ValidateRecord)
    return Measured(name=name, accuracy_drop=round(validation.accuracy_drop, 6),
                    size_bytes=validation.compressed.size_bytes, latency_ms=latency_ms)


def select(search: Search, probe: LatencyProbe, original: Path, evaluation: Arrays,
           models: list[Path], ledgers: list[Ledger], compressed_out: Path
           ) -> tuple[Ledger, SelectRecord]:
    """Copy the kept model (ONNX) to `compressed_out`; return the ledger that led to it
    (the winner's steps, or fetch and the original's validation) and select's record."""
    names = candidate_names(search)
    with timed() as clock:
        latencies = p50_latencies({name: model / "model.onnx"
                                   for name, model in zip(names, models, strict=True)},
                                  evaluation, probe)
        measured = [_measured(name, ledger, latencies[name])
                    for name, ledger in zip(names, ledgers, strict=True)]
        winner, judged = choose(measured, search.max_accuracy_drop, search.objective)
        if winner is not None:
            shutil.copytree(models[names.index(winner.name)], compressed_out,
                            dirs_exist_ok=True)
    candidates = [candidate.as_candidate() for candidate in judged]
    if winner is not None:
        reason = next(candidate.reason for candidate in judged if candidate.chosen)
        record = SelectRecord(candidates=candidates, chosen=winner.name,
                              message=f"chose {winner.name}: {reason}")
        return ledgers[names.index(winner.name)], clock.stamp(record)
    record = SelectRecord(candidates=candidates, message=(
        f"no candidate kept the accuracy drop within {search.max_accuracy_drop}; the "
        "original model is kept"))
    kept = _original_validated(original, evaluation, compressed_out, ledgers[0])
    return kept, clock.stamp(record)


def _original_validated(original: Path, evaluation: Arrays, out: Path,
                        any_ledger: Ledger) -> Ledger:
    """When nothing qualifies: the original (its fp32 ONNX baseline) validated as the
    outcome, recorded under the name the candidates' validate step has."""
    from modelpress.components.validate import validate

    staged = out.parent / f"{out.name}-original"
    write_manifest(staged, read_manifest(original).with_format("onnx"))
    copy_onnx(original / BASELINE_ONNX, staged / "model.onnx")
    validation = validate(original, staged, evaluation, out)
    shutil.rmtree(staged)
    name = last_of(any_ledger, ValidateRecord).name
    return [*records_of(any_ledger, FetchRecord), validation.model_copy(update={"name": name})]
