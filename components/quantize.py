"""Quantize: export to ONNX, then onnxruntime's quantizer (dynamic int8, plain or after
smoothing; static QDQ) or fp16.

With a bar (`auto`, or `dynamic`/`static` given `maxAccuracyDrop`) the step measures what it
builds against the original and may keep the most harmful nodes in fp32
(components.quantize_auto, components.sensitivity, docs/quantization.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelpress.api import Candidate, QuantizeStep, SensitivityEntry
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


# Every builder: (fp32 in, file out, options, calibration rows, nodes kept in fp32, nodes
# whose weights take 7 bits whatever the options say; only dynamic int8 supports those).
Builder = Callable[[Path, Path, QuantizeStep, Arrays, Sequence[str], Sequence[str]], None]


def quantize_dynamic_int8(fp32: Path, out: Path, options: QuantizeStep, _: Arrays,
                          keep_fp32: Sequence[str] = (), reduced: Sequence[str] = ()) -> None:
    """Dynamic int8; the `reduced` nodes first, alone, with 7-bit weights (onnxruntime's
    reduce_range is one switch per call), then every other node not kept in fp32."""
    if not reduced:
        _dynamic(fp32, out, options, exclude=keep_fp32)
        return
    with tempfile.TemporaryDirectory() as scratch:
        first = Path(scratch) / "reduced.onnx"
        _dynamic(fp32, first, options.model_copy(update={"reduce_range": True}),
                 only=reduced)
        _dynamic(first, out, options, exclude=[*keep_fp32, *reduced])


def _dynamic(fp32: Path, out: Path, options: QuantizeStep, exclude: Sequence[str] = (),
             only: Sequence[str] = ()) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32), str(out), per_channel=options.per_channel,
                     reduce_range=options.reduce_range,
                     weight_type=_weight_type(options, QuantType), nodes_to_quantize=list(only),
                     nodes_to_exclude=list(exclude), use_external_data_format=is_large(fp32))


def quantize_static_qdq(fp32: Path, out: Path, options: QuantizeStep, calibration: Arrays,
                        keep_fp32: Sequence[str] = (), reduced: Sequence[str] = ()) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    assert not reduced, "7-bit weights per node: dynamic int8 only"
    quantize_static(str(fp32), str(out), _CalibrationReader(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
                    reduce_range=options.reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=_weight_type(options, QuantType),
                    nodes_to_exclude=list(keep_fp32), use_external_data_format=is_large(fp32))


def quantize_dynamic_smoothed(fp32: Path, out: Path, options: QuantizeStep,
                              calibration: Arrays, keep_fp32: Sequence[str] = (),
                              reduced: Sequence[str] = ()) -> None:
    """Dynamic int8 after SmoothQuant-style smoothing (components.smoothing): each MatMul's
    activation outlier channels are divided down and its weight rows multiplied up, an
    exact rewrite in fp32 that leaves dynamic int8's per-tensor activation step finer."""
    from modelpress.components.smoothing import smoothed

    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "smoothed.onnx"
        smoothed(fp32, calibration, source)
        quantize_dynamic_int8(source, out, options, calibration, keep_fp32, reduced)


def convert_fp16(fp32: Path, out: Path, options: QuantizeStep, _: Arrays,
                 keep_fp32: Sequence[str] = (), reduced: Sequence[str] = ()) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    assert not reduced, "7-bit weights per node: dynamic int8 only"
    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True,
                                     node_block_list=list(keep_fp32) or None)
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


_MODES: dict[str, Builder] = {
    "dynamic": quantize_dynamic_int8,
    "static": quantize_static_qdq,
    "fp16": convert_fp16,
    "qat": quantize_static_qdq,  # after fake-quant training: weights already on the grid
}
# The recipes a bar may keep nodes of in fp32 (mixed precision).
MIXED_MODES = ("dynamic", "static")


@dataclass(frozen=True)
class Recipe:
    """One way to quantize a model: a builder, its options and the rows it calibrates on."""

    name: str
    builder: Builder
    options: QuantizeStep
    calibration: Arrays

    def build(self, fp32: Path, out: Path, keep_fp32: Sequence[str] = (),
              reduced: Sequence[str] = ()) -> None:
        """`fp32` quantized to `out`, the nodes named in `keep_fp32` left in fp32 and those
        in `reduced` given 7-bit weights (dynamic recipes only)."""
        self.builder(fp32, out, self.options, self.calibration, keep_fp32, reduced)

    def range_twin(self, others: Sequence[Recipe]) -> Recipe | None:
        """The recipe among `others` that differs from this one only in reduce_range (same
        kernels, so the same speed): mixed precision may pick the range node by node."""
        flipped = self.options.model_copy(update={"reduce_range": not self.options.reduce_range})
        return next((other for other in others if other.builder is self.builder
                     and other.options == flipped and other.calibration is self.calibration),
                    None)

    @property
    def integer(self) -> bool:
        """An int8 recipe (whose nodes mixed precision may keep in fp32); fp16 is not."""
        return self.options.mode in MIXED_MODES


def recipe_of(options: QuantizeStep, calibration: Arrays) -> Recipe:
    """A dynamic or static step's own recipe, named like auto's (dynamic-int8-per-channel)."""
    kind = "static-qdq" if options.mode == "static" else "dynamic"
    layout = "per-channel" if options.per_channel else "per-tensor"
    weights = f"{options.weight_type}{'-reduced' if options.reduce_range else ''}"
    return Recipe(f"{kind}-{weights}-{layout}", _MODES[options.mode], options,
                  calibration)


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
    """What a bar measures candidates against: the original model's fp32 ONNX baseline
    (so the bar is the whole job's budget, whatever earlier steps spent of it), the bar, and
    how candidates are timed."""

    baseline_onnx: Path
    max_accuracy_drop: float
    probe: LatencyProbe


def accuracy_target(options: QuantizeStep, baseline_onnx: Path,
                    probe: LatencyProbe) -> AutoTarget | None:
    """The bar the step's candidates are judged by: auto's always (the pipeline builder
    sets it), a dynamic or static recipe's when the step gives `maxAccuracyDrop`; else None."""
    bar = options.max_accuracy_drop
    if bar is None or (options.mode != "auto" and options.mode not in MIXED_MODES):
        return None
    return AutoTarget(baseline_onnx=baseline_onnx, max_accuracy_drop=bar, probe=probe)


@dataclass(frozen=True)
class Outcome:
    """What a quantize step with a bar decided: every candidate, the ranking it searched
    with (if any), and a one-line summary."""

    candidates: list[Candidate]
    sensitivity: list[SensitivityEntry]
    summary: str


def quantize(model_in: Path, options: QuantizeStep, decision: Arrays,
             calibration: Arrays | None, model_out: Path,
             auto: AutoTarget | None = None, qat: QatInputs | None = None) -> QuantizeRecord:
    """Write the quantized ONNX working model to `model_out`. `decision`: the rows every
    choice is made on (and the export traced with); `auto`: the bar, for mode auto and for
    a dynamic or static recipe that gives one."""
    with timed() as clock:
        manifest: Manifest = read_manifest(model_in).with_format("onnx")
        model_out.mkdir(parents=True, exist_ok=True)
        target = model_out / manifest.file
        with tempfile.TemporaryDirectory() as scratch:
            trained = None
            if options.mode == "qat":
                assert qat is not None, "the spec guarantees data.train for qat"
                trained = quantization_aware_module(model_in, options, qat)
            fp32 = _fp32_onnx(model_in, decision, Path(scratch), trained)
            outcome = _build(fp32, Path(scratch), manifest.task, options, decision, calibration,
                             auto, target)
        write_manifest(model_out, manifest)
        written_bytes = size_bytes(target)
    return clock.stamp(QuantizeRecord(mode=options.mode, size_bytes=written_bytes,
                                      candidates=outcome.candidates,
                                      sensitivity=outcome.sensitivity,
                                      message=f"{outcome.summary}: {written_bytes:,} bytes"))


def _build(fp32: Path, scratch: Path, task: str, options: QuantizeStep, decision: Arrays,
           calibration: Arrays | None, auto: AutoTarget | None, target: Path) -> Outcome:
    """The step's model written to `target`: its recipe as is, or judged against a bar."""
    assert auto is not None or options.mode != "auto", "auto quantization needs its bar"
    rows = calibration if calibration is not None else decision
    if auto is None or options.mode not in ("auto", *MIXED_MODES):
        _MODES[options.mode](fp32, target, options, rows, (), ())
        return Outcome([], [], f"{options.mode} ({options.weight_type}"
                               f"{', per-channel' if options.per_channel else ''})")
    from modelpress.components.quantize_auto import auto_quantize, quantize_within_bar

    chosen = scratch / "chosen.onnx"
    if options.mode == "auto":
        outcome = auto_quantize(fp32, scratch, task, decision, calibration, auto, chosen)
    else:
        outcome = quantize_within_bar(fp32, scratch, task, decision,
                                      recipe_of(options, rows), auto, chosen)
    copy_onnx(chosen, target)  # with its external data, if any
    return outcome
