"""Mixed precision to meet the bar, and the budget rule (no silent fp32 fall-back), on the
tiny fragile chain of test_sensitivity and on fixed figures.

Candidates are timed by a stand-in that counts the MatMuls left in fp32 (int8 kernels are
the fast ones), near ties going to the smaller file as ever, so that which one is fastest
does not hang on this machine's load.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from modelpress.api import QuantizeStep
from modelpress.components import quantize_auto
from modelpress.components.modelio import Manifest, write_manifest
from modelpress.components.onnxstats import run_batched, session
from modelpress.components.quantize import (
    AutoTarget,
    Recipe,
    accuracy_target,
    quantize,
    quantize_dynamic_smoothed,
)
from modelpress.components.quantize_auto import (
    FP32,
    Bar,
    Tried,
    keep_in_fp32,
    summary,
    superseded,
)
from modelpress.components.selection import Measured, choose
from modelpress.components.sensitivity import Judge
from modelpress.components.smoothing import smoothed
from modelpress.records import LatencyProbe, QuantizeRecord

sys.path.insert(0, str(Path(__file__).parent))
from test_sensitivity import DYNAMIC, MAGNITUDES, fragile_chain, layer, rows  # noqa: E402

PROBE = LatencyProbe(batch_size=8, threads=1)


@pytest.fixture(autouse=True)
def timed_by_fp32_matmuls(monkeypatch: pytest.MonkeyPatch) -> None:
    def by_fp32_matmuls(models: dict[str, Path], decision: object, probe: LatencyProbe
                        ) -> dict[str, float]:
        return {name: 1.0 + sum(node.op_type == "MatMul"
                                for node in onnx.load(str(path)).graph.node)
                for name, path in models.items()}

    monkeypatch.setattr(quantize_auto, "p50_latencies", by_fp32_matmuls)


def _working_model(folder: Path, model: Path) -> Path:
    """`model` as the working model a quantize step reads (an ONNX folder)."""
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.read_bytes())
    write_manifest(folder, Manifest(format="onnx", task="embedding", inputs=["x"]))
    return folder


def _quantized(tmp_path: Path, options: QuantizeStep, bar: float,
               noise: float = 0.0) -> QuantizeRecord:
    original = fragile_chain(tmp_path / "original.onnx")
    model_in = _working_model(tmp_path / "in", fragile_chain(tmp_path / "input.onnx",
                                                             noise=noise))
    target = AutoTarget(baseline_onnx=original, max_accuracy_drop=bar, probe=PROBE)
    return quantize(model_in, options, rows(), None, tmp_path / "out", auto=target)


def _chosen(record: QuantizeRecord):
    [chosen] = [candidate for candidate in record.candidates if candidate.chosen]
    return chosen


SMOOTHED = "dynamic-int8-smoothed-per-channel"


def test_smoothing_is_exact_in_fp32_and_rescues_dynamic_int8_on_the_fragile_chain(
        tmp_path: Path) -> None:
    """Each layer's constant feature is an activation outlier on a weight row of zeros:
    smoothing divides it away, so dynamic int8's per-tensor step fits the real signal."""
    original = fragile_chain(tmp_path / "original.onnx")
    smoothed(original, rows(), tmp_path / "smoothed.onnx")
    graph = onnx.load(str(tmp_path / "smoothed.onnx")).graph
    assert sum(node.op_type == "Mul" for node in graph.node) == len(MAGNITUDES)
    np.testing.assert_allclose(run_batched(session(tmp_path / "smoothed.onnx"), rows()),
                               run_batched(session(original), rows()), rtol=1e-4, atol=1e-4)
    judge = Judge.against("embedding", rows(), original)
    plain, smooth = tmp_path / "plain.onnx", tmp_path / "smooth.onnx"
    DYNAMIC.build(original, plain)
    Recipe(SMOOTHED, quantize_dynamic_smoothed, QuantizeStep(), rows()).build(original, smooth)
    assert judge.drop(smooth) < judge.drop(plain) / 10


def test_auto_keeps_a_smoothed_recipe_that_meets_the_bar_whole(tmp_path: Path) -> None:
    record = _quantized(tmp_path, QuantizeStep(mode="auto"), bar=0.03)
    chosen = _chosen(record)
    assert chosen.name == SMOOTHED and chosen.fp32_nodes == [] and chosen.accuracy_drop <= 0.03
    figures = {c.name: c for c in record.candidates}
    assert "exceeds" in figures["dynamic-int8-per-channel"].reason
    # uint8 weights: within the bar too (tied on speed here, so the smaller file won)
    assert figures[SMOOTHED.replace("int8", "uint8")].accuracy_drop <= 0.03
    assert not record.sensitivity  # a whole recipe met the bar: no search


def test_auto_keeps_the_fewest_harmful_nodes_in_fp32_that_meet_the_bar(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model smoothing cannot help (the smoothed recipes left out): the search starts from
    the most accurate plain recipe, and the fragile first layers are kept in fp32."""
    plain = quantize_auto.recipes

    def unsmoothed(*args: object) -> dict[str, Recipe]:
        return {name: recipe for name, recipe in plain(*args).items()  # type: ignore[arg-type]
                if "smoothed" not in name}

    monkeypatch.setattr(quantize_auto, "recipes", unsmoothed)
    record = _quantized(tmp_path, QuantizeStep(mode="auto"), bar=0.03)
    assert record.sensitivity[0].nodes == [layer(0)]
    chosen = _chosen(record)
    assert chosen.fp32_nodes == [layer(0), layer(1)] and chosen.accuracy_drop <= 0.03
    mixed = [c for c in record.candidates if c.fp32_nodes]
    assert [c.fp32_nodes for c in mixed] == [[layer(0)], [layer(0), layer(1)]]
    assert mixed[0].accuracy_drop > 0.03 and "exceeds" in mixed[0].reason
    # every whole recipe and the input were candidates too, listed with no fp32 nodes
    assert {c.name for c in record.candidates if not c.fp32_nodes} == {
        FP32, "dynamic-int8-per-channel", "dynamic-int8-per-tensor"}
    assert f"kept in fp32: {layer(0)}, {layer(1)}" in record.message
    outputs = run_batched(session(tmp_path / "out" / "model.onnx"), rows())
    assert outputs.shape == (len(rows()["x"]), 16)


def test_a_dynamic_recipe_with_a_bar_keeps_nodes_in_fp32_but_never_the_whole_model(
        tmp_path: Path) -> None:
    record = _quantized(tmp_path, QuantizeStep(mode="dynamic", max_accuracy_drop=0.01), bar=0.01)
    assert FP32 not in {c.name for c in record.candidates}
    chosen = _chosen(record)
    # 1 and 2 nodes miss 0.01; 3 (the cap: half of six) meets it
    assert chosen.fp32_nodes == [layer(0), layer(1), layer(2)]
    assert [len(c.fp32_nodes) for c in record.candidates] == [0, 1, 2, 3]


def test_an_unreachable_bar_keeps_the_most_accurate_build_and_says_so(tmp_path: Path) -> None:
    record = _quantized(tmp_path, QuantizeStep(mode="dynamic", max_accuracy_drop=0.0), bar=0.0)
    assert not any(c.chosen for c in record.candidates)
    best = min(record.candidates, key=lambda c: c.accuracy_drop or 0.0)
    assert best.fp32_nodes == [layer(0), layer(1), layer(2)]
    assert f"no build met the bar 0; kept the most accurate, {best.name}" in record.message


def test_the_search_adds_nodes_in_order_doubling_then_bisecting(tmp_path: Path) -> None:
    """Fixed figures: the drop of a build with the first `count` ranked nodes in fp32."""
    from modelpress.api import SensitivityEntry

    drops = {1: 0.05, 2: 0.04, 4: 0.01, 3: 0.012, 8: 0.0}
    ranking = [SensitivityEntry(node=f"n{i}", op_type="MatMul", nodes=[f"n{i}"], recipe="r",
                                accuracy_drop=0.0, output_error=0.0, rank=i + 1)
               for i in range(16)]

    def build(fp32: Path, out: Path, options: QuantizeStep, rows: object,
              keep: list[str], reduced: list[str]) -> None:
        out.write_text(str(len(keep)))

    class FixedJudge:
        def drop(self, path: Path) -> float:
            return drops[int(path.read_text())]

    recipe = Recipe("r", build, QuantizeStep(), {})
    tried = keep_in_fp32(recipe, tmp_path, ranking, FixedJudge(), 0.011,  # type: ignore[arg-type]
                         tmp_path)
    assert [len(t.fp32_nodes) for t in tried] == [1, 2, 4, 3]
    assert tried[-1].fp32_nodes == ("n0", "n1", "n2")
    assert [t.fp32_nodes for t in tried][:2] == [("n0",), ("n0", "n1")]
    assert len(keep_in_fp32(recipe, tmp_path, ranking[:4], FixedJudge(), 0.001,  # type: ignore[arg-type]
                            tmp_path)) == 2  # the cap: half of four nodes


def test_mixed_builds_keeping_more_fp32_nodes_than_needed_are_listed_not_timed(
        tmp_path: Path) -> None:
    builds = [Tried(f"r ({count} in fp32)", fragile_chain(tmp_path / f"{count}.onnx"), drop,
                    fp32_nodes=tuple(layer(i) for i in range(count)))
              for count, drop in ((1, 0.05), (2, 0.01), (4, 0.002), (3, 0.004))]
    timed, listed = superseded(builds, 0.005)
    assert [t.name for t in timed] == ["r (1 in fp32)", "r (2 in fp32)", "r (3 in fp32)"]
    assert [c.name for c in listed] == ["r (4 in fp32)"]
    assert listed[0].fp32_nodes == [layer(i) for i in range(4)] and not listed[0].chosen
    assert "where r (3 in fp32) needs 3" in listed[0].reason
    assert superseded(builds[:2], 0.005) == (builds[:2], [])


# ---------------------------------------------------------------- the budget rule


def _measured(name: str, drop: float, latency: float) -> Measured:
    return Measured(name=name, accuracy_drop=drop, size_bytes=int(latency * 100),
                    latency_ms=latency)


AFTER_A_PRUNE = [_measured(FP32, 0.05, 3.0), _measured("int8-a", 0.04, 1.0),
                 _measured("int8-b", 0.06, 0.8)]


@pytest.mark.parametrize(("candidates", "budget", "winner", "spent"), [
    # the input spent the budget: the quantized build better than the input is kept,
    # never the worse (if faster) one, and not the fp32 input
    (AFTER_A_PRUNE, 0.01, "int8-a", True),
    # nothing quantized is as good as the input: the input is kept, not a worse model
    ([_measured(FP32, 0.05, 3.0), _measured("int8-b", 0.06, 0.8)], 0.01, FP32, True),
    # budget left: the fastest within the bar, as ever
    (AFTER_A_PRUNE, 0.07, "int8-b", False),
])
def test_when_the_budget_is_spent_nothing_worse_than_the_input_is_kept(
        candidates, budget, winner, spent) -> None:
    bar = Bar(budget, input_drop=candidates[0].accuracy_drop)
    chosen, _ = choose(candidates, bar.limit, "latency")
    assert chosen is not None and chosen.name == winner
    assert bar.spent is spent


def test_the_summary_says_the_budget_was_spent_before_quantization() -> None:
    bar = Bar(0.01, input_drop=0.05)
    _, judged = choose(AFTER_A_PRUNE, bar.limit, "latency")
    candidates = [c.as_candidate() for c in judged]
    kept = Tried("int8-a", Path("a.onnx"), 0.04)
    line = summary(kept, bar, candidates, quantize_auto.Mixed([], [], 0.0),
                   AutoTarget(Path("b.onnx"), 0.01, PROBE))
    assert line.startswith("the accuracy budget was already spent before quantization "
                           "(input drop 0.0500 > bar 0.01)")
    assert "chose int8-a (1.000 ms at batch 8, drop 0.0400)" in line


def test_auto_after_a_lossy_step_keeps_the_quantized_model_better_than_its_input(
        tmp_path: Path) -> None:
    """A real case: the input (perturbed weights, as a prune leaves them) misses the bar by
    itself; dynamic per-channel int8 of it happens to be more accurate than it is."""
    sound = (0.0,) * 4
    original = fragile_chain(tmp_path / "original.onnx", sound)
    decision = rows()
    decision["y"] = run_batched(session(original), decision).argmax(-1)
    model_in = _working_model(tmp_path / "in", fragile_chain(tmp_path / "input.onnx", sound,
                                                             noise=0.02))
    (model_in / "manifest.json").write_text((model_in / "manifest.json").read_text()
                                            .replace("embedding", "classification"))
    target = AutoTarget(baseline_onnx=original, max_accuracy_drop=0.01, probe=PROBE)
    record = quantize(model_in, QuantizeStep(mode="auto"), decision, None, tmp_path / "out",
                      auto=target)
    figures = {c.name: c for c in record.candidates}
    assert _chosen(record).name == "dynamic-int8-per-channel"
    assert figures["dynamic-int8-per-channel"].accuracy_drop < figures[FP32].accuracy_drop
    assert "exceeds" in figures["dynamic-int8-per-tensor"].reason
    assert "already spent before quantization (input drop 0.0938 > bar 0.01)" in record.message
    assert not record.sensitivity  # a quantized build met the (input's) bar: no search


def test_a_bar_applies_to_auto_and_to_recipes_that_give_one() -> None:
    baseline = Path("baseline.onnx")
    assert accuracy_target(QuantizeStep(mode="dynamic"), baseline, PROBE) is None
    assert accuracy_target(QuantizeStep(mode="fp16", max_accuracy_drop=0.01), baseline,
                           PROBE) is None
    for mode in ("auto", "dynamic", "static"):
        target = accuracy_target(QuantizeStep(mode=mode, max_accuracy_drop=0.02), baseline,
                                 PROBE)
        assert target is not None and target.max_accuracy_drop == 0.02



# ---------------------------------------------------------------- per-node weight range


def _entry(node: str, recipe: str, drop: float, error: float = 0.0):
    from modelpress.api import SensitivityEntry

    return SensitivityEntry(node=node, op_type="MatMul", nodes=[node], recipe=recipe,
                            accuracy_drop=drop, output_error=error, rank=1)


def test_each_unit_takes_its_cheaper_weight_range_and_the_ranking_follows() -> None:
    full = [_entry("ffn", "full", 0.006), _entry("key", "full", 0.005),
            _entry("tie", "full", 0.001, 0.2)]
    reduced = [_entry("key", "7bit", 0.0001), _entry("ffn", "7bit", 0.008),
               _entry("tie", "7bit", 0.001, 0.2)]
    ranking, short = quantize_auto.by_range(full, reduced)
    assert [(e.node, e.recipe, e.rank) for e in ranking] == [
        ("ffn", "full", 1), ("tie", "full", 2), ("key", "7bit", 3)]
    assert short == ("key",)  # a tie keeps 8 bits


def test_seeds_are_integer_builds_that_miss_the_bar_but_beat_every_build_within_it() -> None:
    fast, slow = (Recipe(name, lambda *_: None, QuantizeStep(), {}) for name in ("f", "s"))
    tried = [Tried(FP32, Path("fp32"), 0.0), Tried("within", Path("w"), 0.002, slow),
             Tried("fast-miss", Path("f"), 0.004, fast), Tried("near-tie", Path("n"), 0.005, fast),
             Tried("slow-miss", Path("s"), 0.003, slow)]
    latencies = {FP32: 150.0, "within": 120.0, "fast-miss": 100.0, "near-tie": 118.0,
                 "slow-miss": 130.0}
    assert [t.name for t in quantize_auto.seeds(tried, latencies, Bar(0.0025, 0.0))] == [
        "fast-miss"]
    # nothing within the bar but the input, and the input slowest: every integer build
    assert len(quantize_auto.seeds(tried, latencies, Bar(0.001, 0.0))) == 4


def test_reduced_nodes_get_7_bit_weights_and_the_rest_keep_8(tmp_path: Path) -> None:
    original = fragile_chain(tmp_path / "original.onnx")
    built = tmp_path / "mixed.onnx"
    DYNAMIC.build(original, built, [layer(5)], [layer(0), layer(1)])
    graph = onnx.load(str(built)).graph
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    widest = {node.name: int(np.abs(weights[node.input[1]].astype(np.int32)).max())
              for node in graph.node if node.op_type == "MatMulInteger"}
    by_layer = {index: next(v for name, v in widest.items() if name.startswith(layer(index)))
                for index in range(5)}
    assert by_layer[0] <= 64 and by_layer[1] <= 64
    assert min(by_layer[index] for index in (2, 3, 4)) == 127
    assert any(node.name == layer(5) and node.op_type == "MatMul" for node in graph.node)


def test_with_reduced_nodes_the_search_tries_none_in_fp32_first(tmp_path: Path) -> None:
    ranking = [_entry(f"n{i}", "r", 0.0) for i in range(8)]

    def build(fp32: Path, out: Path, options: QuantizeStep, rows: object,
              keep: list[str], reduced: list[str]) -> None:
        out.write_text(f"{len(keep)} {','.join(reduced)}")

    class FixedJudge:
        def drop(self, path: Path) -> float:
            return {0: 0.02, 1: 0.004, 2: 0.001}[int(path.read_text().split()[0])]

    tried = keep_in_fp32(Recipe("r", build, QuantizeStep(), {}), tmp_path, ranking,
                         FixedJudge(), 0.005, tmp_path, ("n0", "n5"))  # type: ignore[arg-type]
    assert [len(t.fp32_nodes) for t in tried] == [0, 1]
    assert tried[0].reduced_nodes == ("n0", "n5") and tried[1].reduced_nodes == ("n5",)
    assert tried[1].name == "r, 1 at 7 bits (1 in fp32)"
