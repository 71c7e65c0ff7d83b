"""Quantization judged against a bar: build every recipe that fits (auto) or the step's own
(dynamic / static with `maxAccuracyDrop`), measure each against the original model on the
decision data, keep the most harmful nodes in fp32 when no build meets the bar, and keep
the fastest candidate within it; every candidate and why it won or lost is recorded.

The bar is the whole job's budget against the original (docs/quantization.md):
- the unquantized input is a candidate too (auto): on small convolutional models int8
  kernels can be slower than fp32 ("compressed but not faster"), and then auto says so;
- mixed precision: every whole build is timed first; the integer builds that miss the bar
  but run faster than every build within it are seeds. The most accurate seed is ranked
  node by node (components.sensitivity); when its reduce-range twin (same kernels, 7-bit
  weights) is a seed too, both are ranked and each node takes the cheaper weight range.
  The seed is rebuilt with its first 1, 2, 4, … ranked nodes in fp32 (at most half of
  them; with per-node ranges, none first) until one build meets the bar; the fewest that
  do is then found by bisection, and the builds within the bar are timed again together;
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
from modelpress.components.selection import NEAR_TIE, Measured, choose
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
             Recipe("dynamic-int8-reduced-smoothed-per-channel", quantize_dynamic_smoothed,
                    QuantizeStep(per_channel=True, reduce_range=True), data),
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
    reduced_nodes: tuple[str, ...] = ()


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
                 limit: float, scratch: Path, reduced: tuple[str, ...] = ()) -> list[Tried]:
    """`recipe` rebuilt with its first 1, 2, 4, … ranked entries in fp32 (at most half of
    them) until a build meets `limit`, then bisected down to the fewest that do; every
    build tried, in the order tried. The `reduced` nodes (not kept in fp32) take 7-bit
    weights; with any, the build with none in fp32 is tried first."""
    cap = max(1, len(ranking) // 2)
    tried: dict[int, Tried] = {}

    def met(count: int) -> bool:
        if count not in tried:
            nodes = nodes_of(ranking, count)
            short = tuple(node for node in reduced if node not in nodes)
            label = f", {len(short)} at 7 bits" if reduced else ""
            path = scratch / f"{recipe.name}-fp32-{count}.onnx"
            recipe.build(fp32, path, nodes, short)
            tried[count] = Tried(f"{recipe.name}{label} ({count} in fp32)", path,
                                 judge.drop(path), recipe, tuple(nodes), short)
        return tried[count].accuracy_drop <= limit

    start = 0 if reduced else 1
    missed, count = start - 1, start
    while not met(count):
        if count >= cap:
            return list(tried.values())
        missed, count = count, min(max(count * 2, 1), cap)
    while count - missed > 1:
        middle = (missed + count) // 2
        missed, count = (missed, middle) if met(middle) else (middle, count)
    return list(tried.values())


@dataclass(frozen=True)
class Mixed:
    """What the mixed-precision search built, the ranking it followed, and the recipe it
    rebuilt (empty when no search ran)."""

    tried: list[Tried]
    ranking: list[SensitivityEntry]
    seconds: float
    recipe: str = ""


def seeds(tried: list[Tried], latencies: dict[str, float], bar: Bar) -> list[Tried]:
    """The integer builds that miss the bar but run faster than every build within it (a
    near tie is not faster): mixed precision may bring one within the bar at a speed that
    can win. With no build within the bar, every integer build."""
    fastest = min((latencies[t.name] for t in tried if t.accuracy_drop <= bar.limit),
                  default=float("inf"))
    return [t for t in tried if t.recipe is not None and t.recipe.integer
            and t.accuracy_drop > bar.limit and latencies[t.name] < fastest * (1 - NEAR_TIE)]


def by_range(full: list[SensitivityEntry], reduced: list[SensitivityEntry]
             ) -> tuple[list[SensitivityEntry], tuple[str, ...]]:
    """One ranking from a recipe's and its reduce-range twin's: each unit at the weight
    range that costs less (7 bits only when strictly cheaper), re-ranked; and the nodes
    that take 7 bits. On AVX2 without VNNI 8-bit weights saturate where activations are
    even (MiniLM's attention keys), 7-bit weights lose precision where they are not."""
    cheaper = {tuple(entry.nodes): entry for entry in full}
    for entry in reduced:
        other = cheaper.get(tuple(entry.nodes))
        if other is None or (entry.accuracy_drop, entry.output_error) < (
                other.accuracy_drop, other.output_error):
            cheaper[tuple(entry.nodes)] = entry
    names = {entry.recipe for entry in reduced}
    ordered = sorted(cheaper.values(), key=lambda e: (-e.accuracy_drop, -e.output_error))
    short = tuple(node for entry in ordered if entry.recipe in names for node in entry.nodes)
    return [entry.model_copy(update={"rank": position})
            for position, entry in enumerate(ordered, start=1)], short


def mixed_precision(fp32: Path, scratch: Path, tried: list[Tried],
                    latencies: dict[str, float], judge: Judge, bar: Bar) -> Mixed:
    """Nothing when no integer build is a seed (components.quantize_auto.seeds); else the
    most accurate seed ranked by sensitivity (with its reduce-range twin, when that is a
    seed too, each node at its cheaper range) and searched for the bar."""
    started = seeds(tried, latencies, bar)
    if not started:
        return Mixed([], [], 0.0)
    began = time.perf_counter()
    base = min(started, key=lambda t: t.accuracy_drop)
    assert base.recipe is not None
    rows = judge.sampled(SENSITIVITY_ROWS)
    ranking, recipe = rank(base.recipe, fp32, base.path, rows, scratch), base.recipe
    reduced: tuple[str, ...] = ()
    twin_recipe = base.recipe.range_twin([t.recipe for t in started if t.recipe is not None])
    if twin_recipe is not None:
        twin = next(t for t in started if t.recipe is twin_recipe)
        other = rank(twin_recipe, fp32, twin.path, rows, scratch)
        full, short = (ranking, other) if twin_recipe.options.reduce_range else (other, ranking)
        recipe = twin_recipe if base.recipe.options.reduce_range else base.recipe
        ranking, reduced = by_range(full, short)
    ranked_seconds = time.perf_counter() - began
    return Mixed(keep_in_fp32(recipe, fp32, ranking, judge, bar.limit, scratch, reduced),
                 ranking, ranked_seconds, recipe.name)


def measure(everything: list[Tried], failed: dict[str, str], decision: Arrays, bar: Bar,
            target: AutoTarget, first: dict[str, float]) -> list[Measured]:
    """Every candidate's figures. Whole builds keep their `first` latencies unless mixed
    builds within the bar joined them; then every build within the bar is timed again,
    together (interleaved). Mixed builds that miss the bar are not timed: they cannot win."""
    fresh = [t for t in everything if t.name not in first and t.accuracy_drop <= bar.limit]
    again = {t.name: t.path for t in everything if t.accuracy_drop <= bar.limit} if fresh else {}
    latencies = {**first, **(p50_latencies(again, decision, target.probe) if again else {})}
    measured = [Measured(name=t.name, accuracy_drop=t.accuracy_drop,
                         size_bytes=size_bytes(t.path), latency_ms=latencies.get(t.name))
                for t in everything]
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
        fp32_nodes=list(t.fp32_nodes), reduced_range_nodes=list(t.reduced_nodes),
        reason=f"within the bar, but keeps {len(t.fp32_nodes)} nodes in fp32 where "
               f"{fewest.name} needs {len(fewest.fp32_nodes)} (not timed)") for t in extra]


def _judged(fp32: Path, scratch: Path, tried: list[Tried], failed: dict[str, str],
            judge: Judge, bar: Bar, target: AutoTarget
            ) -> tuple[Tried | None, list[Candidate], Mixed]:
    """Time the whole builds, search mixed precision if a faster one can be brought within
    the bar, time again, choose: (winner, every candidate, search)."""
    first = p50_latencies({t.name: t.path for t in tried}, judge.decision, target.probe)
    mixed = mixed_precision(fp32, scratch, tried, first, judge, bar)
    contenders, dropped = superseded(mixed.tried, bar.limit)
    everything = tried + contenders
    measured = measure(everything, failed, judge.decision, bar, target, first)
    winner, judged = choose(measured, bar.limit, objective="latency")
    by_name = {t.name: t for t in everything}
    candidates = [_with_nodes(c.as_candidate(), by_name.get(c.name)) for c in judged]
    return (by_name[winner.name] if winner else None), candidates + dropped, mixed


def _with_nodes(candidate: Candidate, build: Tried | None) -> Candidate:
    """The candidate with the nodes its build kept in fp32 and gave 7-bit weights."""
    if build is None:
        return candidate
    return candidate.model_copy(update={"fp32_nodes": list(build.fp32_nodes),
                                        "reduced_range_nodes": list(build.reduced_nodes)})


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
        parts.append(f"{len(mixed.ranking)} nodes of {mixed.recipe} ranked by "
                     f"sensitivity in {mixed.seconds:.0f} s, {len(mixed.tried)} mixed-precision "
                     f"build(s) tried")
    kept = winner or fallback
    if kept is not None and kept.fp32_nodes:
        parts.append(f"kept in fp32: {', '.join(kept.fp32_nodes)}")
    if kept is not None and kept.reduced_nodes:
        parts.append(f"7-bit weights: {', '.join(kept.reduced_nodes)}")
    return "; ".join(parts)
