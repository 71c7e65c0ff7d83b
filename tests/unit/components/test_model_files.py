"""The model files teams hand over: a `.safetensors` state dict, ONNX with its weights in
an external data file beside it, and a `.pt2` exported the default way (fixed batch size).
Each either becomes a working model whose baseline reproduces the original's outputs, or
is refused in one line naming spec.model.uri."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import yaml
from safetensors.torch import save_file

from modelpress.api import CompressionSpec, QuantizeStep
from modelpress.components import onnxfiles, zoo
from modelpress.components.fetch import check_inputs, fetch
from modelpress.components.modelio import load_torch, read_manifest
from modelpress.components.onnxstats import run_batched, session
from modelpress.components.quantize import AutoTarget, quantize
from modelpress.errors import InvalidInput
from modelpress.records import LatencyProbe

ROOT = Path(__file__).resolve().parents[3]
FIELD = "spec.model.uri"
ARCHITECTURE = "builtin://digits-mlp"
ROWS = 96  # more than the probe's two rows and than one ORT batch of 64


def _digits(folder: Path) -> str:
    rng = np.random.default_rng(0)
    np.savez(folder / "digits.npz", x=rng.random((ROWS, 1, 8, 8), dtype=np.float32),
             y=rng.integers(0, 10, ROWS))
    return (folder / "digits.npz").as_uri()


def _spec(model: dict[str, str], data: str) -> CompressionSpec:
    return CompressionSpec.model_validate({
        "model": model, "data": {"eval": data}, "steps": [{"quantize": {"mode": "dynamic"}}]})


def _eval_x(folder: Path) -> np.ndarray:
    return np.load(folder / "digits.npz")["x"]


def _refusal(spec: CompressionSpec, trusted: bool = False) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        check_inputs(spec, trust_model_code=trusted)
    assert caught.value.where == FIELD and "\n" not in str(caught.value)
    return caught.value


def _outputs(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    return run_batched(session(onnx_path), {"x": x})


def _classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 10)).eval()


def _expected(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# ----------------------------------------------------------------------------- safetensors


def test_a_safetensors_state_dict_becomes_the_working_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    module = zoo.build_architecture(ARCHITECTURE).eval()
    save_file(module.state_dict(), tmp_path / "weights.safetensors")
    data = _digits(tmp_path)

    def no_pickles(*_: Any, **__: Any) -> None:
        raise AssertionError("a safetensors file is never read by torch.load")

    with monkeypatch.context() as patched:
        patched.setattr(torch, "load", no_pickles)
        record = fetch(_spec({"uri": (tmp_path / "weights.safetensors").as_uri(),
                              "architecture": ARCHITECTURE}, data),
                       tmp_path / "model", tmp_path / "data")
    assert record.format == "bundle" and record.inputs == ["x"]
    loaded = load_torch(tmp_path / "model").state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in module.state_dict().items())
    x = _eval_x(tmp_path)
    assert np.allclose(_outputs(tmp_path / "model" / "baseline.onnx", x), _expected(module, x),
                       atol=1e-5)


@pytest.mark.parametrize("content", [b"not a safetensors file at all",
                                     b"\x40\x00\x00\x00\x00\x00\x00\x00{\"w\": {\"dtype\""],
                         ids=["garbage", "truncated-header"])
def test_a_corrupt_safetensors_file_is_one_line(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "weights.safetensors").write_bytes(content)
    uri = (tmp_path / "weights.safetensors").as_uri()
    refusal = _refusal(_spec({"uri": uri, "architecture": ARCHITECTURE}, _digits(tmp_path)))
    assert uri in refusal.problem and "not a readable safetensors file" in refusal.problem


def test_safetensors_weights_that_do_not_fit_the_architecture_are_one_line(
        tmp_path: Path) -> None:
    save_file({"weight": torch.zeros(3, 3)}, tmp_path / "weights.safetensors")
    uri = (tmp_path / "weights.safetensors").as_uri()
    refusal = _refusal(_spec({"uri": uri, "architecture": ARCHITECTURE}, _digits(tmp_path)))
    assert f"does not fit {ARCHITECTURE}" in refusal.problem


# ----------------------------------------------------------------------------- ONNX external data


def _onnx_with_external_data(folder: Path, location: str = "weights.bin") -> Path:
    """The classifier as ONNX in `folder`, every initializer in `location` beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    single = folder / "single.onnx"
    torch.onnx.export(_classifier(), (torch.zeros(2, 1, 8, 8),), str(single),
                      input_names=["x"], output_names=["output"],
                      dynamic_axes={"x": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    model = onnx.load(str(single))
    single.unlink()
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=location,
                    size_threshold=0)
    return path


def _relocated(path: Path, location: str) -> None:
    """Point every external tensor of the model at `path` to `location`."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))


def test_onnx_with_external_data_is_fetched_as_one_file_when_small(tmp_path: Path) -> None:
    source = _onnx_with_external_data(tmp_path / "src")
    assert onnxfiles.data_files(source) == [tmp_path / "src" / "weights.bin"]
    data = _digits(tmp_path)
    record = fetch(_spec({"uri": source.as_uri()}, data), tmp_path / "model", tmp_path / "data")
    assert record.format == "onnx" and record.inputs == ["x"]
    x = _eval_x(tmp_path)
    for written in ("model.onnx", "baseline.onnx"):
        assert onnxfiles.data_files(tmp_path / "model" / written) == []
        assert np.allclose(_outputs(tmp_path / "model" / written, x),
                           _expected(_classifier(), x), atol=1e-5)


@pytest.fixture
def keep_external(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model counts as large: working models keep their weights external."""
    monkeypatch.setattr(onnxfiles, "EXTERNAL_DATA_BYTES", 0)


def test_a_large_onnx_model_keeps_its_external_data_through_quantize(
        tmp_path: Path, keep_external: None) -> None:
    source = _onnx_with_external_data(tmp_path / "src")
    data = _digits(tmp_path)
    fetch(_spec({"uri": source.as_uri()}, data), tmp_path / "model", tmp_path / "data")
    model = tmp_path / "model"
    assert onnxfiles.data_files(model / "model.onnx") == [model / "model.onnx.data"]
    assert onnxfiles.data_files(model / "baseline.onnx") == [model / "baseline.onnx.data"]
    x = _eval_x(tmp_path)
    reference = _outputs(model / "baseline.onnx", x)
    assert np.allclose(reference, _expected(_classifier(), x), atol=1e-5)

    record = quantize(model, QuantizeStep(mode="dynamic"), {"x": x}, None, tmp_path / "q")
    quantized = tmp_path / "q" / "model.onnx"
    assert read_manifest(tmp_path / "q").format == "onnx"
    assert onnxfiles.data_files(quantized) == [tmp_path / "q" / "model.onnx.data"]
    assert record.size_bytes == onnxfiles.size_bytes(quantized) > quantized.stat().st_size
    agreement = (_outputs(quantized, x).argmax(-1) == reference.argmax(-1)).mean()
    assert agreement >= 0.9


def test_auto_quantize_keeps_the_winners_external_data(tmp_path: Path,
                                                       keep_external: None) -> None:
    source = _onnx_with_external_data(tmp_path / "src")
    fetch(_spec({"uri": source.as_uri()}, _digits(tmp_path)), tmp_path / "model",
          tmp_path / "data")
    x = {"x": _eval_x(tmp_path), "y": np.load(tmp_path / "digits.npz")["y"]}
    target = AutoTarget(baseline_onnx=tmp_path / "model" / "baseline.onnx",
                        max_accuracy_drop=1.0, probe=LatencyProbe(batch_size=8, threads=1))
    record = quantize(tmp_path / "model", QuantizeStep(mode="auto"), x, None, tmp_path / "q",
                      auto=target)
    quantized = tmp_path / "q" / "model.onnx"
    assert onnxfiles.data_files(quantized) == [tmp_path / "q" / "model.onnx.data"]
    assert record.size_bytes == onnxfiles.size_bytes(quantized)
    assert _outputs(quantized, x["x"]).shape == (ROWS, 10)


def test_a_small_model_quantizes_to_one_file(tmp_path: Path) -> None:
    source = _onnx_with_external_data(tmp_path / "src")
    data = _digits(tmp_path)
    fetch(_spec({"uri": source.as_uri()}, data), tmp_path / "model", tmp_path / "data")
    quantize(tmp_path / "model", QuantizeStep(mode="dynamic"), {"x": _eval_x(tmp_path)}, None,
             tmp_path / "q")
    assert onnxfiles.data_files(tmp_path / "q" / "model.onnx") == []
    assert not (tmp_path / "q" / "model.onnx.data").exists()


def _outside_via_parent(source: Path) -> str:
    (source.parent.parent / "x.data").write_bytes((source.parent / "weights.bin").read_bytes())
    return "../x.data"


def _absolute(source: Path) -> str:
    return "/etc/passwd"


def _in_a_subfolder(source: Path) -> str:
    (source.parent / "sub").mkdir()
    (source.parent / "weights.bin").rename(source.parent / "sub" / "w.bin")
    return "sub/w.bin"


def _symlink_out(source: Path) -> str:
    outside = source.parent.parent / "outside.bin"
    (source.parent / "weights.bin").rename(outside)
    (source.parent / "w.bin").symlink_to(outside)
    return "w.bin"


@pytest.mark.parametrize("plant", [_outside_via_parent, _absolute, _in_a_subfolder,
                                   _symlink_out],
                         ids=["dot-dot", "absolute", "subfolder", "symlink-out"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path: Path,
                                                            plant: Any) -> None:
    source = _onnx_with_external_data(tmp_path / "src")
    location = plant(source)
    _relocated(source, location)
    refusal = _refusal(_spec({"uri": source.as_uri()}, _digits(tmp_path)))
    assert source.as_uri() in refusal.problem and repr(location) in refusal.problem


def test_missing_external_data_is_one_line(tmp_path: Path) -> None:
    source = _onnx_with_external_data(tmp_path / "src")
    (tmp_path / "src" / "weights.bin").unlink()
    refusal = _refusal(_spec({"uri": source.as_uri()}, _digits(tmp_path)))
    assert "'weights.bin' is missing" in refusal.problem


# ----------------------------------------------------------------------------- over http


class _Served:
    """A folder served over http on 127.0.0.1, every requested path recorded."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                         functools.partial(Handler, directory=str(folder)))
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Served]:
    monkeypatch.setenv("MODELPRESS_ALLOW_PRIVATE_HTTP", "true")
    (tmp_path / "site" / "models").mkdir(parents=True)
    server = _Served(tmp_path / "site")
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_external_data_is_fetched_from_beside_an_http_model(tmp_path: Path,
                                                            served: _Served) -> None:
    _onnx_with_external_data(tmp_path / "site" / "models")
    uri = served.url("/models/model.onnx")
    record = fetch(_spec({"uri": uri}, _digits(tmp_path)), tmp_path / "model",
                   tmp_path / "data")
    assert record.inputs == ["x"]
    assert served.requests == ["/models/model.onnx", "/models/weights.bin"]
    x = _eval_x(tmp_path)
    assert np.allclose(_outputs(tmp_path / "model" / "model.onnx", x),
                       _expected(_classifier(), x), atol=1e-5)


def test_an_http_models_traversal_is_refused_before_any_data_is_downloaded(
        tmp_path: Path, served: _Served) -> None:
    source = _onnx_with_external_data(tmp_path / "site" / "models")
    (tmp_path / "site" / "secret.data").write_bytes(b"secret")
    _relocated(source, "../secret.data")
    refusal = _refusal(_spec({"uri": served.url("/models/model.onnx")}, _digits(tmp_path)))
    assert "'../secret.data'" in refusal.problem
    assert served.requests == ["/models/model.onnx"]


# ----------------------------------------------------------------------------- .pt2


class _FixesItsBatch(torch.nn.Module):
    """A classifier whose graph hard-codes a batch of one."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(1, 64))


def _exported(module: torch.nn.Module, path: Path) -> str:
    torch.export.save(torch.export.export(module, (torch.zeros(1, 1, 8, 8),)), str(path))
    return path.as_uri()


def test_a_pt2_exported_at_a_fixed_batch_size_works_at_any_batch(tmp_path: Path) -> None:
    uri = _exported(_classifier(), tmp_path / "model.pt2")
    spec = _spec({"uri": uri}, _digits(tmp_path))
    record = fetch(spec, tmp_path / "model", tmp_path / "data", trust_model_code=True)
    assert record.format == "torchscript" and record.inputs == ["x"]
    x = _eval_x(tmp_path)
    assert np.allclose(_outputs(tmp_path / "model" / "baseline.onnx", x),
                       _expected(_classifier(), x), atol=1e-5)
    traced = load_torch(tmp_path / "model")
    with torch.no_grad():
        assert traced(torch.from_numpy(x[:5])).shape == (5, 10)


def test_a_pt2_whose_graph_fixes_its_batch_is_refused_at_preflight(tmp_path: Path) -> None:
    uri = _exported(_FixesItsBatch(), tmp_path / "model.pt2")
    refusal = _refusal(_spec({"uri": uri}, _digits(tmp_path)), trusted=True)
    assert uri in refusal.problem and "fixes its batch size" in refusal.problem
    assert "dynamic_shapes" in refusal.problem and "architecture" in refusal.problem


def test_a_fixed_batch_pt2_still_needs_trust(tmp_path: Path) -> None:
    uri = _exported(_classifier(), tmp_path / "model.pt2")
    refusal = _refusal(_spec({"uri": uri}, _digits(tmp_path)))
    assert "torch.export program" in refusal.problem
    assert "--trust-model-code" in refusal.problem


# ----------------------------------------------------------------------------- a whole job


@pytest.mark.e2e
def test_a_job_on_onnx_with_external_data_publishes_a_working_model(tmp_path: Path) -> None:
    """`modelpress run` on the external-data model, quantized dynamic: the published model
    runs on its own and agrees with the original."""
    source = _onnx_with_external_data(tmp_path / "src")
    job = {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
           "metadata": {"name": "external-data", "namespace": "default"},
           "spec": {"model": {"uri": source.as_uri(), "task": "classification"},
                    "data": {"eval": _digits(tmp_path)},
                    "steps": [{"quantize": {"mode": "dynamic"}}],
                    "benchmark": {"batchSizes": [8], "iterations": 5,
                                  "pools": [{"name": "cpu", "device": "cpu", "threads": 1}]}}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    completed = subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "run", str(tmp_path / "job.yaml"),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ))
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert results["compressed"]["sizeBytes"] < results["baseline"]["sizeBytes"]
    x = _eval_x(tmp_path)
    published = _outputs(tmp_path / "out" / "model.onnx", x)
    agreement = (published.argmax(-1) == _expected(_classifier(), x).argmax(-1)).mean()
    assert agreement >= 0.9
