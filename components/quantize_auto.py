"""Quantization judged against a bar: build every recipe that fits (auto) or the step's own
(dynamic / static with `maxAccuracyDrop`), measure each against the original model on the
decision data, keep the most harmful nodes in fp32 when no build meets the bar, and keep
the fastest candidate within it; every candidate and why it won or lost is recorded.

The bar is the whole job's budget against the original (docs/quantization.md):
- the unquantized input is a candidate too (auto): on small convolutional models int8
  kernels can be slower than fp32 ("compressed but not faster"), and then auto says so;
- mixed precision: when no quantized build is within the bar, the most accurate int8
  recipe is ranked node by node (components.sensitivity) and rebuilt with its first 1, 2,
  4, … ranked nodes in fp32 (at most half of them) until one build meets the bar; the
  smallest count that does is then found by bisection;
- when the input itself already misses the bar (an earlier step spent the budget), nothing
  can meet it: the bar becomes the input's own drop, so the fastest candidate that is not
  worse than the input is kept (never a silent fall-back to a worse, larger model), and the
  summary says the budget was spent before quantization; the job's gates then fail.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from modelpress.api import Candidate, QuantizeStep, SensitivityEntry
from modelpress.components.benchmark import p50_latencies
from modelpress.components.data import Arrays
from modelpress.components.onnxfiles import size_bytes
from modelpress.components.quantize import (
    AutoTarget,
    Outcome,
    Recipe,
    convert_fp16,
    quantize_dynamic_int8,
    quantize_dynamic_smoothed,
    quantize_static_qdq,
)
from modelpress.components.selection import Measured, choose
from modelpress.components.sensitivity import SENSITIVITY_ROWS, Judge, nodes_of, rank

FP32 = "fp32 (not quantized)"


def recipes(calibration: Arrays | None, rows: Arrays, cuda: bool) -> dict[str, Recipe]:
    """Every recipe this model and machine can use, by name; `rows`: what the ones that
    need no calibration are handed."""
    data = calibration if calibration is not None else rows
    built = [Recipe("dynamic-int8-per-channel", quantize_dynamic_int8,
                    QuantizeStep(per_channel=True), data),
             Recipe("dynamic-int8-per-tensor", quantize_dynamic_int8,
                    QuantizeStep(per_channel=False), data),
             Recipe("dynamic-int8-smoothed-per-channel", quantize_dynamic_smoothed,
                    QuantizeStep(per_channel=True), data),
             Recipe("dynamic-uint8-smoothed-per-channel", quantize_dynamic_smoothed,
                    QuantizeStep(per_channel=True, weight_type="uint8"), data)]
    if calibration is not None:
        built += [Recipe("static-qdq-int8-per-channel", quantize_static_qdq,
                         QuantizeStep(mode="static", per_channel=True), calibration),
                  Recipe("static-qdq-int8-per-tensor", quantize_static_qdq,
                         QuantizeStep(mode="static", per_channel=False), calibration)]
    if cuda:  # fp16 has no fast CPU kernels; it is a GPU recipe
        built.append(Recipe("fp16", convert_fp16, QuantizeStep(mode="fp16"), data))
    return {recipe.name: recipe for recipe in built}


@dataclass(frozen=True)
class Bar:
    """What a candidate must keep within: the job's budget against the original, unless
    the input has already spent it; then the input's own drop (not worse than the input)."""

    budget: float
    input_drop: float

    @property
    def spent(self) -> bool:
        return self.input_drop > self.budget

    @property
    def limit(self) -> float:
        return max(self.budget, self.input_drop)


@dataclass(frozen=True)
class Tried:
    """A built file and its accuracy drop on the decision data; `recipe`: None for fp32."""

    name: str
    path: Path
    accuracy_drop: float
    recipe: Recipe | None = None
    fp32_nodes: tuple[str, ...] = ()


def build_candidates(fp32: Path, scratch: Path, recipes_by_name: dict[str, Recipe]
                     ) -> tuple[dict[str, Path], dict[str, str]]:
    """Quantized files by name, and the recipes that failed to build, with their error."""
    built, failed = {}, {}
    for name, recipe in recipes_by_name.items():
        path = scratch / f"{name}.onnx"
        try:
            recipe.build(fp32, path)
            built[name] = path
        except Exception as error:  # a recipe that does not fit this graph is a result
            failed[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return built, failed


def keep_in_fp32(recipe: Recipe, fp32: Path, ranking: list[SensitivityEntry], judge: Judge,
                 limit: float, scratch: Path) -> list[Tried]:
    """`recipe` rebuilt with its first 1, 2, 4, … ranked entries in fp32 (at most half of
    them) until a build meets `limit`, then bisected down to the fewest that do; every
    build tried, in the order tried."""
    cap = max(1, len(ranking) // 2)
    tried: dict[int, Tried] = {}

    def met(count: int) -> bool:
        if count not in tried:
            nodes = nodes_of(ranking, count)
            path = scratch / f"{recipe.name}-fp32-{count}.onnx"
            recipe.build(fp32, path, nodes)
            tried[count] = Tried(f"{recipe.name} ({count} in fp32)", path, judge.drop(path),
                                 recipe, tuple(nodes))
        return tried[count].accuracy_drop <= limit

    missed, count = 0, 1
    while not met(count):
        if count >= cap:
            return list(tried.values())
        missed, count = count, min(count * 2, cap)
    while count - missed > 1:
        middle = (missed + count) // 2
        missed, count = (missed, middle) if met(middle) else (middle, count)
    return list(tried.values())


@dataclass(frozen=True)
class Mixed:
    """What the mixed-precision search built, and the ranking it followed."""

    tried: list[Tried]
    ranking: list[SensitivityEntry]
    seconds: float


def mixed_precision(fp32: Path, scratch: Path, tried: list[Tried], judge: Judge,
                    bar: Bar) -> Mixed:
    """Nothing when a quantized build already meets the bar or no int8 recipe built; else
    the most accurate int8 recipe ranked by sensitivity and searched for the bar."""
    quantized = [t for t in tried if t.recipe is not None]
    integer = [t for t in quantized if t.recipe is not None and t.recipe.integer]
    if not integer or any(t.accuracy_drop <= bar.limit for t in quantized):
        return Mixed([], [], 0.0)
    began = time.perf_counter()
    base = min(integer, key=lambda t: t.accuracy_drop)
    assert base.recipe is not None
    ranking = rank(base.recipe, fp32, base.path, judge.sampled(SENSITIVITY_ROWS), scratch)
    ranked_seconds = time.perf_counter() - began
    return Mixed(keep_in_fp32(base.recipe, fp32, ranking, judge, bar.limit, scratch), ranking,
                 ranked_seconds)


def measure(tried: list[Tried], failed: dict[str, str], decision: Arrays, bar: Bar,
            target: AutoTarget, timed_names: set[str]) -> list[Measured]:
    """Every candidate's figures; latency (interleaved) for those in `timed_names` and for
    the mixed builds within the bar (those that miss it cannot win)."""
    timed = {t.name: t.path for t in tried
             if t.name in timed_names or t.accuracy_drop <= bar.limit}
    latencies = p50_latencies(timed, decision, target.probe) if timed else {}
    measured = [Measured(name=t.name, accuracy_drop=t.accuracy_drop,
                         size_bytes=size_bytes(t.path), latency_ms=latencies.get(t.name))
                for t in tried]
    return measured + [Measured(name=name, accuracy_drop=None, error=error)
                       for name, error in failed.items()]


def superseded(mixed: list[Tried], limit: float) -> tuple[list[Tried], list[Candidate]]:
    """The mixed builds worth timing (all but those within the bar that keep more nodes in
    fp32 than the fewest that meet it), and the others as candidates that say why not."""
    within = sorted((t for t in mixed if t.accuracy_drop <= limit),
                    key=lambda t: len(t.fp32_nodes))
    if len(within) < 2:
        return mixed, []
    fewest, extra = within[0], within[1:]
    return [t for t in mixed if t not in extra], [Candidate(
        name=t.name, accuracy_drop=t.accuracy_drop, size_bytes=size_bytes(t.path),
        fp32_nodes=list(t.fp32_nodes),
        reason=f"within the bar, but keeps {len(t.fp32_nodes)} nodes in fp32 where "
               f"{fewest.name} needs {len(fewest.fp32_nodes)} (not timed)") for t in extra]


def _judged(fp32: Path, scratch: Path, tried: list[Tried], failed: dict[str, str],
            judge: Judge, bar: Bar, target: AutoTarget
            ) -> tuple[Tried | None, list[Candidate], Mixed]:
    """Search mixed precision if needed, time, choose: (winner, every candidate, search)."""
    mixed = mixed_precision(fp32, scratch, tried, judge, bar)
    contenders, dropped = superseded(mixed.tried, bar.limit)
    everything = tried + contenders
    measured = measure(everything, failed, judge.decision, bar, target, {t.name for t in tried})
    winner, judged = choose(measured, bar.limit, objective="latency")
    by_name = {t.name: t for t in everything}
    candidates = [c.as_candidate().model_copy(update={
        "fp32_nodes": list(by_name[c.name].fp32_nodes) if c.name in by_name else []})
        for c in judged]
    return (by_name[winner.name] if winner else None), candidates + dropped, mixed


def auto_quantize(fp32: Path, scratch: Path, task: str, decision: Arrays,
                  calibration: Arrays | None, target: AutoTarget, out: Path) -> Outcome:
    """Mode auto: every recipe, the input itself and (if needed) mixed-precision builds;
    the fastest within the bar is written to `out`."""
    import onnxruntime as ort

    judge = Judge.against(task, decision, target.baseline_onnx)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    by_name = recipes(calibration, decision, cuda)
    built, failed = build_candidates(fp32, scratch, by_name)
    tried = [Tried(FP32, fp32, judge.drop(fp32))] + [
        Tried(name, path, judge.drop(path), by_name[name]) for name, path in built.items()]
    bar = Bar(target.max_accuracy_drop, tried[0].accuracy_drop)
    winner, candidates, mixed = _judged(fp32, scratch, tried, failed, judge, bar, target)
    assert winner is not None, "the input is always within the bar (its own drop at worst)"
    shutil.copyfile(winner.path, out)
    return Outcome(candidates, mixed.ranking, summary(winner, bar, candidates, mixed, target))


def quantize_within_bar(fp32: Path, scratch: Path, task: str, decision: Arrays,
                        recipe: Recipe, target: AutoTarget, out: Path) -> Outcome:
    """A dynamic or static step given `maxAccuracyDrop`: its recipe, with the most harmful
    nodes in fp32 if it misses the bar; when no build meets it, the most accurate one."""
    judge = Judge.against(task, decision, target.baseline_onnx)
    full = scratch / f"{recipe.name}.onnx"
    recipe.build(fp32, full)
    tried = [Tried(recipe.name, full, judge.drop(full), recipe)]
    bar = Bar(target.max_accuracy_drop, judge.drop(fp32))
    winner, candidates, mixed = _judged(fp32, scratch, tried, {}, judge, bar, target)
    kept = winner or min(tried + mixed.tried, key=lambda t: t.accuracy_drop)
    shutil.copyfile(kept.path, out)
    return Outcome(candidates, mixed.ranking, summary(winner, bar, candidates, mixed, target,
                                                      fallback=kept))


def summary(winner: Tried | None, bar: Bar, candidates: list[Candidate], mixed: Mixed,
            target: AutoTarget, fallback: Tried | None = None) -> str:
    """The step's one line: what was kept and why, what the search ranked, and whether the
    budget was already spent before quantization."""
    parts = []
    if bar.spent:
        parts.append(f"the accuracy budget was already spent before quantization (input drop "
                     f"{bar.input_drop:.4f} > bar {bar.budget:g}), so no candidate may be "
                     f"worse than the input")
    if winner is None:
        assert fallback is not None
        parts.append(f"no build met the bar {bar.limit:g}; kept the most accurate, "
                     f"{fallback.name} (drop {fallback.accuracy_drop:.4f})")
    else:
        latency = next(c.latency_ms for c in candidates if c.name == winner.name)
        parts.append(f"chose {winner.name} ({latency or 0.0:.3f} ms at batch "
                     f"{target.probe.batch_size}, drop {winner.accuracy_drop:.4f})")
    if mixed.ranking:
        parts.append(f"{len(mixed.ranking)} nodes of {mixed.ranking[0].recipe} ranked by "
                     f"sensitivity in {mixed.seconds:.0f} s, {len(mixed.tried)} mixed-precision "
                     f"build(s) tried")
    kept = winner or fallback
    if kept is not None and kept.fp32_nodes:
        parts.append(f"kept in fp32: {', '.join(kept.fp32_nodes)}")
    return "; ".join(parts)
