"""Smoothing before dynamic int8 (after SmoothQuant, Xiao et al. 2022): an exact fp32
rewrite that moves activation outliers into the weights.

Dynamic int8 quantizes a MatMul's input with one scale for the whole tensor, so a few
outlier channels (transformers' LayerNorm outputs have them) stretch the step over every
other channel. For each MatMul with a constant 2-D weight, its input channel j is divided
by s_j = max|x_j| ** ALPHA / max|w_j| ** (1 - ALPHA) (one Mul node per input tensor, shared
by the MatMuls that read it) and weight row j multiplied by s_j: the same function in fp32,
with the activations' range evened out and the weights' (quantized per output channel)
only a little wider. max|x_j| is read on calibration rows. ALPHA = 0.7 measured best of
0.5 / 0.7 / 0.85 / 0.95 on MiniLM-L6 (docs/quantization.md); 0.5, the paper's default for
static int8, made dynamic int8 worse there.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.components.data import Arrays, input_names
from modelpress.components.onnxfiles import EXTERNAL_DATA_BYTES, is_large, save

ALPHA = 0.7
SMOOTHING_ROWS = 64
_SUFFIX = "_smoothed"


def smoothed(fp32: Path, calibration: Arrays, out: Path) -> None:
    """`fp32` with every constant-weight MatMul smoothed, written to `out` (unchanged when
    there is none)."""
    import onnx

    model = onnx.load(str(fp32))
    readers = _constant_matmuls(model.graph)
    if readers:
        maxima = _activation_maxima(model, list(readers), calibration)
        weights = {tensor.name: tensor for tensor in model.graph.initializer}
        for tensor, matmuls in readers.items():
            _smooth(model.graph, tensor, matmuls, maxima[tensor], weights)
    save(model, out, external=is_large(fp32))


def _constant_matmuls(graph: Any) -> dict[str, list[Any]]:
    """The MatMuls whose weight is a 2-D initializer, by the input tensor they read."""
    weights = {tensor.name: tensor for tensor in graph.initializer if len(tensor.dims) == 2}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights \
                and node.input[0] not in weights:
            readers.setdefault(node.input[0], []).append(node)
    return readers


def _activation_maxima(model: Any, tensors: list[str], calibration: Arrays
                       ) -> dict[str, np.ndarray]:
    """max |x_j| per channel (last axis) of each tensor, over the first SMOOTHING_ROWS
    calibration rows."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                 None) for name in tensors)
    with tempfile.TemporaryDirectory() as scratch:  # a file: a large model's proto won't fit
        path = Path(scratch) / "probe.onnx"
        save(probe, path, external=probe.ByteSize() > EXTERNAL_DATA_BYTES)
        runner = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: calibration[name][:SMOOTHING_ROWS] for name in input_names(calibration)
            if name in {entry.name for entry in runner.get_inputs()}}
    outputs = runner.run(tensors, feed)
    return {name: np.abs(values).reshape(-1, values.shape[-1]).max(axis=0)
            for name, values in zip(tensors, outputs, strict=True)}


def _smooth(graph: Any, tensor: str, matmuls: list[Any], activation_max: np.ndarray,
            weights: dict[str, Any]) -> None:
    """Insert `tensor * (1/s)` before the first of `matmuls` and scale their weight rows
    by s. Channels never active on calibration rows keep s = 1 (a later nonzero value
    must not be blown up); an all-zero weight row takes s from a tiny floor."""
    from onnx import helper, numpy_helper

    rows = [numpy_helper.to_array(weights[node.input[1]]) for node in matmuls]
    weight_max = np.max([np.abs(row).max(axis=1) for row in rows], axis=0)
    scale = activation_max ** ALPHA / np.maximum(weight_max, 1e-5) ** (1.0 - ALPHA)
    scale = np.where(activation_max > 0.0, np.maximum(scale, 1e-5), 1.0).astype(np.float32)
    inverse = f"{tensor}{_SUFFIX}_inverse"
    graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
    for node, weight in zip(matmuls, rows, strict=True):
        weights[node.input[1]].CopyFrom(numpy_helper.from_array(
            (weight * scale[:, None]).astype(np.float32), node.input[1]))
        node.input[0] = tensor + _SUFFIX
    first = min(list(graph.node).index(node) for node in matmuls)
    graph.node.insert(first, helper.make_node("Mul", [tensor, inverse], [tensor + _SUFFIX],
                                              name=f"{tensor}{_SUFFIX}"))
