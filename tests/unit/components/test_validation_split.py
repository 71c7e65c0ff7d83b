"""The validation split decisions are made on: disjoint from the eval set, seeded, taken
out of the set it was carved from, and recorded in lineage and results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelpress.api import CompressionSpec
from modelpress.components.data import Dataset, load_arrays, save_arrays
from modelpress.components.splits import (
    MAX_CARVED_ROWS,
    carve_rows,
    row_keys,
    with_validation,
)
from modelpress.errors import InvalidInput

QUANTIZE = [{"quantize": {"mode": "dynamic"}}]
AUTO = [{"quantize": {"mode": "auto"}}]


def _spec(data: dict[str, str], steps: list[dict[str, Any]] = QUANTIZE,
          task: str = "classification") -> CompressionSpec:
    return CompressionSpec.model_validate({"model": {"uri": "builtin://digits-cnn",
                                                     "task": task},
                                           "data": data, "steps": steps})


def _rows(start: int, count: int, labels: bool = True) -> Dataset:
    """`count` distinct rows numbered from `start` (the number is each row's content)."""
    x = np.arange(start, start + count, dtype=np.float32).reshape(-1, 1) + 1.0
    arrays = {"x": x, **({"y": np.arange(count) % 10} if labels else {})}
    return Dataset(arrays, "a" * 64)


def _numbers(dataset: Dataset) -> set[float]:
    return set(dataset.arrays["x"][:, 0].tolist())


@pytest.mark.parametrize("count", [2, 7, 100, 1437, 20_000])
def test_a_carving_is_disjoint_seeded_and_sized(count: int) -> None:
    kept, carved = carve_rows(count)
    assert not set(kept) & set(carved) and len(kept) + len(carved) == count
    assert len(carved) == min(MAX_CARVED_ROWS, max(1, round(count * 0.2)))
    again = carve_rows(count)
    assert np.array_equal(again[1], carved) and np.array_equal(again[0], kept)
    if count > 10:
        assert not np.array_equal(carve_rows(count, seed=1)[1], carved)


def test_the_split_is_carved_out_of_train_and_every_field_reading_the_same_data() -> None:
    train, evaluation = _rows(0, 100), _rows(1000, 40)
    spec = _spec({"eval": "builtin://digits?split=test", "train": "file:///t.npz",
                  "calibration": "file:///t.npz"})
    split = with_validation(spec, {"eval": evaluation, "calibration": train, "train": train})
    validation = _numbers(split.datasets["validation"])
    assert len(validation) == 20 and validation <= _numbers(train)
    for name in ("train", "calibration"):
        assert _numbers(split.datasets[name]) == _numbers(train) - validation
    assert split.datasets["eval"] is evaluation
    use = split.decision_data
    assert use is not None and (use.source, use.carved, use.seed, use.rows, use.eval_rows) == (
        "data.train", True, 0, 20, 40)
    assert (split.held_out_rows, split.shrunk) == (20, ("calibration", "train"))
    assert split.note == ("decisions: 20 validation rows from a seeded 20% of data.train "
                          "(seed 0); figures: 40 eval rows")


def test_a_given_validation_set_is_used_whole_less_the_rows_also_in_eval() -> None:
    evaluation, given = _rows(0, 40), _rows(30, 50)  # rows 30..39 are in both
    spec = _spec({"eval": "builtin://digits?split=test", "validation": "file:///v.npz"})
    split = with_validation(spec, {"eval": evaluation, "validation": given})
    assert _numbers(split.datasets["validation"]) == set(range(41, 81))
    use = split.decision_data
    assert use is not None and (use.source, use.carved, use.seed, use.rows,
                                use.dropped_overlap) == ("data.validation", False, None, 40, 10)


def test_padding_does_not_hide_a_shared_row() -> None:
    short = {"input_ids": np.array([[101, 7, 102]]), "attention_mask": np.array([[1, 1, 1]])}
    padded = {name: np.pad(array, ((0, 0), (0, 2))) for name, array in short.items()}
    other = {"input_ids": np.array([[101, 8, 102, 0, 0]]),
             "attention_mask": np.array([[1, 1, 1, 0, 0]])}
    assert row_keys(short) == row_keys(padded) != row_keys(other)


@pytest.mark.parametrize(("data", "steps", "source"), [
    pytest.param({"calibration": "file:///c.npz"}, QUANTIZE, "data.calibration",
                 id="calibration-when-no-train"),
    pytest.param({"train": "file:///u.npz", "calibration": "file:///c.npz"}, QUANTIZE,
                 "data.calibration", id="an-unlabelled-train-is-passed-over"),
    pytest.param({}, AUTO, "data.eval", id="eval-only-when-a-step-decides"),
    pytest.param({}, QUANTIZE, None, id="no-split-when-nothing-decides"),
])
def test_where_the_split_comes_from(data: dict[str, str], steps: list[dict[str, Any]],
                                    source: str | None) -> None:
    spec = _spec({"eval": "builtin://digits?split=test", **data}, steps)
    read = {"eval": _rows(0, 50), "train": _rows(100, 50, labels=False),
            "calibration": _rows(200, 50)}
    split = with_validation(spec, {"eval": read["eval"],
                                   **{name: read[name] for name in data}})
    found = split.decision_data
    assert (found.source if found else None) == source
    if source == "data.eval":  # the reported set shrank to the rest, and says so
        assert found is not None and (found.rows, found.eval_rows) == (10, 40)
        assert not _numbers(split.datasets["validation"]) & _numbers(split.datasets["eval"])
        assert split.note is not None and split.note.endswith("the eval set shrank to the rest")


@pytest.mark.parametrize(("validation", "message"), [
    (_rows(0, 40, labels=False), "spec.data.validation: a classifier's decisions"),
    (_rows(0, 10), "spec.data.validation: every row of the validation split is also in "
                   "data.eval"),
])
def test_a_validation_set_that_cannot_decide_is_refused(validation: Dataset,
                                                        message: str) -> None:
    spec = _spec({"eval": "builtin://digits?split=test", "validation": "file:///v.npz"}, AUTO)
    with pytest.raises(InvalidInput, match=message):
        with_validation(spec, {"eval": _rows(0, 40), "validation": validation})


def test_a_job_that_decides_nothing_goes_without_a_split_that_would_be_all_eval() -> None:
    same = _rows(0, 40)  # eval and train read the same data
    spec = _spec({"eval": "file:///e.npz", "train": "file:///e.npz"})
    split = with_validation(spec, {"eval": _rows(0, 40), "train": same})
    assert split.decision_data is None and split.datasets["train"] is same
    assert "validation" not in split.datasets


def test_fetch_writes_and_records_the_split(tmp_path: Path) -> None:
    from modelpress.components.budget import REFERENCE
    from modelpress.components.fetch import fetch
    from modelpress.components.zoo import digits

    save_arrays({name: array[:200] for name, array in digits("train").items()},
                tmp_path / "train.npz")
    spec = _spec({"eval": "builtin://digits?split=test",
                  "train": (tmp_path / "train.npz").as_uri()})
    record = fetch(spec, tmp_path / "original", tmp_path / "datasets")
    validation = load_arrays(tmp_path / "datasets" / "validation.npz")
    assert len(validation["y"]) == 40
    assert len(load_arrays(tmp_path / "datasets" / "train.npz")["y"]) == 160
    assert np.load(tmp_path / "datasets" / REFERENCE).shape == (40, 10)
    lineage = record.lineage_inputs
    carved, train = lineage["data.validation"], lineage["data.train"]
    assert (carved.uri, carved.rows, carved.carved_from, carved.seed) == (
        spec.data.train, 40, "data.train", 0)
    assert (train.rows, train.held_out_rows) == (160, 40)
    assert lineage["data.eval"].rows == record.eval_rows == 360
    assert record.decision_data is not None and record.decision_data.rows == 40


def test_text_generation_refuses_a_validation_set_it_would_not_read() -> None:
    from modelpress.components.fetch import check_inputs

    spec = CompressionSpec.model_validate({
        "model": {"uri": "builtin://smollm2-135m", "task": "text-generation"},
        "data": {"eval": "builtin://english-text", "validation": "builtin://english-text"},
        "steps": [{"quantize": {"mode": "int4"}}]})
    with pytest.raises(InvalidInput, match="spec.data.validation: text-generation makes its "
                                           "decisions on data.calibration"):
        check_inputs(spec)
