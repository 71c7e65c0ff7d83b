"""Choosing among measured candidates: the rule shared by auto quantization and search.

A candidate qualifies when its accuracy drop is within the bar. Among those, the winner is
the fastest (objective `latency`) or the smallest (objective `size`); near-ties (within
2%) go to the other figure. Nothing that misses the bar is ever chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from modelpress.api import Candidate

NEAR_TIE = 0.02


@dataclass(frozen=True)
class Measured:
    name: str
    accuracy_drop: float | None
    size_bytes: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    chosen: bool = False
    reason: str = ""

    def as_candidate(self) -> Candidate:
        """The judged candidate as results.json lists it."""
        return Candidate(name=self.name, accuracy_drop=self.accuracy_drop,
                         size_bytes=self.size_bytes, latency_ms=self.latency_ms,
                         chosen=self.chosen, reason=self.reason)


def _key(candidate: Measured, objective: str) -> tuple[float, float]:
    size = float(candidate.size_bytes or 0)
    latency = float(candidate.latency_ms or 0)
    return (latency, size) if objective == "latency" else (size, latency)


def _best(qualified: list[Measured], objective: str) -> Measured:
    lead = min(qualified, key=lambda c: _key(c, objective))
    near = [c for c in qualified if _key(c, objective)[0] <= _key(lead, objective)[0]
            * (1 + NEAR_TIE)]
    return min(near, key=lambda c: _key(c, objective)[1])


def _loss_reason(candidate: Measured, winner: Measured, objective: str) -> str:
    if objective == "latency":
        return f"slower: p50 {candidate.latency_ms:.3f} ms vs {winner.latency_ms:.3f} ms"
    return f"larger: {candidate.size_bytes:,} bytes vs {winner.size_bytes:,}"


def choose(candidates: list[Measured], max_accuracy_drop: float,
           objective: str) -> tuple[Measured | None, list[Measured]]:
    """The winner (None when nothing qualifies) and every candidate with why it won or lost."""
    qualified = [c for c in candidates if c.error is None and c.accuracy_drop is not None
                 and c.accuracy_drop <= max_accuracy_drop]
    winner = _best(qualified, objective) if qualified else None
    judged = []
    for candidate in candidates:
        if candidate.error is not None:
            reason = f"failed: {candidate.error}"
        elif candidate not in qualified:
            reason = f"accuracy drop {candidate.accuracy_drop:.4f} exceeds {max_accuracy_drop}"
        elif candidate is winner:
            reason = f"{'fastest' if objective == 'latency' else 'smallest'} within the " \
                     f"accuracy bar {max_accuracy_drop}"
        else:
            reason = _loss_reason(candidate, winner, objective)  # type: ignore[arg-type]
        judged.append(replace(candidate, chosen=candidate is winner, reason=reason))
    return winner, judged
