"""Fetch: bring the model and datasets in, check them, and export the fp32 ONNX baseline.

Model files are never unpickled: ONNX, torch.export programs (.pt2), TorchScript, or a
state_dict read with `weights_only=True` plus an architecture.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from modelpress.api import CompressionSpec
from modelpress.components import zoo
from modelpress.components.data import Arrays, input_names, load_dataset, save_arrays
from modelpress.components.modelio import Manifest, export_onnx, save_torch, write_manifest
from modelpress.components.result import StepResult, timed
from modelpress.components.sources import assert_fetchable, builtin_name, fetch_to, file_suffix
from modelpress.errors import InvalidInput
from modelpress.store import sha256_of

MODEL_FIELD = "spec.model.uri"
BASELINE_ONNX = "baseline.onnx"
_TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".bin", ".pt2")


def fetch(spec: CompressionSpec, model_out: Path, data_out: Path) -> StepResult:
    """Write the original working model (plus `baseline.onnx`) and the datasets as .npz."""
    with timed("fetch") as result:
        tokenizer = _tokenizer_of(spec)
        datasets = load_datasets(spec, tokenizer)
        for name, arrays in datasets.items():
            save_arrays(arrays, data_out / f"{name}.npz")
        manifest = fetch_model(spec, datasets["eval"], model_out)
        inputs = {"model": {"uri": spec.model.uri,
                            "sha256": sha256_of(model_out / manifest.file)}}
        inputs |= {f"data.{name}": {"uri": getattr(spec.data, name),
                                    "sha256": sha256_of(data_out / f"{name}.npz")}
                   for name in datasets}
        result.figures = {"format": manifest.format, "inputs": manifest.inputs,
                          "evalRows": len(datasets["eval"][manifest.inputs[0]]),
                          "lineageInputs": inputs}
        result.message = f"{spec.model.uri} as {manifest.format}"
    return result


def check_inputs(spec: CompressionSpec) -> None:
    """Everything fetch would refuse, checked up front so bad input fails before any run."""
    with tempfile.TemporaryDirectory() as scratch:
        datasets = load_datasets(spec, _tokenizer_of(spec))
        fetch_model(spec, datasets["eval"], Path(scratch) / "model", export_baseline=False)


def _tokenizer_of(spec: CompressionSpec) -> str | None:
    for reference in (spec.model.uri, spec.model.architecture or ""):
        if reference.startswith("builtin://"):
            return builtin_name(reference)[0]
    return None


def load_datasets(spec: CompressionSpec, tokenizer: str | None) -> dict[str, Arrays]:
    sources = spec.data.model_dump(exclude_none=True)
    for name, uri in sources.items():
        assert_fetchable(uri, f"spec.data.{name}")
    datasets = {name: load_dataset(uri, f"spec.data.{name}", tokenizer)
                for name, uri in sources.items()}
    if spec.model.task == "classification" and "y" not in datasets["eval"]:
        raise InvalidInput("spec.data.eval", "classification needs labels: an array `y`")
    return datasets


def fetch_model(spec: CompressionSpec, sample: Arrays, out: Path,
                export_baseline: bool = True) -> Manifest:
    assert_fetchable(spec.model.uri, MODEL_FIELD)
    names = input_names(sample)
    if spec.model.uri.startswith("builtin://"):
        manifest = _builtin_model(spec, names)
        module = _load_builtin(manifest, out) if export_baseline else None
    else:
        manifest, module = _user_model(spec, names, sample, out)
    write_manifest(out, manifest)
    if export_baseline:
        if module is None:
            shutil.copyfile(out / manifest.file, out / BASELINE_ONNX)
        else:
            export_onnx(module, sample, names, out / BASELINE_ONNX)
    return manifest


def _builtin_model(spec: CompressionSpec, names: list[str]) -> Manifest:
    name, _ = builtin_name(spec.model.uri)
    if name not in zoo.BUILTIN_MODELS:
        raise InvalidInput(MODEL_FIELD, f"unknown builtin model {name!r}; known: "
                                        f"{', '.join(zoo.BUILTIN_MODELS)}")
    return Manifest(format="bundle", task=spec.model.task, inputs=names,
                    architecture=f"builtin://{name}", source=spec.model.uri)


def _load_builtin(manifest: Manifest, out: Path) -> Any:
    import torch

    assert manifest.architecture is not None
    module = zoo.build_architecture(manifest.architecture)
    module.load_state_dict(zoo.pretrained_state(manifest.architecture.removeprefix("builtin://")))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), out / manifest.file)
    return module.eval()


def _user_model(spec: CompressionSpec, names: list[str], sample: Arrays,
                out: Path) -> tuple[Manifest, Any]:
    suffix = file_suffix(spec.model.uri)
    model_format = spec.model.format or ("onnx" if suffix == ".onnx" else "torch")
    if model_format == "torch" and suffix not in _TORCH_SUFFIXES:
        raise InvalidInput(MODEL_FIELD, f"{spec.model.uri}: a torch model must end in one of "
                                        f"{', '.join(_TORCH_SUFFIXES)}")
    out.mkdir(parents=True, exist_ok=True)
    local = fetch_to(spec.model.uri, out / f"original{suffix}", MODEL_FIELD)
    base = Manifest(format="onnx", task=spec.model.task, inputs=names, source=spec.model.uri)
    if model_format == "onnx":
        _check_onnx(local, spec.model.uri, names)
        local.rename(out / base.file)
        return base, None
    module, manifest = _read_torch(local, spec, base, sample)
    save_torch(module, out, manifest)
    local.unlink()
    return manifest, module


def _check_onnx(path: Path, uri: str, names: list[str]) -> None:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as error:  # onnx raises several unrelated types for corrupt files
        raise InvalidInput(MODEL_FIELD, f"{uri} is not a valid ONNX model "
                                        f"({type(error).__name__})") from None
    graph_inputs = [i.name for i in model.graph.input
                    if i.name not in {init.name for init in model.graph.initializer}]
    if sorted(graph_inputs) != sorted(names):
        raise InvalidInput("spec.data.eval", f"the ONNX model takes inputs {graph_inputs}, "
                                             f"but the data has arrays {names}")


def _read_torch(path: Path, spec: CompressionSpec, base: Manifest,
                sample: Arrays) -> tuple[Any, Manifest]:
    uri = spec.model.uri
    if path.suffix == ".pt2":
        return _read_exported(path, uri, base, sample)
    if _is_torchscript(path):
        import torch

        try:
            return torch.jit.load(str(path), map_location="cpu").eval(), base.with_format(
                "torchscript")
        except RuntimeError as error:
            raise InvalidInput(MODEL_FIELD, f"{uri} is not a loadable TorchScript file "
                                            f"({str(error).splitlines()[0]})") from None
    state = _read_state_dict(path, uri)
    if spec.model.architecture is None:
        raise InvalidInput("spec.model.architecture", f"{uri} is a state_dict; name the module "
                                                      "it belongs to (builtin://… or python://…)")
    module = zoo.build_architecture(spec.model.architecture)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise InvalidInput(MODEL_FIELD, f"{uri} does not fit {spec.model.architecture}: "
                                        f"{str(error).splitlines()[0]}") from None
    manifest = Manifest(format="bundle", task=base.task, inputs=base.inputs,
                        architecture=spec.model.architecture, source=uri)
    return module.eval(), manifest


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _looks_pickled(path: Path) -> bool:
    """torch.save writes a zip (new format) or a raw pickle (starts with the PROTO opcode)."""
    with path.open("rb") as handle:
        return zipfile.is_zipfile(path) or handle.read(1) == b"\x80"


def _read_state_dict(path: Path, uri: str) -> dict[str, Any]:
    import torch

    unreadable = InvalidInput(MODEL_FIELD, f"{uri} is not a readable torch file (corrupt or "
                                           "truncated)")
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickles before refusing
            warnings.simplefilter("ignore")
            state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        if not _looks_pickled(path):
            raise unreadable from None
        raise InvalidInput(MODEL_FIELD, f"{uri} is a pickled Python object; modelpress never "
                                        "unpickles models: save a state_dict, TorchScript, "
                                        "torch.export (.pt2) or ONNX") from None
    except (RuntimeError, EOFError, OSError, ValueError):
        raise unreadable from None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise InvalidInput(MODEL_FIELD, f"{uri} holds no state_dict of tensors")
    return state


def _read_exported(path: Path, uri: str, base: Manifest, sample: Arrays) -> tuple[Any, Manifest]:
    """A torch.export program becomes TorchScript, so later steps can edit its weights."""
    import torch

    from modelpress.components.modelio import torch_inputs

    try:
        program = torch.export.load(str(path))
    except Exception as error:  # torch raises many types for a corrupt archive
        raise InvalidInput(MODEL_FIELD, f"{uri} is not a loadable torch.export program "
                                        f"({type(error).__name__})") from None
    example = torch_inputs({k: v[:2] for k, v in sample.items()}, base.inputs)
    traced = torch.jit.trace(program.module(), example, check_trace=False)
    return traced.eval(), base.with_format("torchscript")
