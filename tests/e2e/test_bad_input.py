"""Bad input never crashes anything: `modelpress run` exits 2 with one line naming the field.

Each case is the digits example with one small mutation (or one planted file). Every case
must fail before any pipeline runs, so the runs are quick; they are started together, in a
few worker threads, and each test then checks its own run.
"""

from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hostile_models import TouchOnLoad

ROOT = Path(__file__).resolve().parents[2]
BASE_JOB = ROOT / "examples" / "digits-prune-quantize.yaml"
# Every case fails before a pipeline starts; one that runs this long got past the checks.
RUN_TIMEOUT_S = 120
JOB_FILE = "job.yaml"
MARKER = "UNPICKLED"

Document = dict[str, Any]
# A mutation gets a copy of the base job and a folder to plant files in. It returns the
# document to write, raw text to write as is, or None for "write no job file at all".
Mutation = Callable[[Document, Path], "Document | str | bytes | None"]


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    expect: tuple[str, ...]  # substrings the one error line must contain
    args: tuple[str, ...] = ()  # more options for `modelpress run`


# ----------------------------------------------------------------------------- planted files


class _MakesMarker:
    """A pickle whose loading runs `os.mkdir(path)`: proof of an unpickle if the path appears."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def _state_dict_file(path: Path) -> Path:
    import torch

    torch.manual_seed(0)
    torch.save(torch.nn.Linear(4, 3).state_dict(), path)
    return path


def _onnx_with_input(path: Path, input_name: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], ["out"])], "identity",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _onnx_digits(path: Path) -> Path:
    """A tiny digits classifier as ONNX: x (batch, 1, 8, 8) -> 10 logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["output"])], "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _not_a_pickle(size: int) -> bytes:
    """Random bytes that do not begin with a pickle opcode a loader could mistake for one."""
    data = bytearray(np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes())
    data[:4] = b"\x13\x37\xfe\xed"
    return bytes(data)


# ----------------------------------------------------------------------------- mutations


def _model(uri: str, **extra: Any) -> Mutation:
    """Another model; the data become a small .npz, so the run never loads scikit-learn."""
    def mutate(job: Document, folder: Path) -> Document:
        job["spec"]["model"] = {"uri": uri.format(folder=folder.as_posix()),
                                "task": "classification", **extra}
        np.savez(folder / "digits.npz", x=_DIGITS, y=np.arange(10, dtype=np.int64))
        data = f"file://{folder.as_posix()}/digits.npz"
        job["spec"]["data"] = {"eval": data, "calibration": data, "train": data}
        return job
    return mutate


def _planted_model(name: str, plant: Callable[[Path], Any], **extra: Any) -> Mutation:
    def mutate(job: Document, folder: Path) -> Document:
        plant(folder / name)
        return _model(f"file://{{folder}}/{name}", **extra)(job, folder)
    return mutate


def _planted_eval(name: str, plant: Callable[[Path], Any]) -> Mutation:
    def mutate(job: Document, folder: Path) -> Document:
        plant(folder / name)
        job["spec"]["data"]["eval"] = f"file://{folder.as_posix()}/{name}"
        return job
    return mutate


def _set(path: str, value: Any) -> Mutation:
    """Set a dotted path such as `spec.steps.0.prune.sparsity` (integers index lists)."""
    *parents, last = path.split(".")

    def mutate(job: Document, _: Path) -> Document:
        node: Any = job
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value
        return job
    return mutate


def _drop(path: str) -> Mutation:
    *parents, last = path.split(".")

    def mutate(job: Document, _: Path) -> Document:
        node: Any = job
        for part in parents:
            node = node[part]
        del node[last]
        return job
    return mutate


def _both(first: Mutation, second: Mutation) -> Mutation:
    def mutate(job: Document, folder: Path) -> Document | str | bytes | None:
        changed = first(job, folder)
        assert isinstance(changed, dict)
        return second(changed, folder)
    return mutate


def _text(text: str | bytes) -> Mutation:
    return lambda job, folder: text


def _write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _truncated_state_dict(path: Path) -> None:
    whole = _state_dict_file(path).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def _pickled_module(path: Path) -> None:
    import torch

    torch.save(torch.nn.Linear(2, 2), path)


def _raw_marker_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(_MakesMarker(path.parent / MARKER)))


def _torch_marker_pickle(path: Path) -> None:
    import torch

    torch.save({"weight": _MakesMarker(path.parent / MARKER)}, path)


def _digits_linear() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def _torchscript_with_side_effect(path: Path) -> None:
    module = torch.nn.Sequential(TouchOnLoad(str(path.parent / MARKER)), _digits_linear())
    torch.jit.save(torch.jit.script(module), str(path))


def _exported_with_planted_pickle(path: Path) -> None:
    """A torch.export program whose sample inputs are a marker pickle (torch.export.load
    unpickles it plainly once its weights-only read fails)."""
    torch.export.save(torch.export.export(_digits_linear(), (torch.zeros(2, 1, 8, 8),)),
                      str(path))
    planted = path.with_suffix(".pickle")
    torch.save(((_MakesMarker(path.parent / MARKER),), {}), planted)
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info, data in members:
            swap = info.filename.endswith("data/sample_inputs/model.pt")
            target.writestr(info, planted.read_bytes() if swap else data)


def _npz(**arrays: Any) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _with(array: np.ndarray, row: int, value: float) -> np.ndarray:
    changed = array.copy()
    changed[row] = value
    return changed


_DIGITS = np.zeros((10, 1, 8, 8), dtype=np.float32)
_LABELS = np.arange(10, dtype=np.int64)
_PRUNE = {"prune": {"sparsity": 0.5}}
_STATIC = {"quantize": {"mode": "static"}}

CASES = [
    # ---- the job file itself
    Case("yaml-syntax-error", _text("apiVersion: modelpress.io/v1alpha1\nspec: [unclosed\n"),
         (JOB_FILE, "YAML")),
    Case("not-a-mapping", _text("- just\n- a list\n"), (JOB_FILE, "mapping")),
    Case("empty-file", _text(""), (JOB_FILE,)),
    Case("not-utf8", _text(b"\xff\xfe\x00kind: \x81\x82\n"), (JOB_FILE,)),
    Case("missing-job-file", lambda job, folder: None, (JOB_FILE,)),
    Case("wrong-kind", _set("kind", "CronJob"), (JOB_FILE, "kind")),
    Case("wrong-api-version", _set("apiVersion", "modelpress.io/v1"), (JOB_FILE, "apiVersion")),
    Case("bad-metadata-name", _set("metadata.name", "Digits_CNN"),
         ("metadata.name", "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")),  # brackets printed as is
    # ---- the schema
    Case("unknown-field", _set("spec.model.colour", "red"), ("spec.model.colour", "unknown")),
    Case("unknown-field-in-step", _set("spec.steps.0.prune.sparsty", 0.5),
         ("spec.steps[0].prune.sparsty", "unknown")),
    Case("wrong-type", _set("spec.steps.0.prune.sparsity", "half"),
         ("spec.steps[0].prune.sparsity",)),
    Case("wrong-type-list", _set("spec.benchmark.batchSizes", "64"),
         ("spec.benchmark.batchSizes",)),
    Case("sparsity-above-one", _set("spec.steps.0.prune.sparsity", 1.5),
         ("spec.steps[0].prune.sparsity",)),
    Case("structured-not-a-bool", _set("spec.steps.0.prune.structured", "channels"),
         ("spec.steps[0].prune.structured",)),
    Case("decompose-after-structured-prune",
         _set("spec.steps", [{"prune": {"structured": True}}, {"decompose": {}}]),
         ("steps[1]", "decompose")),
    Case("empty-steps", _set("spec.steps", []), ("spec.steps",)),
    Case("step-with-two-kinds", _set("spec.steps.0", {**_PRUNE, "distill": {}}),
         ("spec.steps[0]",)),
    Case("missing-model-uri", _drop("spec.model.uri"), ("spec.model.uri",)),
    Case("unknown-uri-scheme", _set("spec.model.uri", "ftp://example.com/model.onnx"),
         ("spec.model.uri",)),
    Case("quantize-not-last", _set("spec.steps", [_STATIC, _PRUNE]), ("steps[0]", "quantize")),
    Case("static-quantize-without-calibration", _drop("spec.data.calibration"),
         ("steps[1]", "data.calibration")),
    Case("fine-tune-without-train-data", _drop("spec.data.train"), ("steps[0]", "data.train")),
    Case("search-names-missing-step",
         _set("spec.search", {"parameter": "steps[5].prune.sparsity", "values": [0.3]}),
         ("search.parameter", "steps[5]")),
    Case("search-names-missing-field",
         _set("spec.search", {"parameter": "steps[0].prune.density", "values": [0.3]}),
         ("search.parameter", "density")),
    Case("duplicate-pool-names", _set("spec.benchmark.pools", [{"name": "cpu"}, {"name": "cpu"}]),
         ("spec.benchmark.pools",)),
    # ---- the model
    Case("unknown-builtin-model", _model("builtin://resnet-999"), ("spec.model.uri", "resnet")),
    Case("hf-model-offline", _model("hf://sentence-transformers/all-MiniLM-L6-v2"),
         ("spec.model.uri",)),
    Case("s3-without-endpoint", _model("s3://models/digits.onnx"), ("spec.model.uri",)),
    Case("unreachable-http", _model("http://127.0.0.1:9/model.onnx"), ("spec.model.uri",)),
    Case("missing-model-file", _model("file://{folder}/missing.onnx"),
         ("spec.model.uri", "missing.onnx")),
    Case("markup-in-file-name", _model("file://{folder}/[/weights].onnx"),
         ("spec.model.uri", "[/weights].onnx")),  # printed as text, not read as rich markup
    Case("torch-model-bad-suffix", _planted_model("model.h5", _write_bytes(b"x")),
         ("spec.model.uri", "model.h5")),
    Case("corrupt-onnx", _planted_model("model.onnx", _write_bytes(_not_a_pickle(4096))),
         ("spec.model.uri", "model.onnx")),
    Case("onnx-inputs-do-not-match-data",
         _both(_planted_model("model.onnx", lambda path: _onnx_with_input(path, "pixels")),
               _set("spec.steps", [{"quantize": {"mode": "dynamic"}}])),
         ("spec.data.eval", "pixels")),
    Case("corrupt-pt", _planted_model("model.pt", _write_bytes(_not_a_pickle(4096))),
         ("spec.model.uri", "model.pt", "corrupt")),
    Case("truncated-pt", _planted_model("model.pt", _truncated_state_dict),
         ("spec.model.uri", "model.pt", "truncated")),
    Case("pickled-torch-module", _planted_model("model.pt", _pickled_module),
         ("spec.model.uri", "pickle")),
    Case("pickle-with-reduce", _planted_model("model.pt", _raw_marker_pickle),
         ("spec.model.uri", "pickle")),
    Case("torch-zip-with-reduce", _planted_model("model.pt", _torch_marker_pickle),
         ("spec.model.uri", "pickle")),
    Case("state-dict-without-architecture", _planted_model("model.pt", _state_dict_file),
         ("spec.model.architecture",)),
    Case("state-dict-wrong-architecture",
         _planted_model("model.pt", _state_dict_file, architecture="builtin://digits-cnn"),
         ("spec.model.uri", "builtin://digits-cnn")),
    Case("unknown-builtin-architecture",
         _planted_model("model.pt", _state_dict_file, architecture="builtin://resnet-999"),
         ("spec.model.architecture", "resnet-999")),
    Case("architecture-factory-raises",
         _planted_model("model.pt", _state_dict_file, architecture="python://math:sqrt"),
         ("spec.model.architecture", "math:sqrt", "failed"), args=("--trust-model-code",)),
    # ---- model code is opt-in; trusted, a .pt2 is still never unpickled
    Case("untrusted-pt2", _planted_model("model.pt2", _exported_with_planted_pickle),
         ("spec.model.uri", "torch.export program", "--trust-model-code")),
    Case("untrusted-torchscript-as-pt",
         _planted_model("model.pt", _torchscript_with_side_effect),
         ("spec.model.uri", "TorchScript", "--trust-model-code")),
    Case("trusted-pt2-with-planted-pickle",
         _planted_model("model.pt2", _exported_with_planted_pickle),
         ("spec.model.uri", "pickled Python object"), args=("--trust-model-code",)),
    # ---- the data
    Case("unknown-builtin-dataset", _set("spec.data.eval", "builtin://mnist"),
         ("spec.data.eval", "mnist")),
    Case("text-data-without-tokenizer", _set("spec.data.eval", "builtin://sentences"),
         ("spec.data.eval",)),
    Case("data-bad-suffix", _planted_eval("eval.csv", _write_bytes(b"1,2,3\n")),
         ("spec.data.eval", "eval.csv")),
    Case("npz-length-mismatch",
         _planted_eval("eval.npz", _npz(x=_DIGITS, y=np.zeros(9, dtype=np.int64))),
         ("spec.data.eval", "eval.npz")),
    Case("npz-without-labels", _planted_eval("eval.npz", _npz(x=_DIGITS)),
         ("spec.data.eval", "y")),
    Case("npz-scalar-arrays",
         _planted_eval("eval.npz", _npz(x=np.float32(1.0), y=np.int64(1))),
         ("spec.data.eval", "eval.npz")),
    Case("npz-corrupt", _planted_eval("eval.npz", _write_bytes(_not_a_pickle(512))),
         ("spec.data.eval", "eval.npz")),
    Case("unknown-builtin-split", _set("spec.data.eval", "builtin://digits?split=validation"),
         ("spec.data.eval", "split='validation'")),
    Case("misspelt-builtin-option", _set("spec.data.train", "builtin://digits?splt=train"),
         ("spec.data.train", "unknown option 'splt'")),
    Case("sentences-unknown-split", _set("spec.data.eval", "builtin://sentences?split=test"),
         ("spec.data.eval", "split='test'")),
    Case("file-uri-of-another-host",
         _set("spec.data.eval", "file://elsewhere/data/eval.npz"),
         ("spec.data.eval", "names host 'elsewhere'")),
    # ---- the data against the model
    Case("npz-flattened-images",
         _planted_eval("eval.npz", _npz(x=np.zeros((10, 64), np.float32), y=_LABELS)),
         ("spec.data.eval: array x has shape (10, 64), the model takes (batch, 1, 8, 8)",)),
    Case("npz-channels-last",
         _planted_eval("eval.npz", _npz(x=np.zeros((10, 8, 8, 1), np.float32), y=_LABELS)),
         ("spec.data.eval: array x has shape (10, 8, 8, 1), the model takes (batch, 1, 8, 8)",)),
    Case("npz-nan", _planted_eval("eval.npz", _npz(x=_with(_DIGITS, 3, np.nan), y=_LABELS)),
         ("spec.data.eval: array x holds NaN or infinite values (first in row 3)",)),
    Case("npz-inf", _planted_eval("eval.npz", _npz(x=_with(_DIGITS, 7, np.inf), y=_LABELS)),
         ("spec.data.eval: array x holds NaN or infinite values (first in row 7)",)),
    Case("labels-beyond-the-classes", _planted_eval("eval.npz", _npz(x=_DIGITS, y=_LABELS + 5)),
         ("spec.data.eval: array y holds 14, but the model has 10 classes",)),
    Case("negative-labels", _planted_eval("eval.npz", _npz(x=_DIGITS, y=_LABELS - 1)),
         ("spec.data.eval: array y holds -1",)),
    Case("fractional-labels", _planted_eval("eval.npz", _npz(x=_DIGITS, y=_LABELS / 4)),
         ("spec.data.eval: array y holds 0.25, which is no class index",)),
    Case("onnx-model-with-prune-step", _planted_model("model.onnx", _onnx_digits),
         ("spec.steps[0]: prune needs a torch model", "model.onnx is ONNX")),
]


# ----------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Outcome:
    folder: Path
    output: Path
    completed: Future[subprocess.CompletedProcess[str]]


def _environment(folder: Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("MODELPRESS_") and "proxy" not in key.lower()
                   and key not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    # Plain, unwrapped text from rich; a cache of our own; no proxy for the 127.0.0.1 case.
    environment.update(COLUMNS="200", NO_COLOR="1", TERM="dumb", PYTHONIOENCODING="utf-8",
                       MODELPRESS_CACHE_DIR=str(folder / "cache"))
    return environment


def _prepare(case: Case, folder: Path) -> Path:
    base = yaml.safe_load(BASE_JOB.read_text())
    document = case.mutate(copy.deepcopy(base), folder)
    job = folder / JOB_FILE
    if isinstance(document, bytes):
        job.write_bytes(document)
    elif isinstance(document, str):
        job.write_text(document)
    elif document is not None:
        job.write_text(yaml.safe_dump(document, sort_keys=False))
    return job


def _run(job: Path, output: Path, folder: Path,
         args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelpress.cli", "run", str(job), "-o", str(output), *args]
    # Its own process group, so a run that got as far as starting pipeline steps can be
    # stopped with all of its children.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, errors="replace", env=_environment(folder),
                               cwd=folder, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += (f"\n[test] still running after {RUN_TIMEOUT_S} s: the bad input got past "
                   "the up-front checks and a pipeline started")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Start the selected cases' runs at once; each test waits for its own."""
    selected = {item.callspec.id for item in request.session.items
                if getattr(item, "originalname", "") == "test_bad_input_exits_2"
                and hasattr(item, "callspec")}
    workers = max(2, min(8, os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        started: dict[str, Outcome] = {}
        for case in CASES:
            if case.id not in selected:
                continue
            folder = tmp_path_factory.mktemp(case.id)
            job = _prepare(case, folder)
            output = folder / "out"
            started[case.id] = Outcome(folder, output,
                                       pool.submit(_run, job, output, folder, case.args))
        yield started


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_exits_2(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    completed = outcome.completed.result()
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    shown = f"exit {completed.returncode}\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"

    assert "Traceback" not in completed.stdout + completed.stderr, shown
    assert completed.returncode == 2, shown
    assert len(lines) == 1 and lines[0].startswith("error:"), shown
    # The case's folder is named after the case: match against the message, not the path.
    message = lines[0].replace(outcome.folder.as_posix(), "<folder>")
    for expected in case.expect:
        assert expected in message, f"{expected!r} not in the error line\n{shown}"
    assert completed.stdout.strip() == "", shown
    assert not (outcome.output / "results.json").exists(), shown
    assert not outcome.output.exists() or not any(outcome.output.iterdir()), shown
    assert not (outcome.folder / MARKER).exists(), f"a planted pickle was loaded\n{shown}"


def test_planted_pickles_are_live(tmp_path: Path) -> None:
    """The marker pickles really do run code when unpickled, so their refusal means something."""
    import torch

    raw, zipped = tmp_path / "raw" / "model.pt", tmp_path / "zipped" / "model.pt"
    for path, plant in ((raw, _raw_marker_pickle), (zipped, _torch_marker_pickle)):
        path.parent.mkdir()
        plant(path)
    pickle.loads(raw.read_bytes())  # the point of the test
    torch.load(zipped, weights_only=False)
    assert (raw.parent / MARKER).is_dir()
    assert (zipped.parent / MARKER).is_dir()


def test_table_is_unique_and_large() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 14


@pytest.mark.e2e
def test_a_float64_npz_is_cast_for_the_model_and_runs(tmp_path: Path) -> None:
    """Not bad input: float64 arrays for a float32 model are cast, and the run says so."""
    model = _onnx_digits(tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "digits.npz", x=rng.random((40, 1, 8, 8)), y=np.arange(40) % 10)
    data = (tmp_path / "digits.npz").as_uri()
    job = yaml.safe_load(BASE_JOB.read_text())
    job["spec"] |= {
        "model": {"uri": model.as_uri(), "task": "classification"},
        "data": {"eval": data, "calibration": data, "train": data},
        "steps": [{"quantize": {"mode": "dynamic"}}],
        "benchmark": {"batchSizes": [1], "iterations": 5, "warmup": 0,
                      "pools": [{"name": "cpu"}]},
        "promotion": {}}
    (tmp_path / JOB_FILE).write_text(yaml.safe_dump(job, sort_keys=False))
    completed = subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "run", str(tmp_path / JOB_FILE),
         "-o", str(tmp_path / "out")], capture_output=True, text=True, errors="replace",
        env=_environment(tmp_path), cwd=tmp_path, timeout=600)
    shown = f"exit {completed.returncode}\n{completed.stdout}\n{completed.stderr}"
    assert completed.returncode == 0, shown
    assert "spec.data.eval: array x is float64; cast to float32 for the model" in (
        completed.stdout + completed.stderr), shown
    assert (tmp_path / "out" / "results.json").is_file(), shown
