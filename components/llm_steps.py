"""The steps of `task: text-generation`: quantize, validate and benchmark onnxruntime-genai
folders (docs/llm.md).

The working model of this task is a folder with `manifest.json` and, before quantize, the
Hugging Face causal LM (`hf/`) plus its fp32 genai folder (`baseline-genai/`, what every
figure is measured against); after quantize, the compressed genai folder (`genai/`). The
texts travel in the datasets artifact as `texts.json` (`LlmTexts`), written by fetch.

Decisions are made on the calibration side: auto quantization measures every candidate's
agreement, perplexity and decode speed on the calibration (else train) text, never on the
eval text, which validate reads once for the reported figures.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from modelpress.api import (
    Benchmark,
    Candidate,
    Generation,
    LlmPoolFigures,
    Model,
    Pool,
    PoolBenchmark,
    QuantizeStep,
    TextGenerationFigures,
)
from modelpress.components.llm_export import (
    LayerOverride,
    LlmRecipe,
    build_genai_folder,
    model_bytes,
)
from modelpress.components.llm_metrics import (
    TOKENIZER_FILE,
    LlmProbe,
    LlmQuality,
    LlmSpeed,
    decode_tokens_per_second,
    measure_quality,
    measure_speed,
    speed_prompt,
    teacher_forced,
    token_windows,
)
from modelpress.components.llm_sensitivity import LayerSensitivity, rank_layers
from modelpress.components.modelio import Manifest, read_manifest, write_manifest
from modelpress.components.result import timed
from modelpress.errors import InvalidInput
from modelpress.records import (
    BenchmarkRecord,
    LatencyProbe,
    MeasuredModel,
    QuantizeRecord,
    ValidateRecord,
)

HF_FOLDER = "hf"
BASELINE_GENAI = "baseline-genai"
GENAI = "genai"
TEXTS = "texts.json"
AGREEMENT = "top1Agreement"
PERPLEXITY = "perplexity"
FP32 = "fp32 (not quantized)"
# Near-ties in decode speed (within 2%) go to the smaller candidate.
NEAR_TIE = 0.02
# Candidates are told apart on fewer windows and rounds than the reported figures, but decode
# speed has one definition, LlmProbe's (prompt and new tokens), which the benchmark step and
# benchmarks/llm_vs_builder.py use too: a candidate's speedup here is the one reported later.
# 5 rounds, not 3: the int8 and mixed int4/int8 candidates differ by 5-10% in decode speed,
# about one 3-round probe's spread on a shared 2-core VM (about 40 s more on SmolLM2-135M).
_AUTO_WINDOWS = 8
AUTO_PROBE = LlmProbe(rounds=5, warmup=1)
# Auto's mixed candidates: int8 block MIXED_BLOCK with this many of the layers least sensitive
# to int4 (llm_sensitivity) in int4; a model with fewer layers gets one less than it has.
MIXED_COUNTS = (2, 4)
MIXED_BLOCK = 64
# The reported benchmark: rounds at most this many (decode runs are long).
MAX_BENCHMARK_ROUNDS = 5


class LlmTexts(Model):
    """What the text-generation steps read (fetch writes it into the datasets artifact):
    the held-out eval texts, the calibration texts (data.calibration, else data.train;
    empty when neither), and the prompts of the generation check."""

    eval: list[str] = Field(min_length=1)
    calibration: list[str] = Field(default_factory=list)
    prompts: list[str] = Field(min_length=1)


def write_texts(texts: LlmTexts, datasets: Path) -> None:
    datasets.mkdir(parents=True, exist_ok=True)
    (datasets / TEXTS).write_text(texts.model_dump_json(by_alias=True), encoding="utf-8")


def read_texts(datasets: Path) -> LlmTexts:
    return LlmTexts.model_validate_json((datasets / TEXTS).read_text(encoding="utf-8"))


def is_text_generation(original: Path) -> bool:
    """Whether the job's original working model is a causal LM (this module's steps)."""
    return read_manifest(original).task == "text-generation"


def genai_folder(model: Path) -> Path:
    """The genai folder of a working model: its own after quantize, the fp32 baseline's
    before (a run always quantizes, so this is the compressed one past quantize)."""
    manifest = read_manifest(model)
    return model / (GENAI if manifest.format == "genai" else BASELINE_GENAI)


# ----------------------------------------------------------------------------- recipes


def recipe_of(options: QuantizeStep, where: str = "quantize") -> LlmRecipe:
    """The weight-only recipe a fixed-mode quantize step names (mode int4, int8 or fp32)."""
    fields = {"weights": options.mode, "algorithm": options.algorithm,
              "block_size": options.block_size, "symmetric": options.symmetric,
              "accuracy_level": options.accuracy_level, "embeddings": options.embeddings,
              "lm_head": options.lm_head,
              "layer_overrides": None if options.layer_overrides is None else
              [override.to_wire() for override in options.layer_overrides]}
    try:
        return LlmRecipe.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        problem = error.errors()[0]["msg"].removeprefix("Value error, ")
        raise InvalidInput(where, problem) from None


def check_recipe(recipe: LlmRecipe, config: dict[str, Any], calibration: bool,
                 where: str) -> None:
    """What the builder would refuse about `recipe` for this model, refused up front."""
    layers = int(config.get("num_hidden_layers") or 0)
    for override in recipe.layer_overrides:
        beyond = [layer for layer in override.layers if layer >= layers]
        if beyond:
            raise InvalidInput(f"{where}.layerOverrides", f"layer {beyond[0]} does not exist; "
                                                          f"the model has {layers}")
    if recipe.embeddings == "int8" and not config.get("tie_word_embeddings", False):
        raise InvalidInput(f"{where}.embeddings", "int8 embeddings need a model whose "
                                                  "embedding and lm_head are tied")
    if recipe.algorithm == "gptq" and not calibration:
        raise InvalidInput("spec.data.calibration", "gptq needs calibration text")
    odd = _odd_block_rows(config, recipe.block_size) if recipe.algorithm == "k_quant" else None
    if odd is not None:
        blocks = -(-odd // recipe.block_size)
        raise InvalidInput(f"{where}.blockSize", f"k_quant packs two blocks' zero points to a "
                           f"byte and fails on rows of {odd} weights ({blocks} blocks of "
                           f"{recipe.block_size}): choose a block size that gives an even "
                           "count, or algorithm rtn")


def _odd_block_rows(config: dict[str, Any], block_size: int) -> int | None:
    """A MatMul row width (hidden, intermediate, attention output) of this model that splits
    into an odd number of `block_size` blocks, or None. onnxruntime's k_quant reshapes its
    packed zero points per row, which needs an even block count (SmolLM2's 576-wide rows
    make 9 blocks of 64)."""
    heads, head_size = int(config.get("num_attention_heads") or 0), config.get("head_dim")
    widths = [config.get("hidden_size"), config.get("intermediate_size"),
              heads * int(head_size) if head_size and heads else None]
    return next((int(width) for width in widths
                 if width and -(-int(width) // block_size) % 2), None)


def auto_recipes(config: dict[str, Any], least_sensitive: Sequence[int] = ()
                 ) -> dict[str, LlmRecipe]:
    """The recipes auto tries (docs/llm.md): int8 at block 32 and 64; int8 at block 64 with
    the first MIXED_COUNTS layers of `least_sensitive` (llm_sensitivity's ranking) in int4;
    int4 at block 64 and 128, RTN and k-quant (when the model's rows split into an even
    number of blocks), with an int8 lm_head (and embedding, when tied); int4 with an fp32
    head; and the builder's direct `-p int4` shape, everything int4. int4 block 32 is left
    out of every other candidate: the builtin model's weights went through 32-weight Q4_1
    blocks once. HQQ is left out too (still a fixed-mode algorithm): on SmolLM2-135M it
    took 240 s to build and decoded at 0.23x fp32, because its MatMulNBits carry float zero
    points and no accuracy_level, so it never wins on speed and costs more than every other
    candidate together."""
    tied = bool(config.get("tie_word_embeddings", False))
    head8: dict[str, Any] = {"lm_head": "int8", "embeddings": "int8" if tied else "fp32"}
    recipes = {
        "int8": LlmRecipe(weights="int8", **head8),
        "int8-b64": LlmRecipe(weights="int8", block_size=64, **head8),
        **_mixed_recipes(least_sensitive, head8),
        "int4-rtn-b64-head-int8": LlmRecipe(weights="int4", block_size=64, **head8),
        "int4-rtn-b128-head-int8": LlmRecipe(weights="int4", block_size=128, **head8),
        "int4-kquant-b64-head-int8": LlmRecipe(weights="int4", algorithm="k_quant",
                                               block_size=64, **head8),
        "int4-rtn-b64-head-fp32": LlmRecipe(weights="int4", block_size=64),
        "int4-rtn-b32-all-int4": LlmRecipe(weights="int4", block_size=32, lm_head="int4",
                                           embeddings="int4" if tied else "fp32"),
    }
    return {name: recipe for name, recipe in recipes.items()
            if recipe.algorithm != "k_quant" or _odd_block_rows(config, recipe.block_size) is None}


def _mixed_recipes(least_sensitive: Sequence[int], head8: dict[str, Any]
                   ) -> dict[str, LlmRecipe]:
    """int8 block MIXED_BLOCK with the k least sensitive layers in int4, for each k of
    MIXED_COUNTS (capped at all layers but one, so the body stays mixed)."""
    counts = sorted({min(count, len(least_sensitive) - 1) for count in MIXED_COUNTS})
    recipes = {}
    for count in (count for count in counts if count > 0):
        layers = list(least_sensitive[:count])
        name = f"int8-b{MIXED_BLOCK}-int4-layers-{'-'.join(map(str, layers))}"
        recipes[name] = LlmRecipe(weights="int8", block_size=MIXED_BLOCK,
                                  layer_overrides=[LayerOverride(layers=layers, weights="int4")],
                                  **head8)
    return recipes


# ----------------------------------------------------------------------------- quantize


@dataclass(frozen=True)
class LlmBar:
    """What auto keeps within: 1 - top-1 agreement and the relative perplexity increase."""

    max_accuracy_drop: float
    max_perplexity_increase: float


def quantize_llm(original: Path, options: QuantizeStep, probe: LatencyProbe, datasets: Path,
                 model_out: Path) -> QuantizeRecord:
    """Build the genai folder of the step's recipe (auto: of the winning candidate) into
    `model_out`."""
    with timed() as clock:
        texts = read_texts(datasets)
        hf = original / HF_FOLDER
        target = model_out / GENAI
        candidates: list[Candidate] = []
        if options.mode == "auto":
            assert options.max_accuracy_drop is not None and \
                options.max_perplexity_increase is not None, "the pipeline builder sets both"
            bar = LlmBar(options.max_accuracy_drop, options.max_perplexity_increase)
            candidates, summary = auto_quantize(original, texts, bar, probe.threads, target)
        else:
            recipe = recipe_of(options)
            build_genai_folder(hf, recipe, target, texts.calibration or None)
            summary = describe(recipe)
        write_manifest(model_out, _genai_manifest(original))
        written = model_bytes(target)
    return clock.stamp(QuantizeRecord(mode=options.mode, size_bytes=written,
                                      candidates=candidates,
                                      message=f"{summary}: {written:,} bytes"))


def _genai_manifest(original: Path) -> Manifest:
    manifest = read_manifest(original)
    return replace(manifest.with_format("genai"), architecture=None)


def describe(recipe: LlmRecipe) -> str:
    if recipe.weights in ("fp32", "fp16"):
        return f"{recipe.weights} (not quantized)"
    return (f"{recipe.weights} {recipe.algorithm} block {recipe.block_size}"
            f"{'' if recipe.symmetric else ' asymmetric'}, embeddings {recipe.embeddings}, "
            f"lm_head {recipe.lm_head}")


@dataclass(frozen=True)
class LlmMeasured:
    """One auto candidate: its figures on the calibration text, or why it failed."""

    name: str
    folder: Path | None
    accuracy_drop: float | None = None
    perplexity_increase: float | None = None
    tokens_per_second: float | None = None
    size_bytes: int | None = None
    error: str | None = None

    def candidate(self, chosen: bool, reason: str) -> Candidate:
        return Candidate(name=self.name, accuracy_drop=_rounded(self.accuracy_drop),
                         perplexity_increase=_rounded(self.perplexity_increase),
                         tokens_per_second=_rounded(self.tokens_per_second),
                         size_bytes=self.size_bytes, chosen=chosen, reason=reason)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def auto_quantize(original: Path, texts: LlmTexts, bar: LlmBar, threads: int,
                  target: Path) -> tuple[list[Candidate], str]:
    """Build every recipe of `auto_recipes`, measure each against the fp32 baseline on the
    calibration text, copy the fastest within `bar` (fp32 when none is) to `target`."""
    import json

    if not texts.calibration:
        raise InvalidInput("spec.data.calibration", "text-generation auto measures candidates "
                                                    "on calibration text, never on data.eval")
    baseline = original / BASELINE_GENAI
    scratch = target.parent / "candidates"
    config = json.loads((original / HF_FOLDER / "config.json").read_text(encoding="utf-8"))
    ranking, ranked = _ranking(original / HF_FOLDER, texts.calibration, threads)
    recipes = auto_recipes(config, [entry.layer for entry in ranking])
    built, failed = _build_all(original / HF_FOLDER, recipes, texts, scratch)
    measured = _measure_all(baseline, built, texts.calibration, threads) + [
        LlmMeasured(name=name, folder=None, error=error) for name, error in failed.items()]
    winner, judged = choose(measured, bar)
    shutil.copytree(winner.folder if winner and winner.folder else baseline, target)
    shutil.rmtree(scratch, ignore_errors=True)
    summary = (f"auto chose {winner.name} ({winner.tokens_per_second:.1f} tokens/s, drop "
               f"{winner.accuracy_drop:.4f}, perplexity {winner.perplexity_increase:+.2%})"
               if winner else "no recipe kept within the bar; the model stays fp32")
    return judged, f"{ranked}; {summary}"


def _ranking(hf: Path, calibration: Sequence[str], threads: int
             ) -> tuple[list[LayerSensitivity], str]:
    """llm_sensitivity's ranking and the line the quantize message names it with; an
    architecture without a findable list of decoder layers gets no mixed candidates."""
    try:
        ranking = rank_layers(hf, calibration, MIXED_BLOCK, threads)
    except ValueError as error:
        return [], f"no per-layer int4 ranking ({error})"
    shown = ", ".join(f"{entry.layer} (KL {entry.kl:.4f})" for entry in ranking[:max(MIXED_COUNTS)])
    return ranking, (f"layers least sensitive to int4 block {MIXED_BLOCK} on calibration "
                     f"text: {shown}")


def _build_all(hf: Path, recipes: dict[str, LlmRecipe], texts: LlmTexts,
               scratch: Path) -> tuple[dict[str, Path], dict[str, str]]:
    built: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for name, recipe in recipes.items():
        try:
            built[name] = build_genai_folder(hf, recipe, scratch / name, texts.calibration)
        except Exception as error:  # a recipe this model or builder cannot take is a result
            failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return built, failed


def _measure_all(baseline: Path, built: dict[str, Path], calibration: Sequence[str],
                 threads: int) -> list[LlmMeasured]:
    """Agreement and perplexity against the baseline on the calibration windows; decode
    tokens/s of every candidate and the baseline, interleaved."""
    probe = AUTO_PROBE.model_copy(update={"threads": threads})
    windows = token_windows(baseline, calibration, probe.window_tokens)[:_AUTO_WINDOWS]
    if not windows:
        raise InvalidInput("spec.data.calibration", "the calibration text has fewer than 2 "
                                                    "tokens")
    reference = teacher_forced(baseline, windows, threads)
    folders = {FP32: baseline, **built}
    speed = decode_tokens_per_second(folders, speed_prompt(windows, probe.decode_prompt_tokens),
                                     probe.decode_new_tokens, threads, probe.rounds,
                                     probe.warmup)
    measured = []
    for name, folder in folders.items():
        ours = reference if folder == baseline else teacher_forced(folder, windows, threads)
        agreement = float((ours.top1 == reference.top1).mean())
        measured.append(LlmMeasured(
            name=name, folder=folder, accuracy_drop=1.0 - agreement,
            perplexity_increase=ours.perplexity / reference.perplexity - 1.0,
            tokens_per_second=speed[name], size_bytes=model_bytes(folder)))
    return measured


def choose(candidates: list[LlmMeasured], bar: LlmBar
           ) -> tuple[LlmMeasured | None, list[Candidate]]:
    """The fastest candidate (decode tokens/s) within both bars, near-ties to the smaller;
    None when nothing qualifies. Every candidate comes back with why it won or lost."""
    qualified = [c for c in candidates if c.error is None
                 and (c.accuracy_drop or 0.0) <= bar.max_accuracy_drop
                 and (c.perplexity_increase or 0.0) <= bar.max_perplexity_increase]
    winner = None
    if qualified:
        fastest = max(c.tokens_per_second or 0.0 for c in qualified)
        near = [c for c in qualified if (c.tokens_per_second or 0.0) >= fastest * (1 - NEAR_TIE)]
        winner = min(near, key=lambda c: c.size_bytes or 0)
    return winner, [c.candidate(c is winner, _reason(c, winner, bar, c in qualified))
                    for c in candidates]


def _reason(candidate: LlmMeasured, winner: LlmMeasured | None, bar: LlmBar,
            qualified: bool) -> str:
    if candidate.error is not None:
        return f"failed: {candidate.error}"
    if (candidate.accuracy_drop or 0.0) > bar.max_accuracy_drop:
        return (f"accuracy drop {candidate.accuracy_drop:.4f} (1 - top-1 agreement) exceeds "
                f"{bar.max_accuracy_drop}")
    if not qualified:
        return (f"perplexity increase {candidate.perplexity_increase:.4f} exceeds "
                f"{bar.max_perplexity_increase}")
    assert winner is not None
    if candidate is winner:
        return (f"fastest within the bar (drop <= {bar.max_accuracy_drop}, perplexity "
                f"increase <= {bar.max_perplexity_increase})")
    return (f"slower: {candidate.tokens_per_second:.1f} tokens/s vs "
            f"{winner.tokens_per_second:.1f}" if (candidate.tokens_per_second or 0.0)
            < (winner.tokens_per_second or 0.0) * (1 - NEAR_TIE) else
            f"as fast but larger: {candidate.size_bytes:,} bytes vs {winner.size_bytes:,}")


# ----------------------------------------------------------------------------- validate


QUALITY_PROBE = LlmProbe()


def validate_llm(original: Path, model_in: Path, datasets: Path, model_out: Path
                 ) -> ValidateRecord:
    """Perplexity, top-1 agreement and greedy generations of both genai folders on the
    held-out eval text and prompts; the working model passes on to `model_out`."""
    with timed() as clock:
        texts = read_texts(datasets)
        shutil.copytree(model_in, model_out, dirs_exist_ok=True)
        baseline, compressed = original / BASELINE_GENAI, genai_folder(model_out)
        quality = eval_quality(baseline, compressed, texts)
        parameters = hf_parameters(original / HF_FOLDER)
        record = ValidateRecord(
            metric_name=AGREEMENT,
            baseline=_side(baseline, parameters, 1.0, quality.baseline_perplexity),
            compressed=_side(compressed, parameters, quality.top1_agreement,
                             quality.compressed_perplexity),
            text_generation=_figures(quality, compressed),
            message=f"top-1 agreement {quality.top1_agreement:.4f}, perplexity "
                    f"{quality.baseline_perplexity:.3f} -> {quality.compressed_perplexity:.3f} "
                    f"on {quality.scored_tokens} tokens")
    return clock.stamp(record)


def eval_quality(baseline: Path, compressed: Path, texts: LlmTexts) -> LlmQuality:
    """The reported quality: QUALITY_PROBE's windows of the eval text, and the prompts."""
    windows = token_windows(baseline, texts.eval, QUALITY_PROBE.window_tokens)
    windows = windows[:QUALITY_PROBE.max_windows]
    if not windows:
        raise InvalidInput("spec.data.eval", "the evaluation text has fewer than 2 tokens")
    return measure_quality(baseline, compressed, windows, texts.prompts, QUALITY_PROBE)


def _side(folder: Path, parameters: int, agreement: float, perplexity: float) -> MeasuredModel:
    return MeasuredModel(size_bytes=model_bytes(folder), parameters=parameters,
                         nonzero_parameters=parameters,
                         metrics={AGREEMENT: agreement, PERPLEXITY: perplexity})


def _figures(quality: LlmQuality, folder: Path) -> TextGenerationFigures:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))  # read once, not per token

    def pieces(tokens: list[int]) -> list[str]:
        return [tokenizer.decode([token], skip_special_tokens=False) for token in tokens]

    return TextGenerationFigures(
        baseline_perplexity=quality.baseline_perplexity,
        compressed_perplexity=quality.compressed_perplexity,
        top1_agreement=quality.top1_agreement, scored_tokens=quality.scored_tokens,
        generations=[Generation(prompt=generation.prompt,
                                baseline_tokens=pieces(generation.baseline_tokens),
                                compressed_tokens=pieces(generation.compressed_tokens),
                                first_divergence=generation.first_divergence)
                     for generation in quality.generations])


def hf_parameters(folder: Path) -> int:
    """The model's weight count, from its safetensors headers (tied weights stored once)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="np") as weights:
            for name in weights.keys():  # noqa: SIM118  (safe_open is not a mapping)
                total += _count(weights.get_slice(name).get_shape())
    return total


def _count(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= int(size)
    return count


# ----------------------------------------------------------------------------- benchmark


def benchmark_probe(pool: Pool, settings: Benchmark) -> LlmProbe:
    """The reported benchmark's probe: the pool's threads, at most MAX_BENCHMARK_ROUNDS
    rounds (benchmark.iterations), one warm-up round unless benchmark.warmup is 0."""
    return LlmProbe(threads=pool.threads, rounds=min(settings.iterations, MAX_BENCHMARK_ROUNDS),
                    warmup=min(settings.warmup, 1))


def benchmark_llm(original: Path, compressed: Path, datasets: Path, pool: Pool,
                  settings: Benchmark) -> BenchmarkRecord:
    """Prefill latency, decode tokens/s and peak memory of both genai folders on `pool`."""
    with timed() as clock:
        texts = read_texts(datasets)
        baseline = original / BASELINE_GENAI
        probe = benchmark_probe(pool, settings)
        windows = token_windows(baseline, texts.eval, probe.window_tokens)[:probe.max_windows]
        speed = measure_speed(baseline, genai_folder(compressed), windows, pool, probe)
        report = pool_benchmark(speed)
    figures = report.text_generation
    message = report.reason or (f"decode {figures.decode_tokens_per_second['compressed']:.1f} "
                                f"vs {figures.decode_tokens_per_second['baseline']:.1f} tokens/s "
                                f"({figures.decode_speedup:.2f}x)" if figures else "")
    return clock.stamp(BenchmarkRecord(benchmark=report, message=message))


def pool_benchmark(speed: LlmSpeed) -> PoolBenchmark:
    """llm_metrics' speed figures as the pool's benchmark record."""
    if not speed.available or speed.baseline is None or speed.compressed is None:
        return PoolBenchmark(pool=speed.pool, device=speed.device, available=False,
                             reason=speed.reason)
    sides = {"baseline": speed.baseline, "compressed": speed.compressed}
    lengths = list(speed.baseline.prefill_ms)
    figures = LlmPoolFigures(
        prefill_ms={length: {role: side.prefill_ms[length] for role, side in sides.items()}
                    for length in lengths},
        decode_tokens_per_second={role: side.decode_tokens_per_second
                                  for role, side in sides.items()},
        peak_rss_bytes={role: side.memory.peak_rss_bytes for role, side in sides.items()},
        decode_speedup=speed.decode_speedup or 0.0, prefill_speedup=speed.prefill_speedup,
        rounds=speed.rounds or 0)
    provider = "CUDAExecutionProvider" if speed.device == "cuda" else "CPUExecutionProvider"
    return PoolBenchmark(pool=speed.pool, device=speed.device, available=True,
                         threads=speed.threads, provider=f"onnxruntime-genai {provider}",
                         text_generation=figures)
