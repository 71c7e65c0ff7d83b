"""Pure step logic on small tensors and arrays, without running a pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from modelpress.api import Candidate, DecomposeStep, Latency, PoolBenchmark
from modelpress.components.benchmark import interleaved_latency, percentiles
from modelpress.components.data import take
from modelpress.components.decompose import factorize, rank_for
from modelpress.components.prune import magnitude_masks, schedule_sparsities, step_ratios
from modelpress.components.report import build_results, step_statuses
from modelpress.components.validate import cosine_to_reference, pairwise_spearman, task_metrics
from modelpress.records import (
    BenchmarkRecord,
    FetchRecord,
    Ledger,
    MeasuredModel,
    PruneRecord,
    QuantizeRecord,
    ValidateRecord,
)

# ----------------------------------------------------------------------------- prune


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Two layers whose magnitudes differ by 10x, so global and per-layer scopes disagree."""
    generator = torch.Generator().manual_seed(seed)
    return {"small.weight": torch.randn(64, 32, generator=generator) * 0.1,
            "large.weight": torch.randn(16, 8, 3, 3, generator=generator)}


def _zeroed(masks: dict[str, torch.Tensor]) -> float:
    total = sum(mask.numel() for mask in masks.values())
    return sum(int((mask == 0).sum()) for mask in masks.values()) / total


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.99])
def test_magnitude_masks_zero_the_sparsity_fraction(scope: str, sparsity: float) -> None:
    masks = magnitude_masks(_weights(), sparsity, scope)
    assert _zeroed(masks) == pytest.approx(sparsity, abs=0.002)
    for name, weight in _weights().items():
        assert masks[name].shape == weight.shape
        assert set(masks[name].unique().tolist()) <= {0.0, 1.0}


def test_layer_scope_prunes_every_layer_alike() -> None:
    masks = magnitude_masks(_weights(), 0.5, "layer")
    for mask in masks.values():
        assert float((mask == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_global_scope_prunes_the_small_layer_first() -> None:
    masks = magnitude_masks(_weights(), 0.5, "global")
    small_zeroed = float((masks["small.weight"] == 0).float().mean())
    large_zeroed = float((masks["large.weight"] == 0).float().mean())
    assert small_zeroed > 0.6 > large_zeroed


def test_masks_keep_the_largest_weights() -> None:
    weights = _weights()
    masks = magnitude_masks(weights, 0.5, "global")
    kept = torch.cat([w.abs().flatten()[m.flatten() == 1] for w, m in
                      zip(weights.values(), masks.values(), strict=True)])
    dropped = torch.cat([w.abs().flatten()[m.flatten() == 0] for w, m in
                         zip(weights.values(), masks.values(), strict=True)])
    assert float(kept.min()) >= float(dropped.max())


def test_zero_sparsity_keeps_everything() -> None:
    masks = magnitude_masks(_weights(), 0.0, "global")
    assert all(bool((mask == 1).all()) for mask in masks.values())


@pytest.mark.parametrize(("target", "iterations"), [(0.5, 1), (0.5, 2), (0.9, 4), (0.7, 10)])
def test_schedule_ramps_up_to_the_target(target: float, iterations: int) -> None:
    sparsities = schedule_sparsities(target, iterations)
    assert len(sparsities) == iterations
    assert sparsities[-1] == pytest.approx(target)
    assert all(a < b for a, b in zip(sparsities, sparsities[1:], strict=False))
    assert all(0 < s <= target for s in sparsities)
    steps = np.diff([0.0, *sparsities])
    assert all(a >= b for a, b in zip(steps, steps[1:], strict=False)), "cubic: fast early"


@pytest.mark.parametrize("cumulative", [[0.5], [0.3, 0.6, 0.9], schedule_sparsities(0.8, 5)])
def test_step_ratios_compose_to_the_cumulative_targets(cumulative: list[float]) -> None:
    kept = 1.0
    for ratio, target in zip(step_ratios(cumulative), cumulative, strict=True):
        assert 0 <= ratio < 1
        kept *= 1 - ratio
        assert 1 - kept == pytest.approx(target)


# ----------------------------------------------------------------------------- decompose


@pytest.mark.parametrize(("singular", "options", "rank"), [
    ([3.0, 0.0, 0.0], DecomposeStep(energy=0.9), 1),
    ([1.0, 1.0, 1.0, 1.0], DecomposeStep(energy=0.5), 2),
    ([1.0, 1.0, 1.0, 1.0], DecomposeStep(energy=1.0), 4),
    ([5.0, 4.0, 3.0, 2.0], DecomposeStep(rank_ratio=0.5), 2),
    ([5.0, 4.0, 3.0, 2.0], DecomposeStep(rank_ratio=0.01), 1),
])
def test_rank_for(singular: list[float], options: DecomposeStep, rank: int) -> None:
    assert rank_for(torch.tensor(singular), options) == rank


def test_factorize_reproduces_a_low_rank_layer() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 4) @ torch.randn(4, 64))
    factors = factorize(layer, DecomposeStep(energy=0.999))
    assert factors is not None
    inputs = torch.randn(5, 64)
    assert torch.allclose(factors(inputs), layer(inputs), atol=1e-4)
    assert sum(p.numel() for p in factors.parameters()) < sum(p.numel() for p in
                                                              layer.parameters())


def test_factorize_leaves_a_layer_it_cannot_shrink() -> None:
    assert factorize(torch.nn.Linear(4, 4), DecomposeStep(energy=1.0)) is None


# ----------------------------------------------------------------------------- validate


def test_cosine_to_reference() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 4.0], [1.0, 0.0]])
    outputs = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0], [3.0, 4.0], [0.0, 0.0]])
    cosines = cosine_to_reference(outputs, reference)
    np.testing.assert_allclose(cosines, [1.0, 0.0, -1.0, 1.0, 0.0], atol=1e-9)
    assert np.isfinite(cosines).all()


def test_pairwise_spearman() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 16))
    assert pairwise_spearman(reference, reference) == pytest.approx(1.0)
    assert pairwise_spearman(reference * 3.0, reference) == pytest.approx(1.0)
    noisy = reference + rng.normal(scale=0.05, size=reference.shape)
    assert 0.9 < pairwise_spearman(noisy, reference) < 1.0
    unrelated = rng.normal(size=(40, 16))
    assert abs(pairwise_spearman(unrelated, reference)) < 0.2


def test_classification_metrics() -> None:
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    outputs = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9]])
    labels = np.array([0, 1, 0, 0])
    metrics = task_metrics("classification", outputs, reference, labels)
    assert list(metrics) == ["accuracy", "agreement"]  # the headline metric comes first
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["agreement"] == pytest.approx(0.75)
    assert task_metrics("classification", reference, reference, labels)["agreement"] == 1.0


def test_embedding_metrics() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(12, 8))
    same = task_metrics("embedding", reference, reference, None)
    assert next(iter(same)) == "cosine"
    assert same["cosine"] == pytest.approx(1.0)
    assert same["cosineMin"] == pytest.approx(1.0)
    assert same["spearman"] == pytest.approx(1.0)
    flipped = reference.copy()
    flipped[0] *= -1
    metrics = task_metrics("embedding", flipped, reference, None)
    assert metrics["cosineMin"] == pytest.approx(-1.0)
    assert metrics["cosine"] == pytest.approx((11 - 1) / 12)


# ----------------------------------------------------------------------------- benchmark


def test_percentiles() -> None:
    latency = percentiles([float(v) for v in range(1, 101)])
    assert latency == Latency(p50=50.5, p95=95.05)
    assert percentiles([2.0]) == Latency(p50=2.0, p95=2.0)
    assert percentiles([1 / 3, 1 / 3]).p50 == 0.3333  # rounded to 4 places


class _FakeSession:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def run(self, outputs: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls.append(self.name)
        return [feed["x"]]


def test_interleaved_latency_alternates_the_models() -> None:
    calls: list[str] = []
    models = {"baseline": _FakeSession("b", calls), "compressed": _FakeSession("c", calls)}
    latency = interleaved_latency(models, {"x": np.zeros(1)}, iterations=5, warmup=2)
    assert set(latency) == {"baseline", "compressed"}
    assert calls == ["b", "c"] * 7
    assert all(value.p95 >= value.p50 >= 0 for value in latency.values())


# ----------------------------------------------------------------------------- data


def test_take_first_rows() -> None:
    arrays = {"x": np.arange(10).reshape(5, 2), "y": np.arange(5)}
    taken = take(arrays, 3)
    np.testing.assert_array_equal(taken["x"], arrays["x"][:3])
    np.testing.assert_array_equal(taken["y"], [0, 1, 2])


def test_take_repeats_a_small_set() -> None:
    arrays = {"x": np.arange(6).reshape(3, 2), "y": np.array([7, 8, 9])}
    taken = take(arrays, 8)
    assert taken["x"].shape == (8, 2)
    np.testing.assert_array_equal(taken["y"], [7, 8, 9, 7, 8, 9, 7, 8])
    np.testing.assert_array_equal(taken["x"][:, 0] // 2, [0, 1, 2, 0, 1, 2, 0, 1])


# ----------------------------------------------------------------------------- report


def _pool(name: str, batches: dict[str, tuple[float, float]]) -> PoolBenchmark:
    report = PoolBenchmark(pool=name, device="cpu", available=True, threads=1,
                           provider="CPUExecutionProvider")
    for batch, (baseline, compressed) in batches.items():
        report.batches[batch] = {"baseline": Latency(p50=baseline, p95=baseline * 1.2),
                                 "compressed": Latency(p50=compressed, p95=compressed * 1.2)}
        report.speedup[batch] = round(baseline / compressed, 4)
    return report


def _ledger() -> Ledger:
    """What the steps of a prune + quantize job with two pools record."""
    return [
        FetchRecord(name="fetch", format="bundle", inputs=["x"], eval_rows=10,
                    lineage_inputs={}),
        PruneRecord(name="prune", parameters_before=1000, parameters=1000,
                    nonzero_parameters=500, parameter_reduction=0.5),
        ValidateRecord(
            name="validate", metric_name="accuracy",
            baseline=MeasuredModel(size_bytes=4000, parameters=1000, nonzero_parameters=1000,
                                   metrics={"accuracy": 0.98, "agreement": 1.0}),
            compressed=MeasuredModel(size_bytes=1000, parameters=1000, nonzero_parameters=500,
                                     metrics={"accuracy": 0.965, "agreement": 0.97})),
        # batch "8" sorts after "64" as text: the largest batch is 64
        BenchmarkRecord(name="benchmark-cpu", benchmark=_pool(
            "cpu", {"1": (1.0, 0.8), "8": (4.0, 2.0), "64": (30.0, 10.0)})),
        BenchmarkRecord(name="benchmark-gpu", benchmark=PoolBenchmark(
            pool="gpu", device="cuda", available=False, reason="no CUDA here")),
    ]


def test_build_results_figures() -> None:
    results = build_results(_ledger())
    assert results.compression_ratio == 4.0
    assert results.accuracy_drop == pytest.approx(0.015)
    assert results.baseline.metric.name == "accuracy"
    assert results.baseline.metric.value == 0.98
    assert results.compressed.metric.value == 0.965
    assert results.compressed.extra_metrics == {"agreement": 0.97}
    assert results.compressed.nonzero_parameters == 500


def test_build_results_takes_speedup_at_the_largest_batch() -> None:
    results = build_results(_ledger())
    assert results.speedup == {"cpu": 3.0}
    assert results.baseline.latency_ms["cpu"].p50 == 30.0
    assert results.compressed.latency_ms["cpu"].p50 == 10.0


def test_build_results_lists_an_unavailable_pool_without_a_speedup() -> None:
    results = build_results(_ledger())
    assert [pool.pool for pool in results.benchmarks] == ["cpu", "gpu"]
    gpu = results.benchmarks[1]
    assert not gpu.available and gpu.reason == "no CUDA here"
    assert "gpu" not in results.speedup
    assert "gpu" not in results.compressed.latency_ms
    wire = results.to_wire()
    assert wire["compressionRatio"] == 4.0 and wire["accuracyDrop"] == pytest.approx(0.015)


def test_build_results_collects_every_candidate_in_order() -> None:
    auto = [Candidate(name="fp32", accuracy_drop=0.0, chosen=False, reason="slower"),
            Candidate(name="dynamic-int8", accuracy_drop=0.001, chosen=True, reason="fastest")]
    ledger = _ledger()
    ledger.insert(2, QuantizeRecord(name="quantize", mode="auto", size_bytes=1000,
                                    candidates=auto))
    assert build_results(ledger).candidates == auto


def test_step_statuses_carry_each_records_name_and_time() -> None:
    ledger = _ledger()
    ledger[1] = ledger[1].model_copy(update={"seconds": 2.5, "message": "pruned"})
    steps = step_statuses(ledger)
    assert [step.name for step in steps] == ["fetch", "prune", "validate", "benchmark-cpu",
                                             "benchmark-gpu"]
    prune = steps[1]
    assert prune.started_at == ledger[1].started_at and prune.message == "pruned"
    assert prune.finished_at is not None and prune.started_at is not None
    assert (prune.finished_at - prune.started_at).total_seconds() == 2.5
    assert prune.duration_seconds == 2.5 and prune.phase == "Succeeded"
