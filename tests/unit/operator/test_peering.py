"""The peering gate: the ticker acts only when kopf's rule says this replica leads, read
from the peering object's keep-alives; a peer that stopped refreshing stops counting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from opfixtures import CONFIG, NOW, Copier, Events, FakeBackend, Ticks, intake, job, run_results
from test_ticker import Writer

from modelpress.operator.controller import Controller
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.peering import PeeringGate, outranked
from modelpress.operator.ticker import INTAKE_QUIET_SECONDS, Ticker

CLOCK = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _peer(priority: int, seen_seconds_ago: float, lifetime: int = 10) -> dict[str, Any]:
    seen = CLOCK - timedelta(seconds=seen_seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_a_live_peer_of_higher_or_equal_priority_outranks() -> None:
    assert outranked({"me": _peer(5, 0), "b": _peer(9, 1)}, "me", 5, CLOCK)
    assert outranked({"me": _peer(5, 0), "b": _peer(5, 1)}, "me", 5, CLOCK)  # kopf pauses both


def test_a_lower_peer_a_dead_one_and_this_replica_do_not() -> None:
    peers = {"me": _peer(5, 0), "low": _peer(1, 0), "gone": _peer(9, seen_seconds_ago=11)}
    assert not outranked(peers, "me", 5, CLOCK)
    assert not outranked({"me": _peer(99, 0)}, "me", 5, CLOCK)


@dataclass
class PeeringApi:
    """The peering object as the API serves it, and which kind of read was made."""

    status: dict[str, Any] = field(default_factory=dict)
    fail: bool = False
    reads: list[str] = field(default_factory=list)

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                     plural: str, name: str) -> dict[str, Any]:
        return self._read(f"{plural}/{namespace}/{name}")

    def get_cluster_custom_object(self, group: str, version: str, plural: str,
                                  name: str) -> dict[str, Any]:
        return self._read(f"{plural}/{name}")

    def _read(self, what: str) -> dict[str, Any]:
        self.reads.append(what)
        if self.fail:
            raise ConnectionError("api down")
        return {"status": self.status}


def _gate(api: PeeringApi, namespace: str | None = "ml") -> PeeringGate:
    return PeeringGate(api, "modelpress", namespace, "me", 5, now=lambda: CLOCK)


def test_the_gate_reads_the_namespaced_or_cluster_peering_and_refuses_when_unreadable() -> None:
    api = PeeringApi(status={"me": _peer(5, 0), "other": _peer(9, 0)})
    assert not _gate(api).may_act()
    api.status["other"] = _peer(9, seen_seconds_ago=30)  # stopped refreshing: it is gone
    assert _gate(api).may_act()
    assert _gate(api, namespace=None).may_act()
    assert api.reads == ["kopfpeerings/ml/modelpress"] * 2 + ["clusterkopfpeerings/modelpress"]
    api.fail = True
    assert not _gate(api).may_act()


def test_a_paused_replica_ticks_nothing_until_it_leads() -> None:
    leading = [False]
    backend, writer, ticks = FakeBackend(capacity=4), Writer(), Ticks()
    controller = Controller(backend, CONFIG, OperatorMetrics(),  # type: ignore[arg-type]
                            results_reader=lambda output: run_results(), copier=Copier(),
                            clock=lambda: NOW, monotonic=ticks)
    ticker = Ticker(controller, writer, lambda job: Events(), 1.0, monotonic=ticks,
                    may_act=lambda: leading[0])
    new = job()
    ticker.observe(intake(controller, new))
    ticks.now += INTAKE_QUIET_SECONDS  # arrivals paused: only the peering holds it back
    asyncio.run(ticker.tick())
    assert backend.submitted == [] and writer.patches == {}
    leading[0] = True
    asyncio.run(ticker.tick())
    assert [r.job.metadata.name for r in backend.submitted] == [new.name]
