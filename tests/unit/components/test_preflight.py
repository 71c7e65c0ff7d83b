"""The pre-flight: every dataset checked against what the model takes, and every step
against the model's format, before any step runs (and again, by the same code, in fetch)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelpress.api import CompressionSpec
from modelpress.components.data import conform
from modelpress.components.fetch import check_inputs, fetch
from modelpress.components.modelio import (
    Format,
    InputSpec,
    Signature,
    check_step_formats,
    onnx_signature,
)
from modelpress.errors import InvalidInput

EVAL = "spec.data.eval"
DIGITS = Signature(inputs=(InputSpec("x", "float32", ("batch", 1, 8, 8)),), classes=10)
TOKENS = Signature(inputs=(InputSpec("input_ids", "int64", ("batch", "sequence")),
                           InputSpec("attention_mask", "int64", ("batch", "sequence"))),
                   classes=None)


def _digits(rows: int = 6, **changes: np.ndarray) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"x": np.zeros((rows, 1, 8, 8), dtype=np.float32),
                                     "y": np.arange(rows, dtype=np.int64) % 10}
    return arrays | changes


def _refusal(arrays: dict[str, np.ndarray], signature: Signature = DIGITS,
             task: str = "classification") -> str:
    with pytest.raises(InvalidInput) as caught:
        conform(arrays, signature, EVAL, task)
    assert caught.value.where == EVAL
    return caught.value.problem


# ----------------------------------------------------------------------------- types


def test_float64_is_cast_to_the_models_type_with_one_note() -> None:
    arrays, notes = conform(_digits(x=np.ones((6, 1, 8, 8))), DIGITS, EVAL, "classification")
    assert arrays["x"].dtype == np.float32
    assert notes == [f"{EVAL}: array x is float64; cast to float32 for the model"]


def test_matching_types_need_no_note_and_keep_the_arrays() -> None:
    original = _digits()
    arrays, notes = conform(original, DIGITS, EVAL, "classification")
    assert notes == []
    assert arrays["x"] is original["x"]


def test_int32_token_ids_are_cast_to_int64() -> None:
    ids = np.ones((4, 7), dtype=np.int32)
    arrays, notes = conform({"input_ids": ids, "attention_mask": ids}, TOKENS, EVAL, "embedding")
    assert {array.dtype for array in arrays.values()} == {np.dtype(np.int64)}
    assert len(notes) == 2


def test_fractional_floats_are_not_cast_to_integer_inputs() -> None:
    ids = np.full((4, 7), 1.5)
    problem = _refusal({"input_ids": ids, "attention_mask": ids}, TOKENS, "embedding")
    assert "array input_ids is float64" in problem and "int64" in problem


def test_text_arrays_are_refused() -> None:
    problem = _refusal(_digits(x=np.array([["a"]] * 6)))
    assert "array x holds <U1 values" in problem


def test_values_beyond_float32_are_refused() -> None:
    problem = _refusal(_digits(x=np.full((6, 1, 8, 8), 1e300)))
    assert "array x has values beyond float32's range" in problem


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_naming_the_array_and_row(bad: float) -> None:
    x = np.zeros((6, 1, 8, 8), dtype=np.float32)
    x[4, 0, 2, 3] = bad
    assert _refusal(_digits(x=x)) == "array x holds NaN or infinite values (first in row 4)"


# ----------------------------------------------------------------------------- shapes


def test_a_flattened_image_is_refused_with_both_shapes() -> None:
    problem = _refusal(_digits(rows=360, x=np.zeros((360, 64), dtype=np.float32)))
    assert problem == "array x has shape (360, 64), the model takes (batch, 1, 8, 8)"


def test_channels_last_is_refused() -> None:
    problem = _refusal(_digits(x=np.zeros((6, 8, 8, 1), dtype=np.float32)))
    assert problem == "array x has shape (6, 8, 8, 1), the model takes (batch, 1, 8, 8)"


def test_a_symbolic_axis_takes_one_size_across_arrays() -> None:
    problem = _refusal({"input_ids": np.ones((4, 7), dtype=np.int64),
                        "attention_mask": np.ones((4, 5), dtype=np.int64)}, TOKENS, "embedding")
    assert problem == ("array attention_mask has shape (4, 5), the model takes (batch, "
                       "sequence), with sequence = 7 as in array input_ids")


def test_an_unknown_shape_accepts_any_layout() -> None:
    free = Signature(inputs=(InputSpec("x", "float32", None),), classes=None)
    arrays, _ = conform({"x": np.zeros((3, 2), dtype=np.float32)}, free, EVAL, "embedding")
    assert arrays["x"].shape == (3, 2)


def test_arrays_come_back_in_the_models_input_order() -> None:
    ids = np.ones((4, 7), dtype=np.int64)
    arrays, _ = conform({"attention_mask": ids, "input_ids": ids}, TOKENS, EVAL, "embedding")
    assert list(arrays) == ["input_ids", "attention_mask"]


def test_other_array_names_are_refused() -> None:
    problem = _refusal({"pixels": np.zeros((6, 1, 8, 8), dtype=np.float32)})
    assert "the model takes inputs ['x']" in problem and "['pixels']" in problem


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize(("labels", "expected"), [
    (np.array([0, 3, -1, 2, 1, 0]), "array y holds -1; labels are class indices from 0"),
    (np.array([0, 3, 10, 2, 1, 0]),
     "array y holds 10, but the model has 10 classes (labels 0..9)"),
    (np.array([0, 3, 2.5, 2, 1, 0]), "array y holds 2.5, which is no class index (row 2)"),
    (np.array([0, 3, np.nan, 2, 1, 0]), "array y holds nan, which is no class index (row 2)"),
    (np.zeros((6, 1), dtype=np.int64), "array y has shape (6, 1)"),
])
def test_labels_outside_the_models_classes_are_refused(labels: np.ndarray,
                                                       expected: str) -> None:
    assert expected in _refusal(_digits(y=labels))


def test_integral_float_labels_are_cast_to_int64() -> None:
    arrays, notes = conform(_digits(y=np.arange(6, dtype=np.float32)), DIGITS, EVAL,
                            "classification")
    assert arrays["y"].dtype == np.int64
    assert notes == [f"{EVAL}: array y is float32; cast to int64 for the model"]


def test_labels_of_an_embedding_model_are_left_alone() -> None:
    ids = np.ones((4, 7), dtype=np.int64)
    labels = np.array([-3.5, 2, 7, 1])
    arrays, notes = conform({"input_ids": ids, "attention_mask": ids, "y": labels}, TOKENS,
                            EVAL, "embedding")
    assert arrays["y"] is labels and notes == []


# ----------------------------------------------------------------------------- ONNX signature


def _onnx_digits(path: Path, classes: int = 10) -> Path:
    """A tiny digits classifier: flatten, then one matrix product to `classes` logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.zeros((64, classes), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["output"])], "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", classes])],
        [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_onnx_signature_reads_types_symbolic_dims_and_classes(tmp_path: Path) -> None:
    import onnx

    signature = onnx_signature(onnx.load(str(_onnx_digits(tmp_path / "m.onnx", classes=7))))
    assert signature == Signature(inputs=(InputSpec("x", "float32", ("batch", 1, 8, 8)),),
                                  classes=7)
    assert signature.inputs[0].shown() == "(batch, 1, 8, 8)"


def _spec(model: str, data: str, steps: list[dict[str, Any]] | None = None,
          **extra: Any) -> CompressionSpec:
    """A job on `model` with `data` for every dataset (train and calibration too)."""
    return CompressionSpec.model_validate({
        "model": {"uri": model}, "data": {"eval": data, "calibration": data, "train": data},
        "steps": steps or [{"quantize": {"mode": "dynamic"}}], **extra})


def test_check_inputs_casts_float64_for_an_onnx_model(tmp_path: Path) -> None:
    model = _onnx_digits(tmp_path / "m.onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((5, 1, 8, 8)), y=np.arange(5))
    notes = check_inputs(_spec(model.as_uri(), (tmp_path / "eval.npz").as_uri()))
    assert notes == [f"spec.data.{name}: array x is float64; cast to float32 for the model"
                     for name in ("eval", "calibration", "train")]


def test_fetch_applies_the_same_cast_and_says_so(tmp_path: Path) -> None:
    from modelpress.components.data import load_arrays

    model = _onnx_digits(tmp_path / "m.onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((5, 1, 8, 8)), y=np.arange(5))
    record = fetch(_spec(model.as_uri(), (tmp_path / "eval.npz").as_uri()),
                   tmp_path / "model", tmp_path / "data")
    assert load_arrays(tmp_path / "data" / "eval.npz")["x"].dtype == np.float32
    assert "array x is float64; cast to float32 for the model" in record.message
    assert (tmp_path / "model" / "baseline.onnx").is_file()


@pytest.mark.parametrize(("arrays", "expected"), [
    ({"x": np.zeros((5, 64), dtype=np.float32), "y": np.arange(5)},
     "array x has shape (5, 64), the model takes (batch, 1, 8, 8)"),
    ({"x": np.zeros((5, 1, 8, 8), dtype=np.float32), "y": np.array([0, 1, 2, 3, 12])},
     "array y holds 12, but the model has 10 classes"),
])
def test_check_inputs_refuses_what_the_onnx_model_cannot_take(
        tmp_path: Path, arrays: dict[str, np.ndarray], expected: str) -> None:
    model = _onnx_digits(tmp_path / "m.onnx")
    np.savez(tmp_path / "eval.npz", x=arrays["x"], y=arrays["y"])
    with pytest.raises(InvalidInput, match=re.escape(f"{EVAL}: {expected}")):
        check_inputs(_spec(model.as_uri(), (tmp_path / "eval.npz").as_uri()))


def test_fetch_refuses_the_same_as_the_preflight(tmp_path: Path) -> None:
    model = _onnx_digits(tmp_path / "m.onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((5, 64), dtype=np.float32), y=np.arange(5))
    with pytest.raises(InvalidInput, match=r"spec.data.eval: array x has shape \(5, 64\)"):
        fetch(_spec(model.as_uri(), (tmp_path / "eval.npz").as_uri()), tmp_path / "model",
              tmp_path / "data")
    assert not (tmp_path / "model" / "model.onnx").exists()


def test_every_dataset_is_checked_naming_its_field(tmp_path: Path) -> None:
    model = _onnx_digits(tmp_path / "m.onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((5, 1, 8, 8), dtype=np.float32), y=np.arange(5))
    x = np.zeros((5, 1, 8, 8), dtype=np.float32)
    x[2] = np.nan
    np.savez(tmp_path / "calibration.npz", x=x)
    spec = _spec(model.as_uri(), (tmp_path / "eval.npz").as_uri())
    spec.data.calibration = (tmp_path / "calibration.npz").as_uri()
    spec.data.train = None
    with pytest.raises(InvalidInput, match="spec.data.calibration: array x holds NaN"):
        check_inputs(spec)


def test_a_torch_model_without_a_signature_is_probed_on_the_data(tmp_path: Path) -> None:
    import torch

    module = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)))
    torch.jit.save(module, str(tmp_path / "m.ts"))
    np.savez(tmp_path / "eval.npz", x=np.zeros((5, 1, 8, 8)), y=np.array([0, 1, 2, 1, 3]))
    spec = _spec((tmp_path / "m.ts").as_uri(), (tmp_path / "eval.npz").as_uri())
    with pytest.raises(InvalidInput, match="array y holds 3, but the model has 3 classes"):
        check_inputs(spec, trust_model_code=True)
    np.savez(tmp_path / "eval.npz", x=np.zeros((5, 1, 8, 9)), y=np.arange(5) % 3)
    with pytest.raises(InvalidInput, match=r"the model does not run on arrays x \(5, 1, 8, 9\)"):
        check_inputs(spec, trust_model_code=True)


# ----------------------------------------------------------------------------- steps vs format


_ONNX = "file:///models/m.onnx"


@pytest.mark.parametrize(("original", "steps", "search", "refused"), [
    ("onnx", [{"prune": {}}], None, "spec.steps[0]: prune needs a torch model, but "
                                    f"{_ONNX} is ONNX"),
    ("onnx", [{"distill": {"student": "builtin://digits-mlp"}}], None,
     "spec.steps[0]: distill needs a torch model"),
    ("onnx", [{"decompose": {}}], None, "spec.steps[0]: decompose needs a model rebuilt"),
    ("onnx", [{"quantize": {"mode": "qat"}}], None,
     "spec.steps[0]: quantize mode qat needs a torch model"),
    ("onnx", [{"quantize": {"mode": "dynamic"}}],
     {"parameter": "steps[0].quantize.mode", "values": ["dynamic", "qat"]},
     "spec.steps[0]: quantize mode qat needs a torch model"),
    ("torchscript", [{"prune": {"structured": True}}], None,
     "spec.steps[0]: structured prune needs a model rebuilt from its architecture"),
    ("torchscript", [{"decompose": {}}], None, "here it is TorchScript"),
    ("bundle", [{"prune": {"structured": True}}, {"prune": {"structured": True}}], None,
     "spec.steps[1]: structured prune needs a model rebuilt"),
    ("bundle", [{"prune": {}}, {"prune": {"structured": True}}],
     {"parameter": "steps[0].prune.structured", "values": [False, True]},
     "spec.steps[1]: structured prune needs a model rebuilt"),
])
def test_a_step_that_cannot_apply_to_the_model_is_refused(
        original: Format, steps: list[dict[str, Any]], search: dict[str, Any] | None,
        refused: str) -> None:
    extra = {"search": search} if search else {}
    spec = _spec(_ONNX, "builtin://digits", steps, **extra)
    with pytest.raises(InvalidInput) as caught:
        check_step_formats(spec, original)
    assert refused in str(caught.value)


@pytest.mark.parametrize(("original", "steps"), [
    ("onnx", [{"quantize": {"mode": mode}}]) for mode in ("dynamic", "static", "fp16", "auto")
] + [
    ("torchscript", [{"prune": {}}, {"distill": {}}, {"quantize": {"mode": "qat"}}]),
    ("torchscript", [{"distill": {"student": "builtin://digits-mlp"}}, {"decompose": {}}]),
    ("bundle", [{"decompose": {}}, {"prune": {}}]),
    ("bundle", [{"prune": {"structured": True, "schedule": {"iterations": 3}}}]),
])
def test_steps_that_fit_the_model_pass(original: Format, steps: list[dict[str, Any]]) -> None:
    check_step_formats(_spec(_ONNX, "builtin://digits", steps), original)


def test_an_onnx_model_with_a_prune_step_is_refused_before_fetch_writes(tmp_path: Path) -> None:
    model = _onnx_digits(tmp_path / "m.onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((5, 1, 8, 8), dtype=np.float32), y=np.arange(5))
    spec = _spec(model.as_uri(), (tmp_path / "eval.npz").as_uri(), [{"prune": {}}])
    with pytest.raises(InvalidInput, match=r"^spec.steps\[0\]: prune needs a torch model"):
        check_inputs(spec)
