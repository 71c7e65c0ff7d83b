"""A causal LM end to end: `modelpress run` on a tiny random Llama handed over as a file://
Hugging Face folder publishes an onnxruntime-genai folder that generates as is, with figures
an independent llm_metrics computation on the published folders reproduces; auto never
ships a candidate that misses its bar; a step that does not fit the task is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from modelpress.components import llm_metrics
from modelpress.components.llm_metrics import LlmProbe
from modelpress.components.llm_sensitivity import rank_layers
from modelpress.components.llm_steps import MIXED_BLOCK
from modelpress.components.llm_zoo import english_text, tiny_llama_folder

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
EVAL = "builtin://english-text"
CALIBRATION = "builtin://english-text?split=train"
LOOSE_DROP = 0.5
# Tight enough that some candidates of a random model miss it (fp32 never does).
TIGHT_PERPLEXITY = 0.0001


def _job(name: str, folder: Path, quantize: dict[str, Any],
         gates: dict[str, float] | None = None) -> dict[str, Any]:
    return {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"model": {"uri": folder.as_uri() + "/", "task": "text-generation"},
                     "data": {"eval": EVAL, "calibration": CALIBRATION},
                     "steps": [{"quantize": quantize}],
                     "benchmark": {"iterations": 5,
                                   "pools": [{"name": "cpu", "device": "cpu", "threads": 1}]},
                     "promotion": {"gates": gates or {}}}}


def _run(work: Path, job: dict[str, Any]) -> tuple[subprocess.CompletedProcess, Path]:
    job_file = work / f"{job['metadata']['name']}.yaml"
    job_file.write_text(yaml.safe_dump(job))
    output = work / f"out-{job['metadata']['name']}"
    completed = subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "run", str(job_file), "--output", str(output)],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", "PYTHONSAFEPATH": "1"})
    return completed, output


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama") / "hf")


@pytest.fixture(scope="module")
def int8_run(llama: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[subprocess.CompletedProcess, Path]:
    return _run(tmp_path_factory.mktemp("llm-int8"), _job("llm-int8", llama, {"mode": "int8"}))


@pytest.fixture(scope="module")
def auto_run(llama: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[subprocess.CompletedProcess, Path]:
    gates = {"maxAccuracyDrop": LOOSE_DROP, "maxPerplexityIncrease": TIGHT_PERPLEXITY}
    return _run(tmp_path_factory.mktemp("llm-auto"),
                _job("llm-auto", llama, {"mode": "auto"}, gates))


def _results(output: Path) -> dict[str, Any]:
    return json.loads((output / "results.json").read_text())["results"]


def test_the_published_folder_generates_with_onnxruntime_genai(int8_run) -> None:
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    completed, output = int8_run
    assert completed.returncode == 0, completed.stderr[-3000:] + completed.stdout[-3000:]
    assert {"genai_config.json", "model.onnx", "tokenizer.json"} <= {
        path.name for path in output.iterdir()}
    assert (output / "baseline" / "genai_config.json").is_file()
    generation = _results(output)["textGeneration"]["generations"][0]
    tokenizer = Tokenizer.from_file(str(output / "tokenizer.json"))
    prompt = np.array(tokenizer.encode(generation["prompt"], add_special_tokens=False).ids,
                      dtype=np.int32)
    model = og.Model(str(output))  # the folder as published, nothing added
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + 8)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    pieces = []
    while not generator.is_done():
        generator.generate_next_token()
        pieces.append(tokenizer.decode([int(generator.get_next_tokens()[0])],
                                       skip_special_tokens=False))
    assert pieces and pieces == generation["compressedTokens"][:len(pieces)]


def test_results_equal_an_independent_measurement_of_the_published_folders(int8_run) -> None:
    completed, output = int8_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = _results(output)
    probe = LlmProbe()
    texts = english_text("eval")
    windows = llm_metrics.token_windows(output / "baseline", texts,
                                        probe.window_tokens)[:probe.max_windows]
    prompts = [generation["prompt"] for generation in results["textGeneration"]["generations"]]
    quality = llm_metrics.measure_quality(output / "baseline", output, windows, prompts, probe)
    figures = results["textGeneration"]
    assert figures["baselinePerplexity"] == pytest.approx(quality.baseline_perplexity, rel=1e-9)
    assert figures["compressedPerplexity"] == pytest.approx(quality.compressed_perplexity,
                                                            rel=1e-9)
    assert figures["top1Agreement"] == pytest.approx(quality.top1_agreement, abs=1e-12)
    assert results["accuracyDrop"] == pytest.approx(quality.accuracy_drop, abs=1e-6)
    assert results["perplexityIncrease"] == pytest.approx(quality.perplexity_increase, abs=1e-6)
    assert [g.get("firstDivergence") for g in figures["generations"]] == [
        g.first_divergence for g in quality.generations]
    assert results["compressionRatio"] == pytest.approx(
        llm_metrics.onnx_bytes(output / "baseline") / llm_metrics.onnx_bytes(output), rel=1e-3)
    speed = results["benchmarks"][0]["textGeneration"]
    assert results["speedup"]["cpu"] == pytest.approx(
        speed["decodeTokensPerSecond"]["compressed"] / speed["decodeTokensPerSecond"]["baseline"],
        rel=1e-3)


def test_auto_never_ships_a_candidate_that_misses_the_bar(auto_run) -> None:
    completed, output = auto_run
    assert completed.returncode in (0, 3), completed.stderr[-3000:] + completed.stdout[-3000:]
    candidates = _results(output)["candidates"]
    missed = [c for c in candidates if "exceeds" in c["reason"]]
    assert missed and not any(c["chosen"] for c in missed)
    chosen = [c for c in candidates if c["chosen"]]
    assert len(chosen) == 1
    assert chosen[0]["accuracyDrop"] <= LOOSE_DROP
    assert chosen[0]["perplexityIncrease"] <= TIGHT_PERPLEXITY
    qualified = [c for c in candidates if "exceeds" not in c["reason"]
                 and not c["reason"].startswith("failed")]
    assert chosen[0]["tokensPerSecond"] >= 0.98 * max(c["tokensPerSecond"] for c in qualified)
    report = (output / "report.html").read_text()
    assert all(c["name"] in report for c in candidates)


def test_auto_mixes_int4_into_the_layer_least_sensitive_on_calibration_text(
        llama: Path, auto_run) -> None:
    """The ranking is recomputed here, in another process, from the same calibration text:
    the 2-layer model's mixed candidate puts its least sensitive layer in int4."""
    completed, output = auto_run
    assert completed.returncode in (0, 3), completed.stderr[-3000:]
    least = rank_layers(llama, english_text("train"), MIXED_BLOCK)[0].layer
    names = [c["name"] for c in _results(output)["candidates"]]
    assert f"int8-b{MIXED_BLOCK}-int4-layers-{least}" in names


def test_a_step_that_does_not_fit_the_task_is_one_line_exit_2(llama: Path,
                                                              tmp_path: Path) -> None:
    job = _job("llm-prune", llama, {"mode": "int4"})
    job["spec"]["steps"].insert(0, {"prune": {"sparsity": 0.5}})
    completed, _ = _run(tmp_path, job)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "spec.steps[0]" in lines[0] and "text-generation" in lines[0]
