"""Measuring a causal language model shipped as an onnxruntime-genai folder.

A genai folder holds `model.onnx` (+ its data), `genai_config.json` and the tokenizer
files, and runs with a KV cache in `onnxruntime_genai`. Every figure here comes from that
same runtime, so what is measured is what ships:

- Quality (one prefill per window): `onnxruntime_genai.Generator.append_tokens(window)`
  runs the whole window through the model in one prefill, and `get_output("logits")`
  returns the logits of every position ([1, tokens, vocab]). That is exact teacher forcing:
  perplexity and the next-token argmax of every position, from the published graph.
- Generations: greedy (do_sample false) with the KV cache, token by token.
- Speed: prefill latency per prompt length and decode tokens/s, baseline and compressed
  loaded side by side and measured in alternating rounds (like `benchmark.p50_latencies`),
  with the same provider, threads and prompt tokens.
- Peak memory: the peak resident set size (VmHWM) of a fresh Python process that loads
  one model and runs the longest prefill plus the decode; on CUDA it counts host memory only.

`accuracyDrop` for `task: text-generation` is 1 − teacher-forced top-1 agreement: the
fraction of evaluated positions where the compressed model's next-token argmax differs
from the fp32 baseline's (the baseline agrees with itself, 1.0).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from modelpress.api import Model, Pool
from modelpress.errors import InvalidInput

GENAI_CONFIG = "genai_config.json"
TOKENIZER_FILE = "tokenizer.json"
Device = Literal["cpu", "cuda"]


class LlmProbe(Model):
    """How much to measure: window sizes, prompts, rounds and threads."""

    window_tokens: int = Field(default=256, ge=2, description="Tokens per evaluation window.")
    max_windows: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=32, ge=1, description="Per greedy generation.")
    prefill_lengths: list[int] = Field(default_factory=lambda: [64, 256], min_length=1)
    decode_prompt_tokens: int = Field(default=64, ge=1)
    decode_new_tokens: int = Field(default=64, ge=1)
    rounds: int = Field(default=5, ge=1, description="Interleaved rounds; p50 over them.")
    warmup: int = Field(default=1, ge=0)
    threads: int = Field(default=1, ge=1, le=256)


class Generation(Model):
    prompt: str
    baseline_tokens: list[int]
    compressed_tokens: list[int]
    baseline_text: str
    compressed_text: str
    first_divergence: int | None = Field(
        description="Index of the first new token that differs; none when they agree.")


class LlmQuality(Model):
    """Teacher-forced figures on held-out windows, and greedy generations side by side."""

    baseline_perplexity: float
    compressed_perplexity: float
    perplexity_increase: float = Field(description="compressed / baseline - 1.")
    top1_agreement: float = Field(description="Fraction of positions whose argmax agrees.")
    accuracy_drop: float = Field(description="1 - top1Agreement (the baseline's is 1.0).")
    windows: int
    scored_tokens: int
    generations: list[Generation] = Field(default_factory=list)


class PeakMemory(Model):
    runtime_rss_bytes: int = Field(description="Peak RSS after importing the runtime.")
    peak_rss_bytes: int = Field(description="Peak RSS after loading and running the model.")


class LlmSpeedSide(Model):
    prefill_ms: dict[str, float] = Field(description="p50 per prompt length (tokens).")
    decode_tokens_per_second: float
    memory: PeakMemory


class LlmSpeed(Model):
    """One pool's speed figures of both models, same runtime, provider, threads, prompts."""

    pool: str
    device: Device
    available: bool
    reason: str | None = None
    threads: int | None = None
    rounds: int | None = None
    baseline: LlmSpeedSide | None = None
    compressed: LlmSpeedSide | None = None
    decode_speedup: float | None = None
    prefill_speedup: dict[str, float] = Field(default_factory=dict)


class LlmFigures(Model):
    baseline_size_bytes: int = Field(description="Every file of the genai folder.")
    compressed_size_bytes: int
    baseline_onnx_bytes: int = Field(description="model.onnx and its external data.")
    compressed_onnx_bytes: int
    quality: LlmQuality
    speed: list[LlmSpeed] = Field(default_factory=list)


class PeakMemoryRequest(Model):
    """What the peak-memory subprocess runs (argv JSON in, PeakMemory JSON out)."""

    folder: str
    device: Device
    threads: int
    prompt: list[int]
    new_tokens: int


# ---- the runtime --------------------------------------------------------------------------

def genai_config(folder: Path) -> dict[str, Any]:
    path = folder / GENAI_CONFIG
    if not path.is_file():
        raise InvalidInput(str(path), "not an onnxruntime-genai model folder (no genai_config)")
    config: dict[str, Any] = json.loads(path.read_text())
    return config


def context_length(folder: Path) -> int:
    return int(genai_config(folder)["model"]["context_length"])


def cuda_unavailable_reason() -> str | None:
    """Why this machine's onnxruntime-genai cannot use CUDA, or None when it can."""
    import onnxruntime_genai as og

    if og.is_cuda_available():
        return None
    return ("onnxruntime-genai here has no CUDA provider (og.is_cuda_available() is false; "
            "it needs the onnxruntime-genai-cuda package and an NVIDIA driver)")


def open_model(folder: Path, threads: int = 1, device: Device = "cpu") -> Any:
    """An og.Model on `device` with `threads` intra-op threads, whatever providers the
    folder's genai_config names (so both models of a pair run alike)."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    config.clear_providers()
    if device == "cuda":
        config.append_provider("cuda")
    return og.Model(config)


def _generator(model: Any, max_length: int, min_length: int = 0) -> Any:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=max_length, min_length=min_length)
    return og.Generator(model, params)


def _tokens(array: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.int32)


# ---- tokens -------------------------------------------------------------------------------

def _tokenizer(folder: Path) -> Any:
    from tokenizers import Tokenizer

    path = folder / TOKENIZER_FILE
    if not path.is_file():
        raise InvalidInput(str(path), "the model folder has no tokenizer.json")
    return Tokenizer.from_file(str(path))


def token_windows(tokenizer_folder: Path, texts: Sequence[str], max_tokens: int
                  ) -> list[np.ndarray]:
    """The evaluation sequences: the texts joined by blank lines, tokenized once with the
    folder's own tokenizer.json (no special tokens added), cut into consecutive windows of
    `max_tokens`; a shorter tail is kept when it has a token to predict."""
    ids = _tokenizer(tokenizer_folder).encode("\n\n".join(texts), add_special_tokens=False).ids
    windows = [_tokens(ids[start:start + max_tokens]) for start in range(0, len(ids), max_tokens)]
    return [window for window in windows if len(window) >= 2]


def encode_prompts(tokenizer_folder: Path, prompts: Sequence[str]) -> list[np.ndarray]:
    tokenizer = _tokenizer(tokenizer_folder)
    return [_tokens(tokenizer.encode(prompt, add_special_tokens=False).ids) for prompt in prompts]


def decode_tokens(tokenizer_folder: Path, tokens: Sequence[int]) -> str:
    return str(_tokenizer(tokenizer_folder).decode(list(tokens), skip_special_tokens=False))


# ---- teacher forcing ----------------------------------------------------------------------

@dataclass(frozen=True)
class TeacherForced:
    """Per model: summed negative log-likelihood of every in-window next token, how many
    were scored, and the argmax at each of those positions (windows concatenated)."""

    nll_sum: float
    scored: int
    top1: np.ndarray

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll_sum / self.scored))


def window_logits(model: Any, window: np.ndarray) -> np.ndarray:
    """The logits of every position of `window`, from one prefill."""
    generator = _generator(model, max_length=len(window))
    generator.append_tokens(window)
    logits = np.asarray(generator.get_output("logits"))[0]
    if logits.shape[0] != len(window):
        raise RuntimeError(f"the model returned logits for {logits.shape[0]} of "
                           f"{len(window)} positions; teacher forcing needs all of them")
    return logits.astype(np.float64)


def next_token_nll(logits: np.ndarray, window: np.ndarray) -> np.ndarray:
    """-log p(window[i+1] | window[:i+1]) for each position but the last."""
    shifted = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
    log_normalizer = np.log(np.exp(shifted).sum(axis=-1))
    return log_normalizer - shifted[np.arange(len(window) - 1), window[1:]]


def check_fits(folder: Path, tokens: int, what: str) -> None:
    limit = context_length(folder)
    if tokens > limit:
        raise InvalidInput(what, f"{tokens} tokens exceed the model's context_length {limit}")


def teacher_forced(folder: Path, windows: Sequence[np.ndarray], threads: int = 1
                   ) -> TeacherForced:
    check_fits(folder, max(len(window) for window in windows), "evaluation window")
    model = open_model(folder, threads)
    nll_sum, scored, top1 = 0.0, 0, []
    for window in windows:
        logits = window_logits(model, window)
        nll_sum += float(next_token_nll(logits, window).sum())
        scored += len(window) - 1
        top1.append(logits[:-1].argmax(axis=-1))
    return TeacherForced(nll_sum=nll_sum, scored=scored, top1=np.concatenate(top1))


def perplexity(folder: Path, windows: Sequence[np.ndarray], threads: int = 1) -> float:
    """exp of the mean next-token negative log-likelihood over all windows' positions."""
    return teacher_forced(folder, windows, threads).perplexity


def teacher_forced_top1(folder: Path, windows: Sequence[np.ndarray], threads: int = 1
                        ) -> np.ndarray:
    """The next-token argmax at every position that predicts an in-window token."""
    return teacher_forced(folder, windows, threads).top1


def agreement(baseline_top1: np.ndarray, compressed_top1: np.ndarray) -> float:
    return float((baseline_top1 == compressed_top1).mean())


def top1_agreement(baseline_folder: Path, compressed_folder: Path,
                   windows: Sequence[np.ndarray], threads: int = 1) -> float:
    return agreement(teacher_forced_top1(baseline_folder, windows, threads),
                     teacher_forced_top1(compressed_folder, windows, threads))


# ---- generations --------------------------------------------------------------------------

def greedy_tokens(model: Any, prompt: np.ndarray, max_new_tokens: int) -> list[int]:
    """Greedy continuation with the KV cache; stops at end-of-sequence or the budget."""
    generator = _generator(model, max_length=len(prompt) + max_new_tokens)
    generator.append_tokens(prompt)
    tokens: list[int] = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def greedy_generations(folder: Path, prompts: Sequence[np.ndarray], max_new_tokens: int,
                       threads: int = 1) -> list[list[int]]:
    model = open_model(folder, threads)
    return [greedy_tokens(model, prompt, max_new_tokens) for prompt in prompts]


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where the two token lists differ (a length difference counts at the
    shorter one's end); None when they are equal."""
    for index, (left, right) in enumerate(zip(a, b, strict=False)):
        if left != right:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def side_by_side(baseline: Path, compressed: Path, prompts: Sequence[str],
                 max_new_tokens: int, threads: int = 1) -> list[Generation]:
    encoded = encode_prompts(baseline, prompts)
    ours = greedy_generations(baseline, encoded, max_new_tokens, threads)
    theirs = greedy_generations(compressed, encoded, max_new_tokens, threads)
    return [Generation(prompt=prompt, baseline_tokens=left, compressed_tokens=right,
                       baseline_text=decode_tokens(baseline, left),
                       compressed_text=decode_tokens(compressed, right),
                       first_divergence=first_divergence(left, right))
            for prompt, left, right in zip(prompts, ours, theirs, strict=True)]


def measure_quality(baseline: Path, compressed: Path, windows: Sequence[np.ndarray],
                    prompts: Sequence[str], probe: LlmProbe) -> LlmQuality:
    reference = teacher_forced(baseline, windows, probe.threads)
    measured = teacher_forced(compressed, windows, probe.threads)
    agree = agreement(reference.top1, measured.top1)
    return LlmQuality(
        baseline_perplexity=reference.perplexity, compressed_perplexity=measured.perplexity,
        perplexity_increase=measured.perplexity / reference.perplexity - 1.0,
        top1_agreement=agree, accuracy_drop=1.0 - agree, windows=len(windows),
        scored_tokens=reference.scored,
        generations=side_by_side(baseline, compressed, prompts, probe.max_new_tokens,
                                 probe.threads))


# ---- speed --------------------------------------------------------------------------------

def speed_prompt(windows: Sequence[np.ndarray], length: int) -> np.ndarray:
    """`length` tokens of real text: the windows end to end, repeated if too few."""
    tokens = np.concatenate(list(windows))
    return _tokens(np.resize(tokens, length))


def interleaved(models: Mapping[str, Any], measure: Callable[[Any], float], rounds: int,
                warmup: int) -> dict[str, list[float]]:
    """`measure(model)` for every model in alternating rounds, so that noise on a shared
    machine hits all alike; warm-up rounds are discarded."""
    samples: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(warmup + rounds):
        for name, model in models.items():
            value = measure(model)
            if round_index >= warmup:
                samples[name].append(value)
    return samples


def _prefill_ms(model: Any, prompt: np.ndarray) -> float:
    generator = _generator(model, max_length=len(prompt))
    begin = time.perf_counter()
    generator.append_tokens(prompt)
    return (time.perf_counter() - begin) * 1000


def _decode_rate(model: Any, prompt: np.ndarray, new_tokens: int) -> float:
    """Tokens per second of the decode alone (after an untimed prefill); min_length keeps
    an early end-of-sequence from shortening the run."""
    total = len(prompt) + new_tokens
    generator = _generator(model, max_length=total, min_length=total)
    generator.append_tokens(prompt)
    generated = 0
    begin = time.perf_counter()
    while not generator.is_done():
        generator.generate_next_token()
        generated += 1
    return generated / (time.perf_counter() - begin)


def open_models(folders: Mapping[str, Path], threads: int, device: Device) -> dict[str, Any]:
    return {name: open_model(folder, threads, device) for name, folder in folders.items()}


def prefill_latency_ms(folders: Mapping[str, Path], prompt: np.ndarray, lengths: Sequence[int],
                       threads: int = 1, rounds: int = 5, warmup: int = 1,
                       device: Device = "cpu") -> dict[str, dict[int, float]]:
    """p50 prefill latency (ms) of each model per prompt length (the first `length` tokens
    of `prompt`), the models interleaved."""
    models = open_models(folders, threads, device)
    result: dict[str, dict[int, float]] = {name: {} for name in folders}
    for length in lengths:
        samples = interleaved(models, partial(_prefill_ms, prompt=prompt[:length]), rounds,
                              warmup)
        for name, values in samples.items():
            result[name][length] = statistics.median(values)
    return result


def decode_tokens_per_second(folders: Mapping[str, Path], prompt: np.ndarray, new_tokens: int,
                             threads: int = 1, rounds: int = 5, warmup: int = 1,
                             device: Device = "cpu") -> dict[str, float]:
    """p50 decode speed (tokens/s, KV cache) of each model after `prompt`, interleaved."""
    models = open_models(folders, threads, device)
    samples = interleaved(models, lambda model: _decode_rate(model, prompt, new_tokens),
                          rounds, warmup)
    return {name: statistics.median(values) for name, values in samples.items()}


def _status_bytes(field: str) -> int:
    """A memory line of /proc/self/status (Linux), in bytes. Not ru_maxrss: that survives
    exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_peak_memory(request: PeakMemoryRequest) -> PeakMemory:
    """In this process: load the model, prefill the prompt and decode; the peak RSS."""
    import onnxruntime_genai  # noqa: F401  (the runtime's own footprint, before any model)

    runtime = _status_bytes("VmHWM")
    model = open_model(Path(request.folder), request.threads, request.device)
    _decode_rate(model, _tokens(request.prompt), request.new_tokens)
    return PeakMemory(runtime_rss_bytes=runtime, peak_rss_bytes=_status_bytes("VmHWM"))


def peak_memory(folder: Path, prompt: np.ndarray, new_tokens: int, threads: int = 1,
                device: Device = "cpu") -> PeakMemory:
    """Peak RSS of a fresh process that loads `folder` and runs prefill + decode."""
    request = PeakMemoryRequest(folder=str(folder), device=device, threads=threads,
                                prompt=[int(token) for token in prompt], new_tokens=new_tokens)
    done = subprocess.run([sys.executable, "-m", __name__, request.model_dump_json()],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONSAFEPATH": "1"})
    return PeakMemory.model_validate_json(done.stdout.strip().splitlines()[-1])


def measure_speed(baseline: Path, compressed: Path, windows: Sequence[np.ndarray], pool: Pool,
                  probe: LlmProbe) -> LlmSpeed:
    """Both models on the pool's device with the probe's threads and the same prompts."""
    reason = cuda_unavailable_reason() if pool.device == "cuda" else None
    if reason is not None:
        return LlmSpeed(pool=pool.name, device=pool.device, available=False, reason=reason)
    folders = {"baseline": baseline, "compressed": compressed}
    longest = max([*probe.prefill_lengths, probe.decode_prompt_tokens])
    for folder in (baseline, compressed):
        check_fits(folder, longest + probe.decode_new_tokens,
                   "longest benchmark prompt + decode new tokens")
    prompt = speed_prompt(windows, longest)
    prefill = prefill_latency_ms(folders, prompt, probe.prefill_lengths, probe.threads,
                                 probe.rounds, probe.warmup, pool.device)
    decode_prompt = prompt[:probe.decode_prompt_tokens]
    decode = decode_tokens_per_second(folders, decode_prompt, probe.decode_new_tokens,
                                      probe.threads, probe.rounds, probe.warmup, pool.device)
    sides = {name: LlmSpeedSide(
        prefill_ms={str(length): round(ms, 4) for length, ms in prefill[name].items()},
        decode_tokens_per_second=round(decode[name], 4),
        memory=peak_memory(folder, prompt, probe.decode_new_tokens, probe.threads, pool.device))
        for name, folder in folders.items()}
    return LlmSpeed(
        pool=pool.name, device=pool.device, available=True, threads=probe.threads,
        rounds=probe.rounds, baseline=sides["baseline"], compressed=sides["compressed"],
        decode_speedup=round(decode["compressed"] / decode["baseline"], 4),
        prefill_speedup={str(length): round(prefill["baseline"][length]
                                            / prefill["compressed"][length], 4)
                         for length in probe.prefill_lengths})


# ---- bytes and the whole record -----------------------------------------------------------

def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def onnx_bytes(folder: Path) -> int:
    """The decoder's model file and the external data files its tensors name."""
    import onnx

    from modelpress.components.onnxfiles import external_locations

    path = folder / genai_config(folder)["model"]["decoder"]["filename"]
    graph = onnx.load(str(path), load_external_data=False)
    return path.stat().st_size + sum((folder / name).stat().st_size
                                     for name in external_locations(graph))


def llm_figures(baseline: Path, compressed: Path, texts: Sequence[str],
                prompts: Sequence[str], pools: Sequence[Pool], probe: LlmProbe) -> LlmFigures:
    """Every LLM figure of a (baseline, compressed) pair of genai folders: quality on the
    held-out `texts` and `prompts` (CPU), speed and memory per pool."""
    windows = token_windows(baseline, texts, probe.window_tokens)[:probe.max_windows]
    if not windows:
        raise InvalidInput("spec.data.eval", "the evaluation text has fewer than 2 tokens")
    return LlmFigures(
        baseline_size_bytes=folder_bytes(baseline), compressed_size_bytes=folder_bytes(compressed),
        baseline_onnx_bytes=onnx_bytes(baseline), compressed_onnx_bytes=onnx_bytes(compressed),
        quality=measure_quality(baseline, compressed, windows, prompts, probe),
        speed=[measure_speed(baseline, compressed, windows, pool, probe) for pool in pools])


if __name__ == "__main__":
    print(run_peak_memory(PeakMemoryRequest.model_validate_json(sys.argv[1])).model_dump_json())
