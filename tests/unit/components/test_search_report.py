"""The report's Pareto front of the candidates (size x latency x accuracy drop)."""

from __future__ import annotations

from modelpress.api import Candidate, Latency, MetricValue, ModelFigures, Results
from modelpress.components.report import pareto_front, pareto_section


def _candidate(name: str, size: int, latency: float, drop: float | None,
               chosen: bool = False) -> Candidate:
    return Candidate(name=name, size_bytes=size, latency_ms=latency, accuracy_drop=drop,
                     chosen=chosen)


CANDIDATES = [
    _candidate("small-slow", 100, 9.0, 0.01, chosen=True),
    _candidate("big-fast", 900, 1.0, 0.01),
    _candidate("accurate", 800, 8.0, 0.0),
    _candidate("dominated", 950, 9.5, 0.02),   # worse than big-fast on all three
    _candidate("failed", 10, 0.1, None),       # no figures: never on the front
]


def test_the_front_keeps_exactly_what_nothing_beats_on_all_three() -> None:
    assert [c.name for c in pareto_front(CANDIDATES)] == ["small-slow", "big-fast", "accurate"]


def test_the_report_section_draws_and_lists_the_front() -> None:
    figures = ModelFigures(size_bytes=1000, parameters=10, metric=MetricValue(name="a", value=1),
                           latency_ms={"cpu": Latency(p50=1, p95=1)})
    results = Results(baseline=figures, compressed=figures, compression_ratio=1.0,
                      accuracy_drop=0.0, candidates=CANDIDATES)
    section = pareto_section(results)
    assert 'alt="pareto front" src="data:image/png;base64,' in section
    assert section.count("<tr><td>") == 3 and "dominated" not in section
    assert "&#9733; small-slow" in section
    assert pareto_section(results.model_copy(update={"candidates": CANDIDATES[:1]})) == ""
