"""Benchmark: latency of the original and the compressed model, side by side, per pool.

Both models run in onnxruntime with the same provider, threads and batch; runs alternate
between the two so that noise on a shared machine hits both alike. The baseline is the
original model exported to fp32 ONNX, so export alone never shows up as speedup.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.api import Benchmark, Latency, Pool, PoolBenchmark
from modelpress.components.data import Arrays, input_names, take
from modelpress.components.onnxstats import session
from modelpress.components.result import timed
from modelpress.records import BenchmarkRecord, LatencyProbe

# Candidates (auto-quantization recipes, search values) are compared with fewer iterations
# than the reported benchmark: a ranking needs less precision than a published figure.
PROBE_ITERATIONS = 20
PROBE_WARMUP = 3
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def unavailable_reason(pool: Pool) -> str | None:
    """Why this machine cannot run the pool, or None when it can."""
    import onnxruntime as ort

    provider = _PROVIDERS[pool.device]
    if provider not in ort.get_available_providers():
        return f"{provider} is not available here (onnxruntime providers: " \
               f"{', '.join(ort.get_available_providers())})"
    return None


def percentiles(samples_ms: list[float]) -> Latency:
    return Latency(p50=round(float(np.percentile(samples_ms, 50)), 4),
                   p95=round(float(np.percentile(samples_ms, 95)), 4))


def interleaved_latency(models: dict[str, Any], feed: Arrays, iterations: int,
                        warmup: int) -> dict[str, Latency]:
    """Per-model latency (ms), alternating the models every iteration."""
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(warmup):
        for model in models.values():
            model.run(None, feed)
    for _ in range(iterations):
        for name, model in models.items():
            begin = time.perf_counter()
            model.run(None, feed)
            samples[name].append((time.perf_counter() - begin) * 1000)
    return {name: percentiles(values) for name, values in samples.items()}


def p50_latencies(models: dict[str, Path], evaluation: Arrays,
                  probe: LatencyProbe) -> dict[str, float]:
    """p50 latency (ms) of each ONNX file on this machine's CPU, interleaved, at the probe's
    batch size and threads."""
    names = input_names(evaluation)
    feed = {name: array for name, array in take(evaluation, probe.batch_size).items()
            if name in names}
    sessions = {name: session(path, probe.threads) for name, path in models.items()}
    measured = interleaved_latency(sessions, feed, PROBE_ITERATIONS, PROBE_WARMUP)
    return {name: latency.p50 for name, latency in measured.items()}


def measure_pool(baseline: Path, compressed: Path, evaluation: Arrays, pool: Pool,
                 settings: Benchmark) -> PoolBenchmark:
    reason = unavailable_reason(pool)
    if reason is not None:
        return PoolBenchmark(pool=pool.name, device=pool.device, available=False, reason=reason)
    providers = [_PROVIDERS[pool.device]]
    models = {"baseline": session(baseline, pool.threads, providers),
              "compressed": session(compressed, pool.threads, providers)}
    report = PoolBenchmark(pool=pool.name, device=pool.device, available=True,
                           threads=pool.threads, provider=providers[0])
    names = input_names(evaluation)
    for batch_size in settings.batch_sizes:
        feed = {name: array for name, array in take(evaluation, batch_size).items()
                if name in names}
        latency = interleaved_latency(models, feed, settings.iterations, settings.warmup)
        report.batches[str(batch_size)] = latency
        report.speedup[str(batch_size)] = round(latency["baseline"].p50
                                                / latency["compressed"].p50, 4)
    return report


def benchmark(baseline: Path, compressed: Path, evaluation: Arrays, pool: Pool,
              settings: Benchmark) -> BenchmarkRecord:
    with timed() as clock:
        report = measure_pool(baseline, compressed, evaluation, pool, settings)
    message = report.reason or "speedup p50 " + ", ".join(
        f"batch {batch}: {value:.2f}x" for batch, value in report.speedup.items())
    return clock.stamp(BenchmarkRecord(benchmark=report, message=message))
