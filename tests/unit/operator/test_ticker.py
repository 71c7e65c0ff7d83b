"""The ticker over a real controller with a fake backend and status writer: queued jobs
are admitted in order as slots free, polled jobs are synced when due, statuses are written
only when they change, and a failed write is retried."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from opfixtures import (
    CONFIG,
    NOW,
    RECORDED,
    Copier,
    Events,
    FakeBackend,
    Ticks,
    intake,
    job,
    run_results,
)

from modelpress.operator.backends.base import RunState
from modelpress.operator.controller import Controller
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.reconcile import JobView
from modelpress.operator.ticker import (
    INTAKE_QUIET_SECONDS,
    MAX_YIELD_SECONDS,
    JobGone,
    Ticker,
)

POLL = 1.0


@dataclass
class Runs(FakeBackend):
    """Runs that hold a slot until the test ends them."""

    ended: set[str] = field(default_factory=set)

    def poll(self, run_id: str) -> RunState:
        if run_id in self.ended:
            return RunState(run_id=run_id, phase="Succeeded", recorded=RECORDED)
        return RunState(run_id=run_id, phase="Running")

    def has_capacity(self) -> bool:
        self.capacity_checks += 1
        return len(self.submitted) - len(self.ended) < self.capacity


@dataclass
class Writer:
    """The API's status subresource: patches by job name."""

    patches: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fail_with: Exception | None = None
    finalized: list[str] = field(default_factory=list)  # jobs given the finalizer, in order
    # What put_finalizer does next, per call: True (put), False (a newer version), or raise.
    finalizer_answers: list[bool | Exception] = field(default_factory=list)

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.patches.setdefault(name, []).append(patch)

    def put_finalizer(self, job: JobView) -> bool:
        answer = self.finalizer_answers.pop(0) if self.finalizer_answers else True
        if isinstance(answer, Exception):
            raise answer
        if answer:
            self.finalized.append(job.name)
        return answer

    def phase(self, name: str) -> str | None:
        phases = [p["phase"] for p in self.patches.get(name, []) if "phase" in p]
        return phases[-1] if phases else None


def _ticker(backend: Runs, writer: Writer, ticks: Ticks,
            intake_quiet_seconds: float = 0.0) -> Ticker:
    """A ticker that, unless told otherwise, never waits for arrivals to pause (the tests
    of that give it the operator's quiet time)."""
    controller = Controller(backend, CONFIG, OperatorMetrics(),  # type: ignore[arg-type]
                            results_reader=lambda output: run_results(), copier=Copier(),
                            clock=lambda: NOW, monotonic=ticks)
    return Ticker(controller, writer, lambda job: Events(), POLL, monotonic=ticks,
                  intake_quiet_seconds=intake_quiet_seconds)


def _accepted(ticker: Ticker, count: int, has_finalizer: bool = True) -> list[JobView]:
    """`count` new jobs through the intake, as the handler does."""
    jobs = [replace(job(), uid=f"uid-{n}", name=f"job-{n}", has_finalizer=has_finalizer)
            for n in range(count)]
    for new in jobs:
        ticker.observe(intake(ticker.controller, new))
    return jobs


def test_queued_jobs_are_admitted_in_order_while_slots_last() -> None:
    backend, writer, ticks = Runs(capacity=2), Writer(), Ticks()
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 10)
    asyncio.run(ticker.tick())
    assert [r.job.metadata.name for r in backend.submitted] == ["job-0", "job-1"]
    assert set(writer.patches) == {"job-0", "job-1"}  # the queued ones are already written
    # Two admitted (each asks overall and in its namespace), one found every slot taken.
    assert backend.capacity_checks == 2 * 2 + 1


def test_a_queued_job_costs_nothing_while_slots_are_known_taken() -> None:
    backend, writer, ticks = Runs(capacity=1), Writer(), Ticks()
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 100)

    async def ticking() -> None:
        for _ in range(20):
            await ticker.tick()

    asyncio.run(ticking())
    assert len(backend.submitted) == 1 and backend.capacity_checks == 2 + 1


def test_a_run_seen_ending_admits_the_next_in_the_same_tick() -> None:
    backend, writer, ticks = Runs(capacity=1), Writer(), Ticks()
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 3)

    async def ticking() -> None:
        await ticker.tick()
        backend.ended.add("run-1")
        ticks.now += POLL  # the running job's poll is due
        await ticker.tick()

    asyncio.run(ticking())
    assert writer.phase("job-0") == "Succeeded"
    assert [r.job.metadata.name for r in backend.submitted] == ["job-0", "job-1"]
    assert len(ticker.schedule) == 2  # job-0 settled: no longer scheduled


def test_polled_jobs_are_synced_only_when_due_and_unchanged_ones_not_written() -> None:
    backend, writer, ticks = Runs(capacity=1), Writer(), Ticks()
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 1)

    async def ticking() -> None:
        await ticker.tick()  # submitted
        for _ in range(5):
            ticks.now += POLL / 4
            await ticker.tick()

    asyncio.run(ticking())
    submitted, polled = writer.patches["job-0"]  # one poll was due, and it changed it
    assert submitted["runId"] == "run-1" and polled["phase"] == "Running"


def test_a_failed_write_is_counted_and_retried() -> None:
    backend, writer, ticks = Runs(capacity=1), Writer(fail_with=OSError("api down")), Ticks()
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 1)

    async def ticking() -> None:
        await ticker.tick()
        writer.fail_with = None
        ticks.now += 10.0  # RETRY_SECONDS
        await ticker.tick()

    asyncio.run(ticking())
    # The retry continues from the status it failed to write: the run submitted, now polled.
    (patch,) = writer.patches["job-0"]
    assert patch["runId"] == "run-1" and patch["phase"] == "Running"
    assert len(backend.submitted) == 1
    errors = ticker.controller.metrics.reconcile_errors.collect()[0].samples
    assert any(sample.value == 1.0 for sample in errors)


def test_a_job_gone_is_forgotten() -> None:
    backend, writer, ticks = Runs(capacity=1), Writer(fail_with=JobGone("ml/job-0")), Ticks()
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 1)
    asyncio.run(ticker.tick())
    assert len(ticker.schedule) == 0


def test_the_running_ticker_wakes_for_a_new_job() -> None:
    backend, writer = Runs(capacity=1), Writer()
    ticker = _ticker(backend, writer, Ticks())
    ticker._poll_seconds = 3600.0  # only the wake can bring it round

    async def running() -> None:
        ticker.start()
        await asyncio.sleep(0.05)
        _accepted(ticker, 1)
        for _ in range(100):
            if backend.submitted:
                break
            await asyncio.sleep(0.01)
        await ticker.stop()

    asyncio.run(running())
    assert len(backend.submitted) == 1


# ---------------------------------------------------------------------------- the finalizer

def test_the_finalizer_goes_on_only_as_a_job_is_admitted_and_before_its_run() -> None:
    """A queued job costs no write but its first status: of ten new jobs, the two admitted
    get the finalizer, each before its run is submitted, and the next in line, which found
    every slot taken, keeps it for its turn."""
    backend, writer, ticks = Runs(capacity=2), Writer(), Ticks()
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 10, has_finalizer=False)
    asyncio.run(ticker.tick())
    assert writer.finalized == ["job-0", "job-1", "job-2"]
    assert [r.job.metadata.name for r in backend.submitted] == ["job-0", "job-1"]
    assert [j.has_finalizer for j in ticker.schedule.waiting(ticks.now)] == [True] + [False] * 7


def test_a_job_whose_finalizer_met_a_newer_version_is_tried_again_later() -> None:
    backend, writer, ticks = Runs(capacity=1), Writer(finalizer_answers=[False]), Ticks()
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 1, has_finalizer=False)

    async def ticking() -> None:
        await ticker.tick()
        assert backend.submitted == [] and backend.capacity_checks == 0
        await ticker.tick()  # the conflict asked for another pass

    asyncio.run(ticking())
    assert writer.finalized == ["job-0"] and len(backend.submitted) == 1


def test_a_failed_finalizer_write_is_counted_and_retried_without_a_run() -> None:
    backend, ticks = Runs(capacity=1), Ticks()
    writer = Writer(finalizer_answers=[OSError("api down")])
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 1, has_finalizer=False)

    async def ticking() -> None:
        await ticker.tick()
        assert backend.submitted == []
        ticks.now += 5.0
        await ticker.tick()  # backing off: not tried again yet
        assert writer.finalized == []
        ticks.now += 5.0  # RETRY_SECONDS after the failure
        await ticker.tick()

    asyncio.run(ticking())
    assert writer.finalized == ["job-0"] and len(backend.submitted) == 1
    errors = ticker.controller.metrics.reconcile_errors.collect()[0].samples
    assert any(sample.value == 1.0 for sample in errors)


def test_a_job_gone_before_its_finalizer_is_forgotten_without_a_run() -> None:
    backend, ticks = Runs(capacity=1), Ticks()
    writer = Writer(finalizer_answers=[JobGone("ml/job-0")])
    ticker = _ticker(backend, writer, ticks)
    _accepted(ticker, 2, has_finalizer=False)
    asyncio.run(ticker.tick())
    assert writer.finalized == ["job-1"]  # the next in line took the slot
    assert [r.job.metadata.name for r in backend.submitted] == ["job-1"]
    assert len(ticker.schedule) == 1


# ---------------------------------------------------------------- new jobs come first

def test_no_sync_starts_while_new_jobs_arrive() -> None:
    """The first statuses of a burst of new jobs are not slowed by syncs in threads: the
    ticker admits nothing until arrivals pause."""
    backend, writer, ticks = Runs(capacity=2), Writer(), Ticks()
    ticker = _ticker(backend, writer, ticks, intake_quiet_seconds=INTAKE_QUIET_SECONDS)

    async def ticking() -> None:
        _accepted(ticker, 3)
        await ticker.tick()
        ticks.now += INTAKE_QUIET_SECONDS / 2
        await ticker.tick()
        assert backend.submitted == [] and backend.capacity_checks == 0
        ticks.now += INTAKE_QUIET_SECONDS / 2  # a pause: the ticker's turn
        await ticker.tick()

    asyncio.run(ticking())
    assert [r.job.metadata.name for r in backend.submitted] == ["job-0", "job-1"]


def test_a_steady_stream_of_new_jobs_cannot_stall_the_ticker() -> None:
    backend, writer, ticks = Runs(capacity=1), Writer(), Ticks()
    ticker = _ticker(backend, writer, ticks, intake_quiet_seconds=INTAKE_QUIET_SECONDS)
    step, began = INTAKE_QUIET_SECONDS / 2, ticks.now
    first_submitted_at = None

    async def ticking() -> None:
        nonlocal first_submitted_at
        for n in range(int(2 * MAX_YIELD_SECONDS / step)):
            new = replace(job(), uid=f"uid-{n}", name=f"job-{n}")
            ticker.observe(intake(ticker.controller, new))
            await ticker.tick()
            if backend.submitted and first_submitted_at is None:
                first_submitted_at = ticks.now
            ticks.now += step

    asyncio.run(ticking())
    assert first_submitted_at == began + MAX_YIELD_SECONDS
    assert backend.submitted[0].job.metadata.name == "job-0"

