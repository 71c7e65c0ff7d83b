"""The working-model folder that flows between steps, and ONNX export.

A working model is a folder with `manifest.json` and one model file:
- `bundle`: an architecture reference plus `weights.pt`, a state_dict loaded with
  `weights_only=True` (never an arbitrary pickle);
- `torchscript`: `model.ts`, for user models that carry their own code;
- `hf`: a Hugging Face folder `hf/` (save_pretrained, safetensors) plus the task that wraps
  it (modelpress.components.hf), rebuildable like a bundle;
- `onnx`: `model.onnx`, once a step has produced the deployable model;
- `genai`: an onnxruntime-genai folder `genai/` (text-generation, modelpress.components.llm_steps).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from modelpress.api import (
    CompressionSpec,
    DecomposeStep,
    DistillStep,
    Model,
    PruneStep,
    QuantizeStep,
)
from modelpress.errors import InvalidInput

if TYPE_CHECKING:
    import onnx
    import torch

# One axis of an input's shape: a fixed size, a symbolic name ("batch"), or unknown (None).
Dim = int | str | None
Format = Literal["bundle", "torchscript", "onnx", "hf", "genai"]
# `genai`: an onnxruntime-genai folder, a text-generation model once quantized.
_FILES: dict[str, str] = {"bundle": "weights.pt", "torchscript": "model.ts", "onnx": "model.onnx",
                          "hf": "hf", "genai": "genai"}
# The original working model's subfolder holding the model's preprocessing files (tokenizer
# or image processor, config.json for id2label), published beside the compressed model.
PREPROCESSOR = "preprocessor"
# Formats whose module a step may rebuild (structured prune, decompose).
REBUILDABLE: tuple[Format, ...] = ("bundle", "hf")
ONNX_OPSET = 17


@dataclass(frozen=True)
class Manifest:
    format: Format
    task: str
    inputs: list[str]
    architecture: str | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def file(self) -> str:
        return _FILES[self.format]

    def with_format(self, new_format: Format) -> Manifest:
        return replace(self, format=new_format)


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, numpy element type and shape."""

    name: str
    dtype: str | None  # None, here and for the shape: the model does not say
    shape: tuple[Dim, ...] | None

    def shown(self) -> str:
        """The shape as a user reads it: `(batch, 1, 8, 8)`."""
        dims = ["?" if dim is None else str(dim) for dim in self.shape or ()]
        return f"({', '.join(dims)}{',' if len(dims) == 1 else ''})"


@dataclass(frozen=True)
class Signature:
    """What a model takes, and how many classes it tells apart (None: not a classifier, or
    the model does not say)."""

    inputs: tuple[InputSpec, ...]
    classes: int | None


def onnx_signature(model: onnx.ModelProto) -> Signature:
    """The graph's inputs (initializers excluded) and the class count its output declares."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(_tensor_spec(value) for value in model.graph.input
                   if value.name not in initializers)
    classes = None
    if model.graph.output:
        output = _tensor_spec(model.graph.output[0]).shape
        if output and len(output) == 2 and isinstance(output[1], int):
            classes = output[1]
    return Signature(inputs=inputs, classes=classes)


def _tensor_spec(value: onnx.ValueInfoProto) -> InputSpec:
    from onnx import helper

    tensor = value.type.tensor_type
    dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))) \
        if tensor.elem_type else None
    if not tensor.HasField("shape"):
        return InputSpec(value.name, dtype, None)
    shape = tuple(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None)
                  for dim in tensor.shape.dim)
    return InputSpec(value.name, dtype, shape)


def read_manifest(folder: Path) -> Manifest:
    data = json.loads((folder / "manifest.json").read_text())
    return Manifest(**data)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2))


def load_torch(folder: Path) -> torch.nn.Module:
    """The module in a working-model folder, in eval mode."""
    import torch

    from modelpress.components.zoo import build_architecture

    manifest = read_manifest(folder)
    if manifest.format == "onnx":
        raise InvalidInput("spec.steps", "this step needs a torch model, but the model is ONNX")
    if manifest.format == "torchscript":
        return torch.jit.load(str(folder / manifest.file), map_location="cpu").eval()
    if manifest.format == "hf":
        from modelpress.components.hf import load_working

        return load_working(folder / manifest.file)
    assert manifest.architecture is not None
    module = build_architecture(manifest.architecture)
    module.load_state_dict(torch.load(folder / manifest.file, weights_only=True))
    return module.eval()


def save_torch(module: torch.nn.Module, folder: Path, manifest: Manifest) -> None:
    """Write `module` in the same format as `manifest` describes."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    if manifest.format == "torchscript":
        torch.jit.save(module, str(folder / manifest.file))
    elif manifest.format == "hf":
        from modelpress.components.hf import save_working

        save_working(module, folder / manifest.file)  # type: ignore[arg-type]
    else:
        torch.save(module.state_dict(), folder / manifest.file)
    write_manifest(folder, manifest)


def save_traced(module: torch.nn.Module, example: tuple[torch.Tensor, ...], folder: Path,
                manifest: Manifest) -> Manifest:
    """Save a module whose shapes no longer match its architecture (pruned, decomposed) as
    TorchScript, which carries its own structure and stays trainable."""
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(module.eval(), example, check_trace=False, strict=False)
    traced_manifest = replace(manifest.with_format("torchscript"), architecture=None)
    save_torch(traced, folder, traced_manifest)
    return traced_manifest


def torch_inputs(arrays: dict[str, np.ndarray], names: list[str]) -> tuple[torch.Tensor, ...]:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[name])) for name in names)


def without_trailing_padding(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch of token inputs cut after the last position any of its rows attends to
    (`attention_mask`), so that training does not compute the padding the longest text of
    the whole dataset needs. Exact for right-padded texts: a real token's position and what
    it attends to are unchanged. Left padding is kept (cutting it would move positions)."""
    mask = named.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return named
    attended = mask.any(dim=0).nonzero()
    width = int(attended.max()) + 1 if len(attended) else mask.shape[1]
    return {name: value[:, :width] if value.dim() == 2 and value.shape[1] == mask.shape[1]
            else value for name, value in named.items()}


def export_onnx(module: torch.nn.Module, sample: dict[str, np.ndarray], names: list[str],
                path: Path) -> None:
    """Export fp32 ONNX with a dynamic batch axis (and sequence axis for token inputs)."""
    import torch

    dynamic = {name: {0: "batch"} | ({1: "sequence"} if sample[name].ndim == 2 and
                                      sample[name].dtype == np.int64 else {})
               for name in names}
    dynamic["output"] = {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            module.eval(), torch_inputs({k: v[:2] for k, v in sample.items()}, names), str(path),
            input_names=names, output_names=["output"], dynamic_axes=dynamic,
            opset_version=ONNX_OPSET, dynamo=False,
        )


def onnx_working_model(module: torch.nn.Module, manifest: Manifest,
                       sample: dict[str, np.ndarray], folder: Path) -> Manifest:
    """Export `module` into `folder` as an ONNX working model; return its manifest."""
    onnx_manifest = manifest.with_format("onnx")
    export_onnx(module, sample, manifest.inputs, folder / onnx_manifest.file)
    write_manifest(folder, onnx_manifest)
    return onnx_manifest


# ----------------------------------------------------------------------------- steps vs format

_FORMAT_NAMES = {"onnx": "ONNX", "bundle": "a rebuildable torch model",
                 "torchscript": "TorchScript", "hf": "a Hugging Face folder",
                 "genai": "an onnxruntime-genai folder"}
_HAND_OVER = "a state_dict with spec.model.architecture, or a Hugging Face folder"


def check_step_formats(spec: CompressionSpec, original: Format) -> None:
    """Refuse, before any step runs, a step that cannot apply to the model as it will be
    when the step runs (every search candidate included)."""
    formats = {original}
    for index in range(len(spec.steps)):
        variants = spec.step_variants(index)
        for options in variants:
            for current in sorted(formats):
                problem = _step_problem(options, current, original, spec.model.uri)
                if problem:
                    raise InvalidInput(f"spec.steps[{index}]", problem)
        formats = {_format_after(options, current) for options in variants for current in formats}


def _rebuilds(options: Model) -> bool:
    return isinstance(options, DecomposeStep) or (isinstance(options, PruneStep)
                                                  and options.structured)


def _step_problem(options: Model, current: Format, original: Format, uri: str) -> str | None:
    """Why the step cannot run on a model in `current` format, or None.

    Prune, distill and QAT train or edit torch weights and load the original as teacher;
    structured prune and decompose rebuild the module, which needs its architecture (a
    builtin or python:// one, or a Hugging Face folder's): torch-pruning cannot edit
    TorchScript.
    """
    name = _step_name(options)
    trains = isinstance(options, (PruneStep, DistillStep)) or (
        isinstance(options, QuantizeStep) and options.mode == "qat")
    if trains and original == "onnx":
        return f"{name} needs a torch model, but {uri} is ONNX"
    if _rebuilds(options) and current not in REBUILDABLE:
        if original in REBUILDABLE:
            return (f"{name} needs a model rebuilt from its architecture, but an earlier "
                    "structured prune or decompose step has already rebuilt it; use one "
                    "such step (prune.schedule.iterations repeats a prune)")
        return (f"{name} needs a model rebuilt from its architecture; here it is "
                f"{_FORMAT_NAMES[current]}: hand over {_HAND_OVER} instead")
    return None


def _step_name(options: Model) -> str:
    if isinstance(options, PruneStep):
        return "structured prune" if options.structured else "prune"
    if isinstance(options, QuantizeStep):
        return f"quantize mode {options.mode}"
    return "distill" if isinstance(options, DistillStep) else "decompose"


def _format_after(options: Model, current: Format) -> Format:
    if _rebuilds(options):
        return "torchscript"
    if isinstance(options, DistillStep) and options.student:
        return "bundle"
    return "onnx" if isinstance(options, QuantizeStep) else current
