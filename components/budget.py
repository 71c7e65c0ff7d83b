"""One accuracy budget per job: what each lossy step spent, measured on the validation split.

Fetch runs the original (its fp32 ONNX baseline) once on the validation rows and keeps
the outputs beside the datasets; after every step that changes the model, the step's
runner measures the new working model against them. The figure is cumulative (the model
so far against the original); a step's own spend is the difference from the step before.
Results list both (`Results.budget`), and a failed `maxAccuracyDrop` names the step that
spent the budget (modelpress.gates).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.api import Results, StepSpend
from modelpress.components.data import LABELS, Arrays, load_arrays
from modelpress.components.modelio import load_torch, read_manifest, torch_inputs
from modelpress.components.noise import REPORTED_LEVEL, interval_at, interval_line
from modelpress.components.onnxstats import run_batched, session
from modelpress.components.splits import VALIDATION
from modelpress.components.validate import headline_drop
from modelpress.records import (
    FetchRecord,
    LossyRecord,
    StepRecord,
    ValidateRecord,
    last_of,
    records_of,
)

REFERENCE = "validation-reference.npy"
_TORCH_BATCH = 64


def write_reference(baseline_onnx: Path, validation: Arrays, datasets: Path) -> None:
    """The original's outputs on the validation rows, for every later step to compare with."""
    np.save(datasets / REFERENCE, run_batched(session(baseline_onnx), validation))


def validation_drop(model: Path, datasets: Path) -> float | None:
    """The working model in `model`: its headline metric drop against the original on the
    validation split; None when the job has none."""
    path = datasets / f"{VALIDATION}.npz"
    if not path.is_file():
        return None
    validation = load_arrays(path)
    reference = np.load(datasets / REFERENCE)
    manifest = read_manifest(model)
    outputs = (run_batched(session(model / manifest.file), validation)
               if manifest.format == "onnx" else _torch_outputs(model, validation,
                                                                manifest.inputs))
    return round(headline_drop(manifest.task, outputs, reference, validation.get(LABELS)), 6)


def _torch_outputs(model: Path, arrays: Arrays, names: list[str]) -> np.ndarray:
    import torch

    module = load_torch(model)
    inputs = torch_inputs(arrays, names)
    with torch.no_grad():
        return torch.cat([module(*(tensor[start:start + _TORCH_BATCH] for tensor in inputs))
                          for start in range(0, len(inputs[0]), _TORCH_BATCH)]).numpy()


def spends(ledger: Sequence[StepRecord]) -> list[StepSpend]:
    """Each lossy step's cumulative drop on validation and its own share, in order."""
    spent: list[StepSpend] = []
    before = 0.0
    for record in records_of(ledger, LossyRecord):
        if record.validation_drop is None:
            continue
        spent.append(StepSpend(step=record.name, cumulative_drop=record.validation_drop,
                               spent=round(record.validation_drop - before, 6)))
        before = record.validation_drop
    return spent


def honest_figures(ledger: Sequence[StepRecord]) -> dict[str, Any]:
    """The Results fields that say how far the reported figures can be trusted: the drop's
    intervals, which data decided and which reported, and the budget each step spent."""
    validation = last_of(ledger, ValidateRecord)
    fetched = records_of(ledger, FetchRecord)
    intervals = validation.drop_intervals
    reported = interval_at(intervals, REPORTED_LEVEL)
    return {"accuracy_drop_interval": None if reported is None else [reported.low, reported.high],
            "accuracy_drop_intervals": intervals,
            "decision_data": fetched[-1].decision_data if fetched else None,
            "budget": spends(ledger)}


def honesty_line(results: Results) -> str:
    """The report's line on the figures' trust: the drop with its interval (as many
    decimals as the interval supports), which data decided and which reported, and what
    each lossy step spent."""
    use = results.decision_data
    parts = [interval_line(results.accuracy_drop, results.accuracy_drop_interval,
                           use.eval_rows if use else None)]
    if use is not None:
        origin = (f"a seeded split of {use.source} (seed {use.seed})" if use.carved
                  else use.source)
        parts.append(f"decisions made on {use.rows:,} validation rows from {origin}, "
                     f"figures reported on {use.eval_rows:,} eval rows")
    else:
        parts.append("no decision read data")
    if results.budget:
        parts.append("budget spent on validation: " + ", ".join(
            f"{spend.step} {spend.spent:+.4f}" for spend in results.budget))
    return "; ".join(parts) + "."
