"""Fetch: bring the model and datasets in, check them, and export the fp32 ONNX baseline.

Model files are never unpickled: ONNX, or a state_dict read with `weights_only=True` plus an
architecture. Programs (torch.export `.pt2`, TorchScript, `python://` code) run code when
loaded and are read only when model code is trusted (modelpress.trust); even then a `.pt2`
is read with every pickle inside it held to weights only (`_read_exported`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelpress.api import CompressionSpec
from modelpress.components import zoo
from modelpress.components.data import (
    LABELS,
    Dataset,
    ReadOptions,
    conform,
    input_names,
    save_arrays,
)
from modelpress.components.data import load_dataset as load_one_dataset
from modelpress.components.modelio import (
    PREPROCESSOR,
    InputSpec,
    Manifest,
    Signature,
    check_step_formats,
    export_onnx,
    onnx_signature,
    save_torch,
    torch_inputs,
    write_manifest,
)
from modelpress.components.preprocess import Preprocessor
from modelpress.components.readers import Columns
from modelpress.components.result import timed
from modelpress.components.sources import (
    assert_fetchable,
    builtin_name,
    builtin_options,
    file_suffix,
    readable_folder,
    readable_path,
)
from modelpress.components.splits import VALIDATION, Split, rows_of, with_validation
from modelpress.errors import InvalidInput
from modelpress.lineage import LineageInput
from modelpress.records import FetchRecord
from modelpress.store import sha256_of
from modelpress.trust import PROGRAM_SUFFIXES, program_refusal, require_trusted

MODEL_FIELD = "spec.model.uri"
BASELINE_ONNX = "baseline.onnx"
_TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".bin", ".pt2", ".safetensors")
_PROBE_ROWS = 2
_ERROR_CHARS = 200


@dataclass(frozen=True)
class SourceModel:
    """The job's model as read: what the working model will be, what it takes (None: a torch
    model that does not say, probed on the data), for user files the bytes read, and how
    data is prepared for it (its tokenizer or image processor, its label names)."""

    manifest: Manifest
    signature: Signature | None
    module: Any | None = None  # the loaded torch module of a user's torch file or HF folder
    local: Path | None = None  # the user's file or HF folder as read (in place, or downloaded)
    source_sha256: str | None = None
    preprocessor: Preprocessor = Preprocessor()


@dataclass(frozen=True)
class Inputs:
    """The job's inputs, each read once and checked against the model; casts noted; the
    validation split among the datasets (`splits`) and what it says about decisions."""

    datasets: dict[str, Dataset]
    model: SourceModel
    notes: list[str]
    split: Split


def fetch(spec: CompressionSpec, model_out: Path, data_out: Path, *,
          trust_model_code: bool = False) -> FetchRecord:
    """Write the original working model (plus `baseline.onnx`) and the datasets as .npz,
    after the same checks as `check_inputs` (so a cluster run refuses what the CLI does).
    text-generation: an fp32 onnxruntime-genai baseline and the texts (llm_fetch)."""
    if spec.model.task == "text-generation":
        from modelpress.components.llm_fetch import fetch_llm

        _refuse_validation_for_text_generation(spec)
        return fetch_llm(spec, model_out, data_out, trusted=trust_model_code)
    with timed() as clock, tempfile.TemporaryDirectory() as scratch:
        inputs = read_inputs(spec, Path(scratch), trust_model_code)
        for name, dataset in inputs.datasets.items():
            save_arrays(dataset.arrays, data_out / f"{name}.npz")
        evaluation = inputs.datasets["eval"].arrays
        manifest = write_model(inputs.model, evaluation, model_out)
        if VALIDATION in inputs.datasets:
            from modelpress.components.budget import write_reference

            write_reference(model_out / BASELINE_ONNX, inputs.datasets[VALIDATION].arrays,
                            data_out)
        lineage = _lineage_inputs(spec, inputs, model_out, data_out)
    return clock.stamp(FetchRecord(
        format=manifest.format, inputs=manifest.inputs,
        eval_rows=len(evaluation[manifest.inputs[0]]), lineage_inputs=lineage,
        decision_data=inputs.split.decision_data,
        message="; ".join([f"{spec.model.uri} as {manifest.format}", *inputs.notes])))


def _refuse_validation_for_text_generation(spec: CompressionSpec) -> None:
    """text-generation decides on data.calibration (else data.train) text (llm_steps)."""
    if spec.data.validation is not None:
        raise InvalidInput("spec.data.validation", "text-generation makes its decisions on "
                                                   "data.calibration (else data.train); give "
                                                   "the text there")


def check_inputs(spec: CompressionSpec, *, trust_model_code: bool = False) -> list[str]:
    """Everything fetch would refuse, checked up front so bad input fails before any run.

    Returns one line per change fetch will make to the data (a cast to the model's input
    type), for the CLI to print. Nothing is exported: a builtin model is not even built.
    """
    if spec.model.task == "text-generation":
        from modelpress.components.llm_fetch import check_llm_inputs

        _refuse_validation_for_text_generation(spec)
        return check_llm_inputs(spec, trust_model_code)
    with tempfile.TemporaryDirectory() as scratch:
        return read_inputs(spec, Path(scratch), trust_model_code).notes


def read_inputs(spec: CompressionSpec, scratch: Path, trusted: bool) -> Inputs:
    """Refuse programs unless `trusted`; read the model, then the datasets with its
    preprocessor, once each; check the steps against the model's format and every dataset
    against what the model takes."""
    require_trusted(spec, trusted)
    model = read_model(spec, scratch, trusted)
    check_step_formats(spec, model.manifest.format)
    split = with_validation(spec, load_datasets(spec, model.preprocessor))
    datasets = split.datasets
    signature = model.signature or probe_signature(model.module, datasets["eval"].arrays,
                                                   spec.model.kind)
    notes = [split.note] if split.note else []
    for name, dataset in datasets.items():
        arrays, cast = conform(dataset.arrays, signature, f"spec.data.{name}", spec.model.kind)
        datasets[name] = replace(dataset, arrays=arrays)
        notes += [*dataset.notes, *cast]
    if spec.model.kind == "classification" and LABELS not in datasets["eval"].arrays:
        raise InvalidInput("spec.data.eval", "classification needs labels: an array `y`")
    names = [item.name for item in signature.inputs]
    model = replace(model, manifest=replace(model.manifest, inputs=names))
    return Inputs(datasets, model, notes, split)


def load_datasets(spec: CompressionSpec, preprocessor: Preprocessor) -> dict[str, Dataset]:
    """Each dataset the spec names, text and images prepared with the model's own
    `preprocessor`, read once even when two fields name the same uri (the eval set apart,
    when `maxEvalRows` samples it); a classifier's eval set must have labels."""
    sources = spec.data.sources()
    for name, uri in sources.items():
        assert_fetchable(uri, f"spec.data.{name}")
    columns = Columns(text=spec.data.text_column, label=spec.data.label_column)
    read: dict[tuple[str, int | None], Dataset] = {}
    for name, uri in sources.items():
        cap = spec.data.max_eval_rows if name == "eval" else None
        if (uri, cap) not in read:
            read[uri, cap] = load_one_dataset(uri, f"spec.data.{name}", preprocessor,
                                              ReadOptions(columns, cap))
    datasets = {name: read[uri, spec.data.max_eval_rows if name == "eval" else None]
                for name, uri in sources.items()}
    if spec.model.kind == "classification" and LABELS not in datasets["eval"].arrays:
        raise InvalidInput("spec.data.eval", f"{spec.data.eval} has no labels, and "
                                             f"{spec.model.task} is measured against them: a "
                                             f"column {columns.label!r} "
                                             "(spec.data.labelColumn), an array `y` in .npz, "
                                             "or class folders of images")
    return datasets


# ----------------------------------------------------------------------------- the model


def read_model(spec: CompressionSpec, scratch: Path, trusted: bool) -> SourceModel:
    """The model, read once: a builtin is only named (its inputs are known), an ONNX file is
    loaded and checked, a torch file or Hugging Face folder (a uri ending in /, or format
    hf) is loaded without unpickling anything (a program only when `trusted`)."""
    assert_fetchable(spec.model.uri, MODEL_FIELD)
    if spec.model.uri.startswith("builtin://"):
        return _builtin_model(spec, trusted)
    if spec.model.format == "hf" or spec.model.uri.endswith("/"):
        return _hf_model(spec, readable_folder(spec.model.uri, scratch, MODEL_FIELD), trusted)
    suffix = file_suffix(spec.model.uri)
    model_format = spec.model.format or ("onnx" if suffix == ".onnx" else "torch")
    if model_format == "torch" and suffix not in _TORCH_SUFFIXES:
        raise InvalidInput(MODEL_FIELD, f"{spec.model.uri}: a torch model must end in one of "
                                        f"{', '.join(_TORCH_SUFFIXES)}")
    local = readable_path(spec.model.uri, scratch, MODEL_FIELD)
    base = Manifest(format="onnx", task=spec.model.kind, inputs=[], source=spec.model.uri)
    digest = sha256_of(local)
    if model_format == "onnx":
        return SourceModel(base, _onnx_signature(local, spec.model.uri), None, local, digest)
    module, manifest = _read_torch(local, spec, base, trusted)
    architecture = manifest.architecture or ""
    builtin = builtin_name(architecture) if architecture.startswith("builtin://") else ""
    return SourceModel(manifest, zoo.SIGNATURES.get(builtin), module, local, digest,
                       zoo.builtin_preprocessor(builtin))


def _hf_model(spec: CompressionSpec, folder: Path, trusted: bool) -> SourceModel:
    """A Hugging Face folder, wrapped for the job's task (modelpress.components.hf)."""
    from modelpress.components.hf import folder_sha256, read_hf_folder

    read = read_hf_folder(folder, spec.model.task, trusted, spec.model.uri, MODEL_FIELD)
    manifest = Manifest(format="hf", task=spec.model.kind, inputs=[], source=spec.model.uri)
    return SourceModel(manifest, read.signature, read.module, folder, folder_sha256(folder),
                       read.preprocessor)


def write_model(model: SourceModel, sample: dict[str, Any], out: Path) -> Manifest:
    """Write the working model and the fp32 ONNX baseline every figure is measured against,
    with the model's preprocessing files (`PREPROCESSOR/`), which travel to the output."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = model.manifest
    if model.local is not None and manifest.format == "onnx":
        from modelpress.components.onnxfiles import copy_onnx, write_working_copy

        write_working_copy(model.local, out / manifest.file)
        copy_onnx(out / manifest.file, out / BASELINE_ONNX)
    else:
        module = _load_builtin(manifest) if model.module is None else model.module
        if model.local is not None and model.local.suffix.lower() == ".pt2":
            module = _traced(module, sample, manifest.inputs)
        save_torch(module, out, manifest)
        export_onnx(module, sample, manifest.inputs, out / BASELINE_ONNX)
    write_manifest(out, manifest)
    _copy_preprocessing(model.preprocessor, out / PREPROCESSOR)
    return manifest


def _copy_preprocessing(preprocessor: Preprocessor, folder: Path) -> None:
    """The tokenizer or image-processor files and config.json (id2label) of the model."""
    if preprocessor.folder is None:
        return
    from modelpress.components.hf import preprocessing_files

    folder.mkdir(parents=True, exist_ok=True)
    for path in preprocessing_files(preprocessor.folder):
        shutil.copyfile(path, folder / path.name)


def _lineage_inputs(spec: CompressionSpec, inputs: Inputs, model_out: Path,
                    data_out: Path) -> dict[str, LineageInput]:
    """The uri and sha256 of what was read: the user's file, the shipped data file, or
    (for what modelpress generates itself, a carved split included) the file fetch wrote;
    each dataset's rows, and how the validation split was carved (`splits`)."""
    model = inputs.model
    lineage = {"model": LineageInput(uri=spec.model.uri, sha256=model.source_sha256 or sha256_of(
        model_out / model.manifest.file))}
    split = inputs.split
    use = split.decision_data
    carved_from = use.source if use is not None and use.carved else None
    for name, dataset in inputs.datasets.items():
        carved = name == VALIDATION and carved_from is not None
        uri = getattr(spec.data, carved_from.removeprefix("data.") if carved and carved_from
                      else name)
        lineage[f"data.{name}"] = LineageInput(
            uri=uri, sha256=dataset.source_sha256 or sha256_of(data_out / f"{name}.npz"),
            rows=rows_of(dataset.arrays), carved_from=carved_from if carved else None,
            seed=use.seed if carved and use is not None else None,
            held_out_rows=split.held_out_rows if name in split.shrunk else None)
    return lineage


def probe_signature(module: Any, evaluation: dict[str, Any], task: str) -> Signature:
    """What a torch model that does not declare its inputs takes: the eval arrays' layout
    with a free batch axis (and sequence axis for token ids), floats in the module's own
    float type, once the model has run on a couple of rows; a model that cannot run on
    them is bad input."""
    import torch

    floats = next((str(p.dtype).removeprefix("torch.") for p in module.parameters()
                   if p.is_floating_point()), "float32")
    names = input_names(evaluation)
    inputs = tuple(_probed_input(name, evaluation[name], floats) for name in names)
    rows, _ = conform({name: evaluation[name][:_PROBE_ROWS] for name in names},
                      Signature(inputs, None), "spec.data.eval", task)
    try:
        with torch.no_grad():
            output = module(*torch_inputs(rows, list(rows)))
    except Exception as error:  # user code: any failure means the data does not fit it
        shapes = ", ".join(f"{name} {tuple(evaluation[name].shape)}" for name in rows)
        first = (str(error).strip().splitlines() or [""])[0][:_ERROR_CHARS]
        raise InvalidInput("spec.data.eval", f"the model does not run on arrays {shapes}: "
                                             f"{type(error).__name__}: {first}") from None
    classes = int(output.shape[-1]) if task == "classification" and isinstance(
        output, torch.Tensor) and output.dim() == 2 else None
    return Signature(inputs, classes)


def _probed_input(name: str, array: Any, floats: str) -> InputSpec:
    """The array's layout with a free batch axis; token ids (2-D integers) also get a free
    sequence axis, as the ONNX export declares; floats become the module's float type."""
    token_ids = array.ndim == 2 and array.dtype.kind in "iu"
    rest = ("sequence",) if token_ids else tuple(array.shape[1:])
    return InputSpec(name, floats if array.dtype.kind == "f" else str(array.dtype),
                     ("batch", *rest))


def _builtin_model(spec: CompressionSpec, trusted: bool) -> SourceModel:
    """A builtin: an HF folder from the zoo (built once into the cache) is read like a
    user's; any other is only named here, and built when fetch writes it."""
    name = builtin_name(spec.model.uri)
    if name not in zoo.BUILTIN_MODELS:
        raise InvalidInput(MODEL_FIELD, f"unknown builtin model {name!r}; known: "
                                        f"{', '.join(zoo.BUILTIN_MODELS)}")
    builtin_options(spec.model.uri, MODEL_FIELD, {})
    if name in zoo.TEXT_GENERATION_MODELS:
        raise InvalidInput("spec.model.task", f"builtin://{name} is a causal language model: "
                                              "set task text-generation")
    if name in zoo.HF_FOLDERS:
        return _hf_model(spec, zoo.HF_FOLDERS[name](), trusted)
    manifest = Manifest(format="bundle", task=spec.model.kind, inputs=[],
                        architecture=f"builtin://{name}", source=spec.model.uri)
    return SourceModel(manifest, zoo.SIGNATURES[name], preprocessor=zoo.builtin_preprocessor(name))


def _load_builtin(manifest: Manifest) -> Any:
    assert manifest.architecture is not None
    module = zoo.build_architecture(manifest.architecture)
    module.load_state_dict(zoo.pretrained_state(builtin_name(manifest.architecture)))
    return module.eval()


def _onnx_signature(path: Path, uri: str) -> Signature:
    """What the user's ONNX model at `path` takes, once its external data (if any) lies
    checked beside it (`onnxfiles`) and onnx's checker passes the model with its data."""
    import onnx

    from modelpress.components.onnxfiles import gather_external_data
    from modelpress.components.sources import fetch_to

    try:
        model = onnx.load(str(path), load_external_data=False)
        gather_external_data(model, path, uri, MODEL_FIELD, fetch_to)
        onnx.checker.check_model(str(path))
    except InvalidInput:
        raise
    except Exception as error:  # onnx raises several unrelated types for corrupt files
        raise InvalidInput(MODEL_FIELD, f"{uri} is not a valid ONNX model "
                                        f"({type(error).__name__}: "
                                        f"{_first_line(error)})") from None
    return onnx_signature(model)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:_ERROR_CHARS]


def _read_torch(path: Path, spec: CompressionSpec, base: Manifest,
                trusted: bool) -> tuple[Any, Manifest]:
    uri = spec.model.uri
    program = _program_kind(path)
    if program and not trusted:  # TorchScript under a data suffix (.pt, .bin) shows only now
        raise program_refusal(MODEL_FIELD, f"{uri} is {program}")
    if path.suffix.lower() == ".pt2":
        return _read_exported(path, uri), base.with_format("torchscript")
    if program:
        return _read_torchscript(path, uri), base.with_format("torchscript")
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


def _program_kind(path: Path) -> str | None:
    """What program the torch file at `path` is (a `.pt2`, or TorchScript under any
    suffix), or None for data."""
    if path.suffix.lower() == ".pt2":
        return PROGRAM_SUFFIXES[".pt2"]
    return PROGRAM_SUFFIXES[".ts"] if _is_torchscript(path) else None


def _is_torchscript(path: Path) -> bool:
    """A zip with TorchScript code or constants in it; names compared without case, as
    torch's archive reader finds them."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name.lower() for name in archive.namelist()]
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in name or name.endswith("constants.pkl") for name in names)


def _read_torchscript(path: Path, uri: str) -> Any:
    """A trusted TorchScript file, read by torch's TorchScript loader (which builds only
    TorchScript types, never Python objects, and runs the file's own code)."""
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as error:
        raise InvalidInput(MODEL_FIELD, f"{uri} is not a loadable TorchScript file "
                                        f"({str(error).splitlines()[0]})") from None


def _looks_pickled(path: Path) -> bool:
    """torch.save writes a zip (new format) or a raw pickle (starts with the PROTO opcode)."""
    with path.open("rb") as handle:
        return zipfile.is_zipfile(path) or handle.read(1) == b"\x80"


def _read_state_dict(path: Path, uri: str) -> dict[str, Any]:
    """A state_dict of tensors: a safetensors file, or a torch file read weights only."""
    state = _read_safetensors(path, uri) if path.suffix.lower() == ".safetensors" \
        else _read_torch_state(path, uri)
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise InvalidInput(MODEL_FIELD, f"{uri} holds no state_dict of tensors")
    return state


def _read_safetensors(path: Path, uri: str) -> dict[str, Any]:
    """A safetensors file: a JSON header and raw tensors, nothing that could run code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise InvalidInput(MODEL_FIELD, f"{uri} is not a readable safetensors file "
                                        f"({_first_line(error)})") from None


def _read_torch_state(path: Path, uri: str) -> Any:
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
    return state


# What a trusted torch.export archive may hold below its root folder (the names of
# torch.export.pt2_archive): the program as JSON, raw or pickled tensors, text extras.
# Anything else is refused: AOTInductor libraries (native code), custom and opaque objects
# (read by pickle itself, not torch.load), the legacy layout.
_EXPORTED_MEMBERS = ("archive_format", "archive_version", "byteorder", ".data/*",
                     "models/*.json", "data/weights/*", "data/constants/tensor_*",
                     "data/constants/*_constants_config.json", "data/sample_inputs/*",
                     "extra/*")
_EXPORTED_REFUSED = ("data/constants/custom_obj_*", "data/constants/opaque_obj_*")
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def _read_exported(path: Path, uri: str) -> Any:
    """A trusted torch.export program's module, with a free batch axis (`_batch_free`),
    traced to TorchScript by `write_model` so that later steps can edit its weights.

    torch.export.load unpickles some members (sample inputs, some tensors) and, when a
    weights-only read fails, tries again with plain unpickling. Here only the members
    `_EXPORTED_MEMBERS` lists may be present, and every torch.load is held to weights only,
    so no path ends in unpickling a Python object.
    """
    import torch

    strange = _strange_member(path)
    if strange is not None:
        raise InvalidInput(MODEL_FIELD, f"{uri} holds {strange!r}, which a torch.export program "
                                        "read by modelpress may not hold")
    try:
        with _weights_only_loads():
            program = torch.export.load(str(path))
    except pickle.UnpicklingError:
        raise InvalidInput(MODEL_FIELD, f"{uri} holds a pickled Python object; modelpress "
                                        "never unpickles models, even trusted ones") from None
    except Exception as error:  # torch raises many types for a corrupt archive
        raise InvalidInput(MODEL_FIELD, f"{uri} is not a loadable torch.export program "
                                        f"({type(error).__name__})") from None
    return _batch_free(program, uri).module()


_EXAMPLE_BATCH = 2  # torch.export specializes a batch of 0 or 1; 2 keeps the axis free


def _batch_free(program: Any, uri: str) -> Any:
    """`program` when its batch axis is free; else exported again from its own graph with a
    batch `Dim` (torch.export's default, `export(m, (x,))`, fixes the batch to x's). A graph
    that depends on its batch size is refused, saying what to hand over instead."""
    import torch

    values = _user_inputs(program)
    if not all(isinstance(value, torch.Tensor) and value.dim() > 0 for value in values) \
            or not any(isinstance(value.shape[0], int) for value in values):
        return program  # a batch axis already free, or inputs the data probe judges
    batch = torch.export.Dim("batch")
    try:
        examples = tuple(torch.zeros((_EXAMPLE_BATCH, *value.shape[1:]), dtype=value.dtype)
                         for value in values)
        return torch.export.export(program.module(check_guards=False), examples,
                                   dynamic_shapes=tuple({0: batch} for _ in examples))
    except Exception:  # torch reports a graph that fixes its batch in several error types
        raise InvalidInput(MODEL_FIELD, f"{uri} is a torch.export program whose graph fixes "
                                        "its batch size; export it with dynamic_shapes giving "
                                        "the batch axis a torch.export.Dim, or hand over a "
                                        "state_dict with spec.model.architecture, or ONNX"
                           ) from None


def _user_inputs(program: Any) -> list[Any]:
    """The example values torch.export recorded for the program's own inputs."""
    placeholders = {node.name: node for node in program.graph.nodes
                    if node.op == "placeholder"}
    return [placeholders[name].meta.get("val") for name in program.graph_signature.user_inputs]


def _strange_member(path: Path) -> str | None:
    """The first member of the archive that `_EXPORTED_MEMBERS` does not allow, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None  # not a zip: torch.export.load says so
    return next((name for name in names if not _allowed_member(name)), None)


def _allowed_member(name: str) -> bool:
    """Whether `root/member` is an allowed member (without case, as torch's reader finds
    members; no `.`/`..` parts, which a reader might resolve elsewhere)."""
    root, _, member = name.lower().partition("/")
    if not root or "\\" in member or {"", ".", ".."} & set(member.split("/")):
        return False
    if any(fnmatch.fnmatchcase(member, pattern) for pattern in _EXPORTED_REFUSED):
        return False
    return any(fnmatch.fnmatchcase(member, pattern) for pattern in _EXPORTED_MEMBERS)


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Inside, every torch.load reads weights only, whatever its caller asks for (torch's
    own TORCH_FORCE_WEIGHTS_ONLY_LOAD)."""
    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


def _traced(module: Any, sample: dict[str, Any], names: list[str]) -> Any:
    import torch

    example = torch_inputs({name: sample[name][:_PROBE_ROWS] for name in names}, names)
    return torch.jit.trace(module, example, check_trace=False).eval()
