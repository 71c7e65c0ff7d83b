"""Model code is opt-in: programs (.pt2, TorchScript, python:// code) are refused unless
trusted, before they are loaded; trusted, they load only through the documented path, and
nothing falls back to plain unpickling.

The planted files are live: each test that refuses one also shows, where it matters, that
the same file really runs code when loaded the ordinary way (a marker file appears).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hostile_models import TouchOnLoad

from modelpress.api import CompressionSpec
from modelpress.components.fetch import check_inputs, fetch
from modelpress.errors import InvalidInput
from modelpress.pipelines.build import build_pipeline, compile_pipeline
from modelpress.records import Artifacts, PromotionVerdict, ReportRecord
from modelpress.trust import untrusted_program

MARKER = "RAN"
TRUST_HINT = "--trust-model-code"


# ----------------------------------------------------------------------------- planted files


class _MakesMarker:
    """A pickle whose loading runs `os.mkdir(path)`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def _digits_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def torchscript_with_side_effect(path: Path) -> Path:
    """A digits classifier as TorchScript whose loading creates `MARKER` beside `path`."""
    module = torch.nn.Sequential(TouchOnLoad(str(path.parent / MARKER)), _digits_module())
    torch.jit.save(torch.jit.script(module), str(path))
    return path


def exported_program(path: Path) -> Path:
    """A digits classifier saved by torch.export."""
    program = torch.export.export(_digits_module(), (torch.zeros(2, 1, 8, 8),))
    torch.export.save(program, str(path))
    return path


def _rewritten(path: Path, replace: dict[str, bytes], add: dict[str, bytes]) -> None:
    """Rewrite the archive at `path`: members ending with a key of `replace` get its bytes,
    and the members of `add` are added under the archive's root folder."""
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info.filename)) for info in source.infolist()]
    root = members[0][0].filename.split("/")[0]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info, data in members:
            ending = next((key for key in replace if info.filename.endswith(key)), None)
            target.writestr(info, replace[ending] if ending else data)
        for name, data in add.items():
            target.writestr(f"{root}/{name}", data)


def exported_with_planted_pickle(path: Path) -> Path:
    """A .pt2 whose sample inputs are a pickle that creates `MARKER` beside `path`: torch's
    weights-only read refuses it, and torch.export.load then unpickles it plainly."""
    exported_program(path)
    planted = io.BytesIO()
    torch.save(((_MakesMarker(path.parent / MARKER),), {}), planted)
    _rewritten(path, {"data/sample_inputs/model.pt": planted.getvalue()}, {})
    return path


def _arrays(folder: Path) -> str:
    np.savez(folder / "digits.npz", x=np.zeros((10, 1, 8, 8), np.float32),
             y=np.arange(10, dtype=np.int64))
    return (folder / "digits.npz").as_uri()


def _spec(model: dict[str, Any], data: str = "file:///data/digits.npz",
          steps: list[dict[str, Any]] | None = None, **extra: Any) -> CompressionSpec:
    return CompressionSpec.model_validate({
        "model": model, "data": {"eval": data, "calibration": data, "train": data},
        "steps": steps or [{"quantize": {"mode": "dynamic"}}], **extra})


def _refusal(spec: CompressionSpec, trusted: bool = False) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        check_inputs(spec, trust_model_code=trusted)
    return caught.value


# ----------------------------------------------------------------------------- the rule

_STUDENT = [{"distill": {"student": "python://pkg.models:small"}}]
PROGRAMS = {
    "pt2": (_spec({"uri": "s3://models/net.pt2"}), "spec.model.uri", "torch.export program"),
    "ts": (_spec({"uri": "file:///models/net.TS"}), "spec.model.uri", "TorchScript"),
    "pt2-behind-a-malformed-host": (_spec({"uri": "https://[0/net.pt2?x=1"}), "spec.model.uri",
                                    "torch.export program"),
    "python-architecture": (
        _spec({"uri": "file:///models/net.pt", "architecture": "python://pkg.models:build"}),
        "spec.model.architecture", "python://pkg.models:build"),
    "python-student": (_spec({"uri": "builtin://digits-cnn"}, steps=_STUDENT),
                       "spec.steps[0].distill.student", "python://pkg.models:small"),
    "searched-student": (
        _spec({"uri": "builtin://digits-cnn"},
              steps=[{"prune": {"sparsity": 0.5}}, {"distill": {}}],
              search={"parameter": "steps[1].distill.student",
                      "values": ["builtin://digits-mlp", "python://pkg.models:small"]}),
        "spec.steps[1].distill.student", "python://pkg.models:small"),
}


@pytest.mark.parametrize("case", PROGRAMS.values(), ids=PROGRAMS.keys())
def test_a_program_is_refused_naming_its_field_and_how_to_trust_it(
        case: tuple[CompressionSpec, str, str]) -> None:
    spec, field, what = case
    refusal = untrusted_program(spec, trusted=False)
    assert refusal is not None
    assert refusal.where == field
    assert what in refusal.problem and "runs code" in refusal.problem
    assert TRUST_HINT in refusal.problem and "MODELPRESS_TRUST_MODEL_CODE" in refusal.problem
    assert "\n" not in str(refusal)


@pytest.mark.parametrize("case", PROGRAMS.values(), ids=PROGRAMS.keys())
def test_a_trusted_program_is_not_refused(case: tuple[CompressionSpec, str, str]) -> None:
    assert untrusted_program(case[0], trusted=True) is None


@pytest.mark.parametrize("model", [
    {"uri": "file:///models/net.onnx"},
    {"uri": "builtin://digits-cnn"},
    {"uri": "s3://models/net.pt", "architecture": "builtin://digits-cnn"},
    {"uri": "https://example.com/net.pt2.onnx"},
], ids=["onnx", "builtin", "state-dict-builtin-architecture", "onnx-named-like-pt2"])
def test_data_formats_need_no_trust(model: dict[str, str]) -> None:
    steps = [{"distill": {"student": "builtin://digits-mlp"}}]
    assert untrusted_program(_spec(model, steps=steps), trusted=False) is None


# ----------------------------------------------------------------------------- TorchScript


def test_torchscript_with_load_time_code_is_live(tmp_path: Path) -> None:
    """Loading the planted TorchScript file the ordinary way runs its code."""
    path = torchscript_with_side_effect(tmp_path / "model.pt")
    assert not (tmp_path / MARKER).exists()
    torch.jit.load(str(path))
    assert (tmp_path / MARKER).is_file()


@pytest.mark.parametrize("name", ["model.ts", "model.pt", "model.bin"])
def test_untrusted_torchscript_is_refused_before_it_is_loaded(tmp_path: Path,
                                                              name: str) -> None:
    path = torchscript_with_side_effect(tmp_path / name)
    refusal = _refusal(_spec({"uri": path.as_uri()}, _arrays(tmp_path)))
    assert refusal.where == "spec.model.uri"
    assert "TorchScript" in refusal.problem and TRUST_HINT in refusal.problem
    assert not (tmp_path / MARKER).exists()


def test_trusted_torchscript_loads_through_torch_jit_load(tmp_path: Path) -> None:
    """Trusted, the file is read by torch.jit.load, which runs its code (as the README
    says): the marker appears, and the model is checked against the data as any other."""
    path = torchscript_with_side_effect(tmp_path / "model.pt")
    assert check_inputs(_spec({"uri": path.as_uri()}, _arrays(tmp_path)),
                        trust_model_code=True) == []
    assert (tmp_path / MARKER).is_file()


# ----------------------------------------------------------------------------- torch.export


def test_the_planted_pt2_pickle_is_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.export.load alone falls back to plain unpickling and runs the planted pickle."""
    path = exported_with_planted_pickle(tmp_path / "model.pt2")
    # torch logs the fallback with a malformed format string, which pytest's handler raises.
    monkeypatch.setattr(logging.getLogger("torch._export.serde.serialize"), "disabled", True)
    torch.export.load(str(path))
    assert (tmp_path / MARKER).is_dir()


def test_an_untrusted_pt2_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = exported_with_planted_pickle(tmp_path / "model.pt2")
    refusal = _refusal(_spec({"uri": path.as_uri()}, _arrays(tmp_path)))
    assert refusal.where == "spec.model.uri"
    assert "torch.export program" in refusal.problem and TRUST_HINT in refusal.problem
    assert not (tmp_path / MARKER).exists()


def test_a_trusted_pt2_with_a_planted_pickle_is_refused_never_unpickled(
        tmp_path: Path) -> None:
    path = exported_with_planted_pickle(tmp_path / "model.pt2")
    refusal = _refusal(_spec({"uri": path.as_uri()}, _arrays(tmp_path)), trusted=True)
    assert refusal.where == "spec.model.uri"
    assert "pickled Python object" in refusal.problem
    assert not (tmp_path / MARKER).exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # the switch is put back


@pytest.mark.parametrize("member", [
    "data/aotinductor/model/model.so", "data/constants/opaque_obj_0",
    "data/constants/Custom_Obj_0", "data/weights/../../models/x.json", "serialized_state_dict.pt",
])
def test_a_trusted_pt2_may_hold_only_the_program_and_tensors(tmp_path: Path,
                                                             member: str) -> None:
    """Members torch reads other than by a weights-only torch.load (native libraries,
    objects read by pickle itself, the legacy layout) are refused by name."""
    path = exported_program(tmp_path / "model.pt2")
    _rewritten(path, {}, {member: b"\x80\x04N."})
    refusal = _refusal(_spec({"uri": path.as_uri()}, _arrays(tmp_path)), trusted=True)
    assert refusal.where == "spec.model.uri"
    assert member.lower() in refusal.problem.lower()


def test_a_trusted_pt2_becomes_the_working_model(tmp_path: Path) -> None:
    path = exported_program(tmp_path / "model.pt2")
    spec = _spec({"uri": path.as_uri()}, _arrays(tmp_path))
    record = fetch(spec, tmp_path / "model", tmp_path / "data", trust_model_code=True)
    assert record.format == "torchscript" and record.inputs == ["x"]
    assert (tmp_path / "model" / "baseline.onnx").is_file()


# ----------------------------------------------------------------------------- python://


@pytest.fixture
def planted_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module whose import creates the marker; its factory builds the
    digits classifier. Its python:// reference."""
    (tmp_path / "planted_factory.py").write_text(
        f"import os\nos.mkdir({str(tmp_path / MARKER)!r})\n"
        "import torch\n\n\ndef build():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "planted_factory", raising=False)
    return "python://planted_factory:build"


def _state_dict(path: Path) -> str:
    torch.save(_digits_module().state_dict(), path)
    return path.as_uri()


def test_an_untrusted_python_architecture_is_never_imported(tmp_path: Path,
                                                            planted_module: str) -> None:
    spec = _spec({"uri": _state_dict(tmp_path / "weights.pt"), "architecture": planted_module},
                 _arrays(tmp_path))
    refusal = _refusal(spec)
    assert refusal.where == "spec.model.architecture" and TRUST_HINT in refusal.problem
    assert not (tmp_path / MARKER).exists()


def test_a_trusted_python_architecture_is_imported_and_built(tmp_path: Path,
                                                             planted_module: str) -> None:
    spec = _spec({"uri": _state_dict(tmp_path / "weights.pt"), "architecture": planted_module},
                 _arrays(tmp_path))
    assert check_inputs(spec, trust_model_code=True) == []
    assert (tmp_path / MARKER).is_dir()


def test_an_untrusted_python_student_is_refused_before_anything_is_read(
        tmp_path: Path, planted_module: str) -> None:
    spec = _spec({"uri": "builtin://digits-cnn"}, (tmp_path / "absent.npz").as_uri(),
                 steps=[{"distill": {"student": planted_module}}])
    refusal = _refusal(spec)
    assert refusal.where == "spec.steps[0].distill.student"
    assert not (tmp_path / MARKER).exists()


# ----------------------------------------------------------------------------- the pipeline


def _job(spec: CompressionSpec) -> Any:
    from modelpress.api import CompressionJob

    return CompressionJob.model_validate({
        "apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
        "metadata": {"name": "trust", "namespace": "ml"}, "spec": spec.to_wire()})


def test_the_pipeline_of_an_untrusted_program_is_not_built() -> None:
    spec = PROGRAMS["pt2"][0]
    with pytest.raises(InvalidInput, match=r"spec\.model\.uri: .*--trust-model-code"):
        build_pipeline(_job(spec), "s3://modelpress/ml/trust/")


@pytest.mark.parametrize("trusted", [False, True])
def test_the_fetch_step_gets_the_trust_decided_at_build_time(tmp_path: Path,
                                                             trusted: bool) -> None:
    """The fetch task's trust_model_code is a constant of the compiled pipeline: a step
    cannot be talked into trusting what the builder did not."""
    spec = _spec({"uri": "file:///models/net.pt", "architecture": "builtin://digits-cnn"})
    compile_pipeline(_job(spec), "s3://modelpress/ml/trust/", str(tmp_path / "ir.yaml"),
                     trust_model_code=trusted)
    ir = next(yaml.safe_load_all((tmp_path / "ir.yaml").read_text()))
    fetch_task = ir["root"]["dag"]["tasks"]["fetch-op"]
    parameter = fetch_task["inputs"]["parameters"]["trust_model_code"]
    assert parameter["runtimeValue"]["constant"] is trusted


# ----------------------------------------------------------------------------- the operator

_HANDED: list[bool] = []


def _remember_trust(job: Any, output: str, workdir: Path, events: Path, *,
                    trust_model_code: bool) -> ReportRecord:
    """A local-backend runner that only records the trust it was handed."""
    _HANDED.append(trust_model_code)
    return ReportRecord(artifacts=Artifacts(model="m", baseline="b", report="r", results="j",
                                            lineage="l"),
                        promotion=PromotionVerdict(decision="Promoted", reasons=[]))


def test_the_operator_setting_reaches_the_reconciler_and_the_backends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelpress.operator.config import OperatorSettings
    from modelpress.operator.main import make_backend, operator_config

    monkeypatch.setenv("MODELPRESS_LOCAL_WORKDIR", str(tmp_path / "runs"))
    assert operator_config(OperatorSettings()).trust_model_code is False
    monkeypatch.setenv("MODELPRESS_TRUST_MODEL_CODE", "true")
    settings = OperatorSettings()
    assert operator_config(settings).trust_model_code is True
    assert make_backend("local", settings).trust_model_code is True  # type: ignore[attr-defined]
    assert make_backend("kfp", settings).trust_model_code is True  # type: ignore[attr-defined]


@pytest.mark.parametrize("trusted", [False, True])
def test_the_local_worker_hands_the_backends_trust_to_its_runner(tmp_path: Path,
                                                                 trusted: bool) -> None:
    from modelpress.operator.backends.local import RequestRecord, run_worker

    _HANDED.clear()
    request = RequestRecord(job=_job(PROGRAMS["pt2"][0]), output=str(tmp_path / "out"),
                            runner=f"{__name__}:_remember_trust", trust_model_code=trusted)
    (tmp_path / "request.json").write_text(request.model_dump_json(by_alias=True))
    assert run_worker(tmp_path) == 0
    assert _HANDED == [trusted]
