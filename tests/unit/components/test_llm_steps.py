"""text-generation wiring: the spec's task/step rules, recipes from quantize steps, auto's
choice, the perplexity gate, results built from an LLM ledger, the report's marked tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from modelpress.api import (
    Benchmark,
    CompressionSpec,
    Generation,
    LlmPoolFigures,
    Pool,
    PoolBenchmark,
    Promotion,
    QuantizeStep,
    TextGenerationFigures,
)
from modelpress.components.llm_report import marked
from modelpress.components.llm_steps import (
    AUTO_PROBE,
    LlmBar,
    LlmMeasured,
    auto_recipes,
    benchmark_probe,
    check_recipe,
    choose,
    recipe_of,
)
from modelpress.components.report import build_results
from modelpress.errors import InvalidInput
from modelpress.gates import judge
from modelpress.pipelines.build import resolved_options
from modelpress.records import BenchmarkRecord, MeasuredModel, ValidateRecord

EVAL = "builtin://english-text"
TRAIN = "builtin://english-text?split=train"


def _spec(steps: list[dict[str, Any]], task: str = "text-generation", **extra: Any
          ) -> CompressionSpec:
    data = {"eval": EVAL, "calibration": TRAIN, **extra.pop("data", {})}
    return CompressionSpec.model_validate({"model": {"uri": "builtin://smollm2-135m",
                                                     "task": task},
                                           "data": data, "steps": steps, **extra})


@pytest.mark.parametrize(("steps", "task", "named"), [
    ([{"prune": {"sparsity": 0.5}}, {"quantize": {"mode": "int4"}}], "text-generation",
     "steps[0]: prune does not apply to text-generation"),
    ([{"quantize": {"mode": "dynamic"}}], "text-generation",
     "steps[0]: quantize mode dynamic does not apply to text-generation"),
    ([{"quantize": {"mode": "int4"}}], "classification",
     "steps[0]: quantize mode int4 is for text-generation models only"),
    ([{"quantize": {"mode": "dynamic", "blockSize": 64}}], "embedding",
     "steps[0]: quantize.blockSize is for text-generation models only"),
    ([{"quantize": {"mode": "auto", "lmHead": "int8"}}], "text-generation",
     "steps[0]: quantize.lmHead: mode auto takes no recipe fields"),
])
def test_steps_that_do_not_fit_the_task_are_refused(steps: list[dict[str, Any]], task: str,
                                                    named: str) -> None:
    with pytest.raises(ValidationError, match=named.replace("[", r"\[").replace("]", r"\]")):
        _spec(steps, task)


def test_perplexity_gate_and_prompts_belong_to_text_generation() -> None:
    with pytest.raises(ValidationError, match="maxPerplexityIncrease: only text-generation"):
        _spec([{"quantize": {"mode": "dynamic"}}], "embedding",
              promotion={"gates": {"maxPerplexityIncrease": 0.05}})
    with pytest.raises(ValidationError, match="data.prompts: only text-generation"):
        _spec([{"quantize": {"mode": "dynamic"}}], "embedding",
              data={"prompts": "file:///p.jsonl"})


def test_a_fixed_step_becomes_the_exporters_recipe() -> None:
    step = QuantizeStep(mode="int4", algorithm="hqq", block_size=64, symmetric=False,
                        lm_head="int8", layer_overrides=[{"layers": [0], "weights": "int8"}])
    recipe = recipe_of(step)
    assert (recipe.weights, recipe.algorithm, recipe.block_size, recipe.symmetric,
            recipe.lm_head, recipe.embeddings) == ("int4", "hqq", 64, False, "int8", "fp32")
    assert recipe.layer_overrides[0].layers == [0]
    assert recipe_of(QuantizeStep(mode="int8")).block_size == 32  # the exporter's default


def test_a_recipe_the_exporter_cannot_build_is_one_line_naming_the_step() -> None:
    with pytest.raises(InvalidInput, match=r"spec.steps\[0\].quantize: hqq is asymmetric"):
        recipe_of(QuantizeStep(mode="int4", algorithm="hqq"), "spec.steps[0].quantize")
    untied = {"num_hidden_layers": 2, "tie_word_embeddings": False}
    with pytest.raises(InvalidInput, match="layerOverrides: layer 5 does not exist"):
        check_recipe(recipe_of(QuantizeStep(mode="int4", layer_overrides=[
            {"layers": [5], "weights": "int8"}])), untied, True, "q")
    with pytest.raises(InvalidInput, match="embeddings: int8 embeddings need"):
        check_recipe(recipe_of(QuantizeStep(mode="int4", lm_head="int8", embeddings="int8")),
                     untied, True, "q")
    with pytest.raises(InvalidInput, match="spec.data.calibration: gptq needs"):
        check_recipe(recipe_of(QuantizeStep(mode="int4", algorithm="gptq")), untied, False, "q")


def test_k_quant_on_rows_of_an_odd_block_count_is_refused_up_front() -> None:
    """onnxruntime's k_quant fails on SmolLM2's 576-wide rows at block 64 (9 blocks); the
    builder's reshape error is replaced by one line, and auto does not try the recipe."""
    smollm2 = {"num_hidden_layers": 30, "tie_word_embeddings": True, "hidden_size": 576,
               "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}
    recipe = recipe_of(QuantizeStep(mode="int4", algorithm="k_quant", block_size=64))
    with pytest.raises(InvalidInput, match=r"q.blockSize: .* rows of 576 weights \(9 blocks"):
        check_recipe(recipe, smollm2, True, "q")
    check_recipe(recipe_of(QuantizeStep(mode="int4", algorithm="k_quant", block_size=16)),
                 smollm2, True, "q")  # 36 blocks: fits
    assert not any(r.algorithm == "k_quant" for r in auto_recipes(smollm2).values())
    even = {**smollm2, "hidden_size": 512, "head_dim": 64, "num_attention_heads": 8}
    assert any(r.algorithm == "k_quant" for r in auto_recipes(even).values())


def test_auto_tries_no_int8_embedding_on_an_untied_model() -> None:
    tied = auto_recipes({"tie_word_embeddings": True})
    untied = auto_recipes({"tie_word_embeddings": False})
    assert tied["int8"].embeddings == "int8"
    assert all(recipe.embeddings == "fp32" for recipe in untied.values())
    assert tied.keys() == untied.keys()
    # HQQ builds for minutes and decodes slower than fp32 on CPU: never an auto candidate.
    assert all(recipe.algorithm != "hqq" for recipe in tied.values())
    # Q4_1's 32-weight blocks are not replayed, but by the builder's own direct recipe.
    assert all(recipe.weights != "int4" or recipe.block_size != 32 or name.endswith("all-int4")
               for name, recipe in tied.items())


def _measured(name: str, drop: float, perplexity: float, speed: float,
              size: int = 100) -> LlmMeasured:
    return LlmMeasured(name=name, folder=Path(name), accuracy_drop=drop,
                       perplexity_increase=perplexity, tokens_per_second=speed, size_bytes=size)


def test_auto_keeps_the_fastest_within_both_bars() -> None:
    bar = LlmBar(max_accuracy_drop=0.1, max_perplexity_increase=0.05)
    candidates = [_measured("fp32", 0.0, 0.0, 100.0, 400),
                  _measured("all-int4", 0.3, 0.4, 400.0, 50),  # fastest, misses agreement
                  _measured("perplexity-miss", 0.05, 0.08, 350.0, 60),
                  _measured("int4", 0.05, 0.03, 300.0, 80),
                  _measured("int8", 0.01, 0.01, 200.0, 120),
                  LlmMeasured(name="broken", folder=None, error="ValueError: no")]
    winner, judged = choose(candidates, bar)
    assert winner is not None and winner.name == "int4"
    reasons = {candidate.name: candidate.reason for candidate in judged}
    assert reasons["all-int4"].startswith("accuracy drop 0.3000")
    assert reasons["perplexity-miss"].startswith("perplexity increase 0.0800 exceeds 0.05")
    assert reasons["int8"].startswith("slower: 200.0 tokens/s vs 300.0")
    assert reasons["broken"] == "failed: ValueError: no"
    assert [c.name for c in judged if c.chosen] == ["int4"]


def test_a_near_tie_in_speed_goes_to_the_smaller_and_nothing_within_means_none() -> None:
    bar = LlmBar(max_accuracy_drop=0.1, max_perplexity_increase=0.05)
    winner, _ = choose([_measured("big", 0.0, 0.0, 300.0, 200),
                        _measured("small", 0.0, 0.0, 297.0, 100)], bar)
    assert winner is not None and winner.name == "small"
    winner, judged = choose([_measured("bad", 0.5, 0.5, 300.0)], bar)
    assert winner is None and not judged[0].chosen


def test_auto_measures_decode_as_the_reported_benchmark_does() -> None:
    """One decode definition: a candidate's speedup in auto is the one reported later."""
    reported = benchmark_probe(Pool(name="cpu", device="cpu", threads=1),
                               Benchmark(iterations=5))
    assert (AUTO_PROBE.decode_prompt_tokens, AUTO_PROBE.decode_new_tokens) == \
        (reported.decode_prompt_tokens, reported.decode_new_tokens)
    assert AUTO_PROBE.window_tokens == reported.window_tokens


def test_the_auto_bars_default_to_the_gates_then_to_the_llm_defaults() -> None:
    spec = _spec([{"quantize": {"mode": "auto"}}],
                 promotion={"gates": {"maxPerplexityIncrease": 0.02}})
    options = resolved_options(spec, spec.steps[0].options)
    assert isinstance(options, QuantizeStep)
    assert (options.max_accuracy_drop, options.max_perplexity_increase) == (0.10, 0.02)


def _ledger(baseline_ppl: float, compressed_ppl: float, agreement: float) -> list[Any]:
    figures = TextGenerationFigures(
        baseline_perplexity=baseline_ppl, compressed_perplexity=compressed_ppl,
        top1_agreement=agreement, scored_tokens=10,
        generations=[Generation(prompt="a", baseline_tokens=["x", "y"],
                                compressed_tokens=["x", "z"], first_divergence=1)])
    side = {"size_bytes": 1000, "parameters": 10, "nonzero_parameters": 10}
    pool = PoolBenchmark(pool="cpu", device="cpu", available=True, threads=1,
                         text_generation=LlmPoolFigures(
                             prefill_ms={"64": {"baseline": 2.0, "compressed": 1.0}},
                             decode_tokens_per_second={"baseline": 100.0, "compressed": 250.0},
                             peak_rss_bytes={"baseline": 2, "compressed": 1},
                             decode_speedup=2.5, rounds=3))
    return [ValidateRecord(metric_name="top1Agreement",
                           baseline=MeasuredModel(**side, metrics={"top1Agreement": 1.0,
                                                                   "perplexity": baseline_ppl}),
                           compressed=MeasuredModel(**{**side, "size_bytes": 250}, metrics={
                               "top1Agreement": agreement, "perplexity": compressed_ppl}),
                           text_generation=figures),
            BenchmarkRecord(benchmark=pool)]


def test_results_carry_the_llm_figures_and_the_perplexity_gate_judges_them() -> None:
    results = build_results(_ledger(10.0, 11.0, 0.9))
    assert results.accuracy_drop == pytest.approx(0.1)
    assert results.perplexity_increase == pytest.approx(0.1)
    assert results.speedup == {"cpu": 2.5}
    assert results.compressed.tokens_per_second == {"cpu": 250.0}
    assert results.compression_ratio == 4.0
    rejected = judge(results, Promotion.model_validate(
        {"gates": {"maxPerplexityIncrease": 0.05}}))
    assert rejected.decision == "Rejected"
    assert rejected.reasons == ["perplexityIncrease 0.1 is above maxPerplexityIncrease 0.05"]
    assert judge(build_results(_ledger(10.0, 10.2, 0.9)), Promotion.model_validate(
        {"gates": {"maxPerplexityIncrease": 0.05}})).decision == "Promoted"


def test_the_perplexity_gate_fails_when_nothing_measured_a_perplexity() -> None:
    results = build_results(_ledger(10.0, 11.0, 0.9)).model_copy(
        update={"perplexity_increase": None})
    verdict = judge(results, Promotion.model_validate({"gates": {"maxPerplexityIncrease": 1}}))
    assert verdict.reasons == ["maxPerplexityIncrease 1: no perplexity was measured"]


def test_the_first_divergent_token_is_marked_and_escaped() -> None:
    shown = marked(["a", "<b>", "c"], 1)
    assert shown == 'a<span style="background:#fbb;font-weight:bold">&lt;b&gt;</span>c'
    assert "span" not in marked(["a", "b"], None)
