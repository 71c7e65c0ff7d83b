"""accuracyDrop's paired-bootstrap interval, and the decimals a drop is shown with."""

from __future__ import annotations

import numpy as np
import pytest

from modelpress.components.noise import (
    LEVELS,
    drop_decimals,
    drop_intervals,
    interval_at,
    interval_line,
    resampled_means,
)


def test_the_interval_of_a_known_drop_matches_its_sampling_distribution() -> None:
    # 1,000 rows: 100 the compressed model gets wrong where the original was right.
    baseline = np.ones(1000)
    compressed = np.ones(1000)
    compressed[:100] = 0.0
    interval = interval_at(drop_intervals(baseline, compressed), 0.95)
    assert interval is not None
    standard_error = np.sqrt(0.1 * 0.9 / 1000)  # a proportion's, about 0.0095
    assert interval.low == pytest.approx(0.1 - 1.96 * standard_error, abs=0.004)
    assert interval.high == pytest.approx(0.1 + 1.96 * standard_error, abs=0.004)


def test_the_pairing_cancels_what_both_models_get_wrong() -> None:
    # Both wrong on the same half of the rows: every resample has a drop of exactly 0.
    rows = np.tile([0.0, 1.0], 200)
    intervals = drop_intervals(rows, rows)
    assert [(i.confidence, i.low, i.high) for i in intervals] == [(c, 0.0, 0.0) for c in LEVELS]


def test_the_bootstrap_is_seeded_and_its_levels_nest() -> None:
    drops = np.random.default_rng(3).normal(0.01, 0.05, size=300)
    assert np.array_equal(resampled_means(drops), resampled_means(drops))
    assert not np.array_equal(resampled_means(drops), resampled_means(drops, seed=1))
    intervals = drop_intervals(np.zeros(300), -drops)
    widths = [interval.high - interval.low for interval in intervals]
    assert widths == sorted(widths) and widths[0] > 0


@pytest.mark.parametrize(("low", "high", "digits"), [
    (-0.004, 0.017, 3),   # half-width 0.0105: two significant figures
    (0.0101, 0.0119, 5),  # 0.0009
    (0.1, 0.5, 2),        # 0.2
    (0.002, 0.002, 4),    # a point: the default
])
def test_a_drop_is_shown_with_the_decimals_its_interval_supports(low: float, high: float,
                                                                 digits: int) -> None:
    assert drop_decimals(low, high) == digits


def test_the_report_line_states_the_interval_and_its_rows() -> None:
    assert interval_line(0.00612, [-0.004, 0.017], 360) == (
        "accuracy drop 0.006 (95% interval -0.004 to 0.017, paired bootstrap over 360 eval "
        "rows)")
    assert interval_line(0.5, None, None) == "accuracy drop 0.5000 (no interval measured)"
