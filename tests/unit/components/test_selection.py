"""The choice rule shared by auto quantization and search, on fixed candidate figures."""

from __future__ import annotations

import pytest

from modelpress.components.selection import Measured, choose


def m(name: str, drop: float | None, size: int = 100, latency: float = 1.0,
      error: str | None = None) -> Measured:
    return Measured(name=name, accuracy_drop=drop, size_bytes=size, latency_ms=latency,
                    error=error)


SPARSITY_SWEEP = [m("0.3", 0.000, 400, 2.0), m("0.5", 0.002, 300, 1.6),
                  m("0.7", 0.008, 200, 1.3), m("0.9", 0.040, 100, 1.0)]


@pytest.mark.parametrize(("candidates", "bar", "objective", "winner"), [
    (SPARSITY_SWEEP, 0.01, "size", "0.7"),        # most compressed within the bar
    (SPARSITY_SWEEP, 0.05, "size", "0.9"),        # looser bar, more compression
    (SPARSITY_SWEEP, 0.001, "size", "0.3"),       # only the mildest qualifies
    (SPARSITY_SWEEP, 0.01, "latency", "0.7"),
    ([m("a", 0.0, 100, 2.0), m("b", 0.0, 100, 1.0)], 0.01, "latency", "b"),
    # near tie on latency (within 2%): the smaller one wins
    ([m("a", 0.0, 300, 1.00), m("b", 0.0, 100, 1.01)], 0.01, "latency", "b"),
    # a failed candidate never wins even if its figures look best
    ([m("a", 0.0, 300, 2.0), m("b", None, 10, 0.1, error="boom")], 0.01, "latency", "a"),
    # the bar is inclusive
    ([m("a", 0.01, 100, 1.0)], 0.01, "size", "a"),
])
def test_the_winner_follows_the_rule(candidates, bar, objective, winner) -> None:
    chosen, judged = choose(candidates, bar, objective)
    assert chosen is not None and chosen.name == winner
    assert [c.name for c in judged if c.chosen] == [winner]
    assert all(c.reason for c in judged)


def test_none_passes_returns_no_winner_and_says_why() -> None:
    chosen, judged = choose(SPARSITY_SWEEP[1:], 0.001, "size")
    assert chosen is None
    assert sum(c.chosen for c in judged) == 0
    assert [c.reason for c in judged] == [
        "accuracy drop 0.0020 exceeds 0.001", "accuracy drop 0.0080 exceeds 0.001",
        "accuracy drop 0.0400 exceeds 0.001"]


def test_losers_say_what_beat_them() -> None:
    _, judged = choose(SPARSITY_SWEEP, 0.01, "size")
    reasons = {c.name: c.reason for c in judged}
    assert reasons["0.5"] == "larger: 300 bytes vs 200"
    assert reasons["0.9"].startswith("accuracy drop 0.0400 exceeds")
