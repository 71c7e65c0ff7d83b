"""The working-model folder that flows between steps, and ONNX export.

A working model is a folder with `manifest.json` and one model file:
- `bundle`: an architecture reference plus `weights.pt`, a state_dict loaded with
  `weights_only=True` (never an arbitrary pickle);
- `torchscript`: `model.ts`, for user models that carry their own code;
- `onnx`: `model.onnx`, once a step has produced the deployable model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from modelpress.errors import InvalidInput

if TYPE_CHECKING:
    import torch

Format = Literal["bundle", "torchscript", "onnx"]
_FILES: dict[str, str] = {"bundle": "weights.pt", "torchscript": "model.ts", "onnx": "model.onnx"}
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


def read_manifest(folder: Path) -> Manifest:
    data = json.loads((folder / "manifest.json").read_text())
    return Manifest(**data)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(asdict(manifest), indent=2))


def model_file(folder: Path) -> Path:
    return folder / read_manifest(folder).file


def load_torch(folder: Path) -> torch.nn.Module:
    """The module in a working-model folder, in eval mode."""
    import torch

    from modelpress.components.zoo import build_architecture

    manifest = read_manifest(folder)
    if manifest.format == "onnx":
        raise InvalidInput("spec.steps", "this step needs a torch model, but the model is ONNX")
    if manifest.format == "torchscript":
        return torch.jit.load(str(folder / manifest.file), map_location="cpu").eval()
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
