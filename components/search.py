"""Search: one spec parameter takes each candidate value; the select step picks the winner.

The winner is the most compressed candidate within `maxAccuracyDrop` (objective `size`),
or the fastest (objective `latency`). When none qualifies, the original model is what
comes out, with every candidate's figures and the reason: search never hands on a model
that misses its target.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from modelpress.api import CompressionSpec
from modelpress.components.data import Arrays
from modelpress.components.fetch import BASELINE_ONNX
from modelpress.components.modelio import Manifest, read_manifest, write_manifest
from modelpress.components.result import StepResult, read_ledger, timed
from modelpress.components.selection import Measured, choose

_PARAMETER = re.compile(r"^steps\[(\d+)\]\.(\w+)\.(\w+)$")


def apply_candidate(spec: CompressionSpec, candidate: int) -> CompressionSpec:
    """The spec with the searched parameter set to the candidate's value (-1: unchanged)."""
    if spec.search is None or candidate < 0:
        return spec
    match = _PARAMETER.match(spec.search.parameter)
    assert match, "the spec's validator checked the parameter's form"
    index, kind, field = int(match[1]), match[2], match[3]
    wire = spec.to_wire()
    wire["steps"][index][kind][field] = spec.search.values[candidate]
    return CompressionSpec.model_validate(wire)


def candidate_figures(ledger: list[dict[str, Any]], name: str) -> Measured:
    """Accuracy drop and size from validate; p50 at the largest batch of the first pool."""
    validation = next(e for e in ledger if e["step"] == "validate")["figures"]
    metric = validation["metricName"]
    drop = validation["baseline"]["metrics"][metric] - validation["compressed"]["metrics"][metric]
    latency = None
    for entry in ledger:
        figures = entry["figures"]
        if entry["step"].startswith("benchmark-") and figures.get("available"):
            largest = max(figures["batches"], key=int)
            latency = figures["batches"][largest]["compressed"]["p50"]
            break
    return Measured(name=name, accuracy_drop=round(drop, 6),
                    size_bytes=validation["compressed"]["sizeBytes"], latency_ms=latency)


def select(spec: CompressionSpec, original: Path, evaluation: Arrays, models: list[Path],
           ledgers: list[Path], compressed_out: Path) -> tuple[list[dict[str, Any]], StepResult]:
    """Copy the winner to `compressed_out`; return the ledger to carry on and the step result."""
    from dataclasses import asdict

    assert spec.search is not None
    with timed("select") as result:
        entries = [read_ledger(path) for path in ledgers]
        names = [f"{spec.search.parameter}={value}" for value in spec.search.values]
        measured = [candidate_figures(ledger, name) for ledger, name in zip(entries, names,
                                                                             strict=True)]
        winner, judged = choose(measured, spec.search.max_accuracy_drop, spec.search.objective)
        result.figures = {"candidates": [asdict(c) for c in judged]}
        if winner is not None:
            chosen = names.index(winner.name)
            shutil.copytree(models[chosen], compressed_out, dirs_exist_ok=True)
            carried = entries[chosen]
            result.message = f"chose {winner.name}: {winner.reason}"
        else:
            carried = _original_as_result(original, evaluation, compressed_out, entries[0])
            result.message = (f"no candidate kept the accuracy drop within "
                              f"{spec.search.max_accuracy_drop}; the original model is kept")
    return carried, result


def _original_as_result(original: Path, evaluation: Arrays, out: Path,
                        any_ledger: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """When nothing qualifies: the original (fp32 ONNX) validated as the outcome."""
    from dataclasses import asdict

    from modelpress.components.validate import validate

    source = read_manifest(original)
    staged = out.parent / f"{out.name}-original"
    shutil.copyfile(original / BASELINE_ONNX, _onnx_folder(staged, source) / "model.onnx")
    validation = validate(original, staged, evaluation, out)
    shutil.rmtree(staged)
    fetched = [entry for entry in any_ledger if entry["step"] == "fetch"]
    return fetched + [asdict(validation)]


def _onnx_folder(folder: Path, source: Manifest) -> Path:
    write_manifest(folder, source.with_format("onnx"))
    return folder
