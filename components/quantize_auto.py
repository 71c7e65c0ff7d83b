"""Auto quantization: build every recipe that fits, measure each, keep the fastest one
within the fidelity bar, and record why each of the others lost.

The unquantized fp32 model is a candidate too: on small convolutional models int8 kernels
can be slower than fp32 ("compressed but not faster"), and then auto says so and keeps
fp32. When nothing keeps within the bar, the model stays fp32 as well: auto never hands
on a model that misses its target.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from modelpress.api import Candidate, QuantizeStep
from modelpress.components.benchmark import p50_latencies
from modelpress.components.data import LABELS, Arrays
from modelpress.components.onnxfiles import size_bytes
from modelpress.components.onnxstats import run_batched, session
from modelpress.components.quantize import (
    AutoTarget,
    convert_fp16,
    quantize_dynamic_int8,
    quantize_static_qdq,
)
from modelpress.components.selection import Measured, choose
from modelpress.components.validate import task_metrics
from modelpress.records import LatencyProbe

FP32 = "fp32 (not quantized)"


def recipes(calibration: Arrays | None, cuda: bool) -> dict[str, tuple]:
    """name -> (builder, options) for every recipe this model and machine can use."""
    built: dict[str, tuple] = {
        "dynamic-int8-per-channel": (quantize_dynamic_int8, QuantizeStep(per_channel=True)),
        "dynamic-int8-per-tensor": (quantize_dynamic_int8, QuantizeStep(per_channel=False)),
    }
    if calibration is not None:
        built["static-qdq-int8-per-channel"] = (quantize_static_qdq,
                                                QuantizeStep(mode="static", per_channel=True))
        built["static-qdq-int8-per-tensor"] = (quantize_static_qdq,
                                               QuantizeStep(mode="static", per_channel=False))
    if cuda:  # fp16 has no fast CPU kernels; it is a GPU recipe
        built["fp16"] = (convert_fp16, QuantizeStep(mode="fp16"))
    return built


def _fidelity(task: str, path: Path, evaluation: Arrays, reference: np.ndarray) -> float:
    labels = evaluation.get(LABELS)
    baseline = next(iter(task_metrics(task, reference, reference, labels).values()))
    ours = next(iter(task_metrics(task, run_batched(session(path), evaluation), reference,
                                  labels).values()))
    return baseline - ours


def build_candidates(fp32: Path, scratch: Path, evaluation: Arrays,
                     calibration: Arrays | None) -> tuple[dict[str, Path], dict[str, str]]:
    """Quantized files by name, and the recipes that failed to build, with their error."""
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    built, failed = {FP32: fp32}, {}
    for name, (builder, options) in recipes(calibration, cuda).items():
        path = scratch / f"{name}.onnx"
        try:
            builder(fp32, path, options, calibration if calibration is not None else evaluation)
            built[name] = path
        except Exception as error:  # a recipe that does not fit this graph is a result
            failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return built, failed


def measure(task: str, built: dict[str, Path], failed: dict[str, str], evaluation: Arrays,
            reference: np.ndarray, probe: LatencyProbe) -> list[Measured]:
    latencies = p50_latencies(built, evaluation, probe) if built else {}
    measured = [Measured(name=name, accuracy_drop=round(_fidelity(task, path, evaluation,
                                                                  reference), 6),
                         size_bytes=size_bytes(path), latency_ms=latencies[name])
                for name, path in built.items()]
    return measured + [Measured(name=name, accuracy_drop=None, error=error)
                       for name, error in failed.items()]


def auto_quantize(fp32: Path, scratch: Path, task: str, evaluation: Arrays,
                  calibration: Arrays | None, target: AutoTarget,
                  out: Path) -> tuple[list[Candidate], str]:
    """Write the winner (or fp32) to `out`; return every candidate judged, and a summary."""
    reference = run_batched(session(target.baseline_onnx), evaluation)
    built, failed = build_candidates(fp32, scratch, evaluation, calibration)
    bar = target.max_accuracy_drop
    winner, judged = choose(measure(task, built, failed, evaluation, reference, target.probe),
                            bar, objective="latency")
    shutil.copyfile(built[winner.name] if winner else fp32, out)
    summary = (f"auto chose {winner.name} ({winner.latency_ms:.3f} ms at batch "
               f"{target.probe.batch_size}, drop {winner.accuracy_drop:.4f})" if winner else
               f"no recipe kept the accuracy drop within {bar}; the model stays fp32")
    return [candidate.as_candidate() for candidate in judged], summary
