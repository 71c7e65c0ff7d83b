"""Weight-only recipes for SmolLM2-135M as onnxruntime-genai folders, measured side by side.

Builds fp32, the model builder's direct recipes (`-p int4 -e cpu` and `-p int8 -e cpu`,
defaults) and modelpress's candidate recipes from the builtin SmolLM2 folder, then measures
each in onnxruntime-genai with the same threads and texts: bytes on disk, perplexity on the
held-out English split, teacher-forced top-1 agreement with fp32, and greedy decode tokens/s
(rounds interleaved across recipes, p50). Figures are relative to the fp32 model converted
from the shipped Q4_1 GGUF. Block 32 asymmetric int4 would replay that Q4_1 grid, so no
candidate uses it; nor does k_quant, which is asymmetric and, in onnxruntime 1.32, fails
on SmolLM2's 576-wide rows at any block size that does not divide 32 (an odd block count).

    PYTHONSAFEPATH=1 python benchmarks/llm_recipes.py --out /tmp/llm-recipes [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from modelpress.api import Model
from modelpress.components.llm_export import (
    LlmRecipe,
    build_genai_folder,
    model_bytes,
    run_model_builder,
)
from modelpress.components.llm_zoo import english_text, smollm2_folder

_EIGHTHS = [0, 1, 2, 3, 26, 27, 28, 29]  # first and last eighth-ish of SmolLM2's 30 layers
CANDIDATES: dict[str, LlmRecipe] = {
    "int8-all-rtn-b32": LlmRecipe(weights="int8", embeddings="int8", lm_head="int8"),
    "int8-all-rtn-b128": LlmRecipe(weights="int8", embeddings="int8", lm_head="int8",
                                   block_size=128),
    "int4-rtn-b32-head8": LlmRecipe(weights="int4", embeddings="int8", lm_head="int8"),
    "int4-rtn-b32-head8-ends8": LlmRecipe(
        weights="int4", embeddings="int8", lm_head="int8",
        layer_overrides=[{"layers": _EIGHTHS, "weights": "int8"}]),
    "int4-rtn-b64-head8-ends8": LlmRecipe(
        weights="int4", block_size=64, embeddings="int8", lm_head="int8",
        layer_overrides=[{"layers": _EIGHTHS, "weights": "int8"}]),
    "int4-hqq-b64-head8": LlmRecipe(weights="int4", algorithm="hqq", symmetric=False,
                                    block_size=64, lm_head="int8"),
}
DIRECT = {"builder -p int4": "int4", "builder -p int8": "int8"}
MAX_TOKENS = 256
PROMPT_TOKENS = 32
NEW_TOKENS = 64


class RecipeFigures(Model):
    """One recipe's figures, each relative to fp32 where it says so."""

    name: str
    build_seconds: float
    bytes: int
    bytes_ratio: float
    perplexity: float
    perplexity_increase: float
    top1_agreement: float
    decode_tokens_per_second: float
    decode_speedup: float
    meets_bar: bool


def build_all(out: Path, names: list[str]) -> dict[str, tuple[Path, float]]:
    """Every folder: fp32, the direct builder recipes, the candidates."""
    hf = smollm2_folder()
    folders: dict[str, tuple[Path, float]] = {}
    recipes = {"fp32": LlmRecipe(weights="fp32"), **CANDIDATES}
    for name in ["fp32", *DIRECT, *CANDIDATES]:
        if names and name not in names and name != "fp32":
            continue
        target = out / name.replace(" ", "_")
        started = time.perf_counter()
        if name in DIRECT:
            run_model_builder(hf, target, DIRECT[name], "cpu", {})
        else:
            build_genai_folder(hf, recipes[name], target)
        folders[name] = (target, time.perf_counter() - started)
        print(f"built {name} in {folders[name][1]:.1f} s", flush=True)
    return folders


def load(folder: Path, threads: int) -> object:
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    return og.Model(config)


def teacher_forced(model: object, token_lists: list[list[int]]) -> list[np.ndarray]:
    """Per text: log-softmax over the vocabulary at every position but the last."""
    import onnxruntime_genai as og

    results = []
    for tokens in token_lists:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(tokens) + 1, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(tokens)
        logits = np.asarray(generator.get_output("logits"), dtype=np.float64)[0, :-1]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        results.append(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))
    return results


def quality(log_probs: list[np.ndarray], reference: list[np.ndarray],
            token_lists: list[list[int]]) -> tuple[float, float]:
    """(perplexity, top-1 agreement with the reference's argmax)."""
    nll, agree, count = 0.0, 0, 0
    for probs, ref, tokens in zip(log_probs, reference, token_lists, strict=True):
        targets = np.array(tokens[1:])
        nll -= float(probs[np.arange(len(targets)), targets].sum())
        agree += int((probs.argmax(-1) == ref.argmax(-1)).sum())
        count += len(targets)
    return float(np.exp(nll / count)), agree / count


def decode_rate(model: object, prompt: list[int]) -> float:
    """Greedy tokens/s after the prefill, with the KV cache."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + NEW_TOKENS, min_length=len(prompt)
                              + NEW_TOKENS, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    started = time.perf_counter()
    produced = 0
    while not generator.is_done():
        generator.generate_next_token()
        produced += 1
    return produced / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=[], help="recipe names (fp32 always)")
    args = parser.parse_args()
    import onnxruntime_genai as og

    folders = build_all(args.out, args.only)
    models = {name: load(folder, args.threads) for name, (folder, _) in folders.items()}
    tokenizer = og.Tokenizer(models["fp32"])
    token_lists = [list(tokenizer.encode(text))[:MAX_TOKENS] for text in english_text("eval")]
    reference = teacher_forced(models["fp32"], token_lists)
    scores = {"fp32": quality(reference, reference, token_lists)}
    for name, model in models.items():
        if name != "fp32":
            scores[name] = quality(teacher_forced(model, token_lists), reference, token_lists)
        print(f"quality {name}: ppl {scores[name][0]:.3f} agreement {scores[name][1]:.4f}",
              flush=True)
    prompt = token_lists[0][:PROMPT_TOKENS]
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for name, model in models.items():
            rates[name].append(decode_rate(model, prompt))
    report(folders, scores, {name: statistics.median(r[1:]) for name, r in rates.items()},
           args.out)


def report(folders: dict[str, tuple[Path, float]], scores: dict[str, tuple[float, float]],
           rates: dict[str, float], out: Path) -> None:
    base_bytes = model_bytes(folders["fp32"][0])
    base_ppl, base_rate = scores["fp32"][0], rates["fp32"]
    rows = []
    for name, (folder, seconds) in folders.items():
        size = model_bytes(folder)
        ppl, agreement = scores[name]
        row = RecipeFigures(name=name, build_seconds=round(seconds, 1), bytes=size,
                            bytes_ratio=size / base_bytes, perplexity=ppl,
                            perplexity_increase=ppl / base_ppl - 1, top1_agreement=agreement,
                            decode_tokens_per_second=rates[name],
                            decode_speedup=rates[name] / base_rate, meets_bar=False)
        row.meets_bar = (agreement >= 0.90 and row.perplexity_increase <= 0.05
                         and row.decode_speedup >= 2.5 and row.bytes_ratio <= 0.3)
        rows.append(row)
    (out / "recipes.json").write_text(json.dumps([row.to_wire() for row in rows], indent=2))
    print("| recipe | build s | bytes | vs fp32 | ppl | ppl + | top-1 | tok/s | speedup | bar |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.name} | {row.build_seconds} | {row.bytes / 1e6:.1f} MB | "
              f"{row.bytes_ratio:.3f} | {row.perplexity:.3f} | {row.perplexity_increase:+.1%} | "
              f"{row.top1_agreement:.3f} | {row.decode_tokens_per_second:.1f} | "
              f"{row.decode_speedup:.2f}x | {'yes' if row.meets_bar else 'no'} |")


if __name__ == "__main__":
    main()
