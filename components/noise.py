"""How sure a measured accuracy drop is: a paired bootstrap over the eval rows.

Each resample draws the eval rows with replacement and takes the same rows for both
models, so the interval reflects the rows the models disagree on, not each model's own
spread. The interval at confidence c runs from the (1 - c) / 2 to the (1 + c) / 2 quantile
of the resampled drops (the percentile bootstrap); results carry one interval per level
`gates.confidence` may ask for.
"""

from __future__ import annotations

import math

import numpy as np

from modelpress.api import DropInterval

RESAMPLES = 1000
BOOTSTRAP_SEED = 0
LEVELS = (0.8, 0.9, 0.95, 0.99)
REPORTED_LEVEL = 0.95
_CHUNK_ELEMENTS = 5_000_000  # resampled rows held at once


def resampled_means(row_drops: np.ndarray, resamples: int = RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """The mean of `row_drops` over `resamples` seeded resamples of its rows."""
    rng = np.random.default_rng(seed)
    count = len(row_drops)
    per_chunk = max(1, _CHUNK_ELEMENTS // max(count, 1))
    means = []
    for start in range(0, resamples, per_chunk):
        rows = rng.integers(0, count, size=(min(per_chunk, resamples - start), count))
        means.append(row_drops[rows].mean(axis=1))
    return np.concatenate(means)


def drop_intervals(baseline_rows: np.ndarray, compressed_rows: np.ndarray,
                   levels: tuple[float, ...] = LEVELS) -> list[DropInterval]:
    """accuracyDrop's interval at each of `levels`, from each row's metric under both
    models (correct or not for accuracy, cosine to the original for embeddings)."""
    means = resampled_means(np.asarray(baseline_rows, float) - np.asarray(compressed_rows, float))
    return [DropInterval(confidence=level,
                         low=round(float(np.quantile(means, (1 - level) / 2)), 6),
                         high=round(float(np.quantile(means, (1 + level) / 2)), 6))
            for level in levels]


def interval_at(intervals: list[DropInterval], level: float) -> DropInterval | None:
    return next((interval for interval in intervals
                 if math.isclose(interval.confidence, level)), None)


def drop_decimals(low: float, high: float) -> int:
    """Decimals that show a drop to two significant figures of its interval's half-width
    (four when the interval is a point), between one and six."""
    half = (high - low) / 2
    if half <= 0:
        return 4
    return min(6, max(1, 1 - math.floor(math.log10(half))))


def interval_line(drop: float, interval: list[float] | None, rows: int | None) -> str:
    """`accuracy drop 0.006 (95% interval -0.004 to 0.017, paired bootstrap over 360 eval
    rows)`, with as many decimals as the interval supports."""
    if interval is None:
        return f"accuracy drop {drop:.4f} (no interval measured)"
    low, high = interval
    digits = drop_decimals(low, high)
    over = f" over {rows:,} eval rows" if rows is not None else ""
    return (f"accuracy drop {drop:.{digits}f} ({REPORTED_LEVEL:.0%} interval {low:.{digits}f} "
            f"to {high:.{digits}f}, paired bootstrap{over})")
