"""Figures read off an ONNX file: size, parameters, nonzeros; and an inference session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelpress.components.onnxfiles import size_bytes


def onnx_figures(path: Path) -> dict[str, int]:
    """Bytes on disk, and the element and nonzero counts of its weight initializers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    parameters = nonzero = 0
    for initializer in model.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.size > 1:  # scalars are scales, zero points and shape constants
            parameters += int(values.size)
            nonzero += int(np.count_nonzero(values))
    return {"sizeBytes": size_bytes(path), "parameters": parameters,
            "nonzeroParameters": nonzero}


def session(path: Path, threads: int = 1, providers: list[str] | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options,
                                providers=providers or ["CPUExecutionProvider"])


def run_batched(model: Any, arrays: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
    names = [i.name for i in model.get_inputs()]
    length = len(arrays[names[0]])
    return np.concatenate([model.run(None, {n: arrays[n][i:i + batch_size] for n in names})[0]
                           for i in range(0, length, batch_size)])
