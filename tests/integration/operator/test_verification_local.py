"""The verification pipeline, run for real on this machine (kfp.local, as pipelines/local.py
runs pipelines) on the builtin digits model: its figures are those of the staged bytes.

The candidate is the digits baseline quantized to dynamic int8, staged with the operator's
own staging function; the run fetches the original, takes the staged candidate (checking
its sha256), validates, benchmarks and reports.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import yaml

from modelpress.api import CompressionSpec, StagedCandidate
from modelpress.components.candidate import take_candidate
from modelpress.errors import StoreError
from modelpress.jobfile import parse_job
from modelpress.operator.verify import stage_candidate
from modelpress.pipelines.build import build_verification_pipeline
from modelpress.pipelines.local import _step_environment
from modelpress.records import read_results_document

ROOT = Path(__file__).resolve().parents[3]


def _digits_job() -> object:
    document = yaml.safe_load((ROOT / "examples" / "digits-prune-quantize.yaml").read_text())
    document["spec"]["benchmark"].update(batchSizes=[8], iterations=20)
    return parse_job(document, "digits")


def _fetched(spec: CompressionSpec, folder: Path) -> Path:
    """The original working model (with baseline.onnx), as the fetch step writes it."""
    from modelpress.components.fetch import fetch

    original = folder / "original"
    fetch(spec, original, folder / "datasets")
    return original


def _candidate_in(output: Path, original: Path) -> Path:
    """What a job's run would publish: the baseline quantized to dynamic int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output.mkdir(parents=True)
    quantize_dynamic(str(original / "baseline.onnx"), str(output / "model.onnx"),
                     weight_type=QuantType.QInt8)
    return output / "model.onnx"


def test_a_staged_file_that_changed_is_refused(tmp_path: Path) -> None:
    staged = tmp_path / "candidate"
    staged.mkdir()
    (staged / "model.onnx").write_bytes(b"replaced after staging")
    candidate = StagedCandidate(uri=staged.as_uri(), sha256={"model.onnx": "0" * 64})
    with pytest.raises(StoreError, match="the candidate changed after staging"):
        take_candidate(candidate, tmp_path / "original", tmp_path / "model")
    assert not (tmp_path / "model" / "model.onnx").exists()


@pytest.mark.e2e
def test_the_verification_run_measures_the_staged_bytes(tmp_path: Path) -> None:
    from kfp import local

    job = _digits_job()
    original = _fetched(job.spec, tmp_path / "fetched")  # type: ignore[attr-defined]
    produced = _candidate_in(tmp_path / "tenant-output", original)
    candidate = stage_candidate((tmp_path / "tenant-output").as_uri(),
                                (tmp_path / "platform" / "candidate").as_uri())
    staged_bytes = (tmp_path / "platform" / "candidate" / "model.onnx").read_bytes()
    assert candidate.sha256 == {"model.onnx": hashlib.sha256(staged_bytes).hexdigest()}
    produced.write_bytes(b"the tenant overwrote its output after staging")

    verified = (tmp_path / "platform" / "verified").as_uri()
    work = tmp_path / "work"
    (work / "workspace").mkdir(parents=True)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(work / "pipeline_root"),
               workspace_root=str(work / "workspace"), raise_on_error=True)
    pipeline = build_verification_pipeline(job, candidate, verified,  # type: ignore[arg-type]
                                           secret_name="modelpress-platform-storage")
    log = io.StringIO()
    with _step_environment(work, work / "events.jsonl"):
        import contextlib

        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            pipeline()

    document = read_results_document(verified)
    assert document.results.compressed.size_bytes == len(staged_bytes)
    assert document.results.compression_ratio == pytest.approx(
        document.results.baseline.size_bytes / len(staged_bytes), rel=1e-3)
    assert [step.name for step in document.steps][:2] == ["fetch", "candidate"]
    published = tmp_path / "platform" / "verified" / "model.onnx"
    assert published.read_bytes() == staged_bytes
    lineage = json.loads((tmp_path / "platform" / "verified" / "lineage.json").read_text())
    assert lineage["artifacts"]["model.onnx"]["sha256"] == candidate.sha256["model.onnx"]
    assert lineage["artifacts"]["model.onnx"]["producer"] == "candidate"
