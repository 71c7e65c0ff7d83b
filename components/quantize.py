"""Quantize: export to ONNX, then onnxruntime's quantizer (dynamic int8, static QDQ) or fp16."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelpress.api import Candidate, QuantizeStep
from modelpress.components.data import Arrays
from modelpress.components.modelio import (
    Manifest,
    load_torch,
    read_manifest,
    write_manifest,
)
from modelpress.components.onnxfiles import DATA_SUFFIX, copy_onnx, is_large, save, size_bytes
from modelpress.components.result import timed
from modelpress.records import LatencyProbe, QuantizeRecord

CALIBRATION_ROWS = 256


def _fp32_onnx(model_in: Path, sample: Arrays, scratch: Path,
               module: Any | None = None) -> Path:
    """The working model (or `module`, trained from it) as fp32 ONNX, pre-processed for ORT
    (shape inference, fusions)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from modelpress.components.modelio import export_onnx

    manifest = read_manifest(model_in)
    exported = scratch / "fp32.onnx"
    if module is not None:
        export_onnx(module, sample, manifest.inputs, exported)
    elif manifest.format == "onnx":
        copy_onnx(model_in / manifest.file, exported)
    else:
        export_onnx(load_torch(model_in), sample, manifest.inputs, exported)
    prepared = scratch / "prepared.onnx"
    quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True,
                      save_as_external_data=is_large(exported), all_tensors_to_one_file=True,
                      external_data_location=prepared.name + DATA_SUFFIX)
    return prepared


def quantize_dynamic_int8(fp32: Path, out: Path, options: QuantizeStep, _: Arrays) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), per_channel=options.per_channel,
                     weight_type=_weight_type(options, QuantType),
                     use_external_data_format=is_large(fp32))


def quantize_static_qdq(fp32: Path, out: Path, options: QuantizeStep, calibration: Arrays) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(str(fp32), str(out), _CalibrationReader(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                    activation_type=QuantType.QUInt8,
                    weight_type=_weight_type(options, QuantType),
                    use_external_data_format=is_large(fp32))


def convert_fp16(fp32: Path, out: Path, options: QuantizeStep, _: Arrays) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    save(model, out, external=is_large(fp32))


def _weight_type(options: QuantizeStep, quant_type: Any) -> Any:
    return quant_type.QInt8 if options.weight_type == "int8" else quant_type.QUInt8


class _CalibrationReader:
    """Feeds calibration rows one small batch at a time, as onnxruntime expects."""

    def __init__(self, calibration: Arrays, batch_size: int = 16) -> None:
        inputs = {k: v[:CALIBRATION_ROWS] for k, v in calibration.items() if k != "y"}
        length = len(next(iter(inputs.values())))
        self._batches = iter([{k: v[i:i + batch_size] for k, v in inputs.items()}
                              for i in range(0, length, batch_size)])

    def get_next(self) -> dict | None:
        return next(self._batches, None)


_MODES: dict[str, Callable[[Path, Path, QuantizeStep, Arrays], None]] = {
    "dynamic": quantize_dynamic_int8,
    "static": quantize_static_qdq,
    "fp16": convert_fp16,
    "qat": quantize_static_qdq,  # after fake-quant training: weights already on the grid
}


@dataclass(frozen=True)
class QatInputs:
    """What quantization-aware training learns from: the original model and train data."""

    original: Path
    train: Arrays


def quantization_aware_module(model_in: Path, options: QuantizeStep, qat: QatInputs) -> Any:
    """The working model fine-tuned through int8 fake quantization, distilling from the
    original; its weights end on the int8 grid the static QDQ export then uses."""
    from modelpress.components.prune import current_masks
    from modelpress.components.training import TrainingPlan, fine_tune

    manifest = read_manifest(model_in)
    student, teacher = load_torch(model_in), load_torch(qat.original)
    plan = TrainingPlan(task=manifest.task, inputs=manifest.inputs, epochs=options.epochs,
                        learning_rate=options.learning_rate, alpha=0.5)
    fine_tune(student, teacher, qat.train, plan, current_masks(student), fake_quant=True)
    return student


@dataclass(frozen=True)
class AutoTarget:
    """What auto quantization measures candidates against: the fp32 baseline's outputs, the
    fidelity bar, and how recipes are timed."""

    baseline_onnx: Path
    max_accuracy_drop: float
    probe: LatencyProbe


def quantize(model_in: Path, options: QuantizeStep, sample: Arrays,
             calibration: Arrays | None, model_out: Path,
             auto: AutoTarget | None = None, qat: QatInputs | None = None) -> QuantizeRecord:
    """Write the quantized ONNX working model to `model_out`."""
    with timed() as clock:
        manifest: Manifest = read_manifest(model_in).with_format("onnx")
        model_out.mkdir(parents=True, exist_ok=True)
        target = model_out / manifest.file
        candidates: list[Candidate] = []
        with tempfile.TemporaryDirectory() as scratch:
            trained = None
            if options.mode == "qat":
                assert qat is not None, "the spec guarantees data.train for qat"
                trained = quantization_aware_module(model_in, options, qat)
            fp32 = _fp32_onnx(model_in, sample, Path(scratch), trained)
            if options.mode == "auto":
                assert auto is not None, "auto quantization needs a target to measure against"
                candidates, summary = _auto(fp32, Path(scratch), manifest.task, sample,
                                            calibration, auto, target)
            else:
                _MODES[options.mode](fp32, target, options,
                                     calibration if calibration is not None else sample)
                summary = f"{options.mode} ({options.weight_type}" \
                          f"{', per-channel' if options.per_channel else ''})"
        write_manifest(model_out, manifest)
        written_bytes = size_bytes(target)
    return clock.stamp(QuantizeRecord(mode=options.mode, size_bytes=written_bytes,
                                      candidates=candidates,
                                      message=f"{summary}: {written_bytes:,} bytes"))


def _auto(fp32: Path, scratch: Path, task: str, evaluation: Arrays, calibration: Arrays | None,
          auto: AutoTarget, target: Path) -> tuple[list[Candidate], str]:
    """auto_quantize's winner, copied to `target` with its external data (if any)."""
    from modelpress.components.quantize_auto import auto_quantize

    chosen = scratch / "chosen.onnx"
    judged = auto_quantize(fp32, scratch, task, evaluation, calibration, auto, chosen)
    copy_onnx(chosen, target)
    return judged
