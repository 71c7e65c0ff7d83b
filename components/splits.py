"""The validation split: the data every decision is made on, kept apart from the eval set.

Where it comes from, first that applies (docs/evaluation.md):
1. `data.validation`, as given;
2. carved from `data.train`, else from `data.calibration`: a seeded 20% of it, at most
   1,000 rows; those rows leave the set they came from (and any other field naming the
   same data), so nothing trains or calibrates on what decides;
3. only when the job decides something on data (auto quantization, a search) and has
   neither: carved from `data.eval`, whose remainder is then what the job reports on.
A classifier's split needs labels, so an unlabelled train or calibration set is passed
over. Rows identical to an eval row (compared without trailing padding) are left out of
the split, so it never overlaps what the job reports; when that leaves nothing, a job that
decides nothing on data goes without a split (its steps then record no spend).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from modelpress.api import CompressionSpec, DecisionData
from modelpress.components.data import LABELS, Arrays, Dataset, input_names
from modelpress.errors import InvalidInput

VALIDATION = "validation"
VALIDATION_FRACTION = 0.2
MAX_CARVED_ROWS = 1000
SPLIT_SEED = 0
_CARVED_FROM = ("train", "calibration")


@dataclass(frozen=True)
class Split:
    """The datasets with the validation split among them (the set it was carved from
    shrunk), and what decided and what reports, as results and lineage state it."""

    datasets: dict[str, Dataset]
    decision_data: DecisionData | None
    held_out_rows: int = 0
    shrunk: tuple[str, ...] = ()  # the fields that gave up the held-out rows

    @property
    def note(self) -> str | None:
        """One line for the CLI: which data decides."""
        use = self.decision_data
        if use is None:
            return None
        origin = (f"a seeded {VALIDATION_FRACTION:.0%} of {use.source} (seed {use.seed})"
                  if use.carved else use.source)
        overlap = (f", {use.dropped_overlap:,} rows identical to eval rows left out"
                   if use.dropped_overlap else "")
        shrunk = "; the eval set shrank to the rest" if use.source == "data.eval" else ""
        return (f"decisions: {use.rows:,} validation rows from {origin}{overlap}; figures: "
                f"{use.eval_rows:,} eval rows{shrunk}")


def decides_on_data(spec: CompressionSpec) -> bool:
    """Whether a step of the job chooses by measuring on data (what carving eval is for)."""
    auto = any(step.kind == "quantize" and step.options.mode == "auto"  # type: ignore[attr-defined]
               for step in spec.steps)
    return auto or spec.search is not None


def rows_of(arrays: Arrays) -> int:
    return len(next(iter(arrays.values())))


def carve_rows(count: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(rows kept, rows carved) of a set of `count` rows, each in file order: a seeded 20%
    (at least one, at most MAX_CARVED_ROWS, never the whole set)."""
    carved = min(MAX_CARVED_ROWS, max(1, round(count * VALIDATION_FRACTION)), count - 1)
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[carved:]), np.sort(order[:carved])


def taken(arrays: Arrays, rows: np.ndarray) -> Arrays:
    return {name: np.asarray(array[rows]) for name, array in arrays.items()}


def row_keys(arrays: Arrays) -> list[bytes]:
    """A digest per row of the model inputs, trailing zero bytes (padding) left out, so a
    text tokenized to another padded length still matches."""
    names = input_names(arrays)
    keys = []
    for row in range(rows_of(arrays)):
        digest = hashlib.blake2b(digest_size=16)
        for name in names:
            value = np.ascontiguousarray(arrays[name][row]).tobytes().rstrip(b"\0")
            digest.update(len(value).to_bytes(8, "little") + value)
        keys.append(digest.digest())
    return keys


def without_eval_rows(split: Arrays, evaluation: Arrays) -> tuple[Arrays, int]:
    """`split` without the rows identical to an eval row, and how many were left out."""
    seen = set(row_keys(evaluation))
    kept = np.array([key not in seen for key in row_keys(split)])
    return taken(split, np.flatnonzero(kept)), int((~kept).sum())


def _usable(dataset: Dataset | None, classifier: bool) -> bool:
    return dataset is not None and rows_of(dataset.arrays) >= 2 and (
        not classifier or LABELS in dataset.arrays)


def _source(spec: CompressionSpec, datasets: dict[str, Dataset]) -> str | None:
    """The field the split comes from, or None when the job has no split."""
    classifier = spec.model.kind == "classification"
    if VALIDATION in datasets:
        if classifier and LABELS not in datasets[VALIDATION].arrays:
            raise InvalidInput("spec.data.validation", "a classifier's decisions are measured "
                                                       "against labels: give the set labels")
        return VALIDATION
    for name in _CARVED_FROM:
        if _usable(datasets.get(name), classifier):
            return name
    if not decides_on_data(spec):
        return None
    if rows_of(datasets["eval"].arrays) < 2:
        raise InvalidInput("spec.data.eval", "has one row: too few to carve the validation "
                                             "split decisions are made on; give "
                                             "data.validation")
    return "eval"


def with_validation(spec: CompressionSpec, datasets: dict[str, Dataset]) -> Split:
    """The datasets with the validation split as `validation` (module docstring)."""
    source = _source(spec, datasets)
    if source is None:
        return Split(datasets, None)
    origin = datasets[source]
    out = dict(datasets)
    held_out, shrunk = 0, ()
    if source == VALIDATION:
        split = origin.arrays
    else:
        kept_rows, carved_rows = carve_rows(rows_of(origin.arrays))
        split, held_out = taken(origin.arrays, carved_rows), len(carved_rows)
        shrunk = tuple(name for name, dataset in datasets.items() if dataset is origin)
        for name in shrunk:  # every field that read the same data
            out[name] = replace(origin, arrays=taken(origin.arrays, kept_rows))
    split, overlap = without_eval_rows(split, out["eval"].arrays)
    if rows_of(split) == 0:
        if not decides_on_data(spec):  # the split would only measure each step's spend
            return Split(datasets, None)
        raise InvalidInput(f"spec.data.{source}", "every row of the validation split is also "
                                                  "in data.eval; decisions need other data")
    carved = source != VALIDATION
    out[VALIDATION] = replace(origin, arrays=split, notes=(),
                              source_sha256=None if carved else origin.source_sha256)
    use = DecisionData(source=f"data.{source}",  # type: ignore[arg-type]
                       carved=carved, seed=SPLIT_SEED if carved else None, rows=rows_of(split),
                       dropped_overlap=overlap, eval_rows=rows_of(out["eval"].arrays))
    return Split(out, use, held_out, shrunk)
