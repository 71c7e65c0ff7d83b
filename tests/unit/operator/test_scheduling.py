"""The schedule: which jobs the ticker syncs, and when (pure; the time is given)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from opfixtures import in_flight, job, succeeded

from modelpress.operator.reconcile import JobView
from modelpress.operator.scheduling import Schedule, Waiting, merged, waiting_for

POLL = 5.0
QUEUED = {"phase": "Pending", "observedGeneration": 1}


def view(uid: str, status: dict[str, Any] | None = None, generation: int = 1,
         annotations: dict[str, str] | None = None) -> JobView:
    return replace(job(status=status, generation=generation, annotations=annotations),
                   uid=uid, name=uid)


@pytest.mark.parametrize(("status", "waiting"), [
    ({}, Waiting.SLOT),
    (QUEUED, Waiting.SLOT),
    (in_flight("Pending"), Waiting.RUN),
    (in_flight("Running"), Waiting.RUN),
    (succeeded(), Waiting.EDIT),
    (succeeded(promotion={"decision": "Pending"}), Waiting.PROMOTION),
    ({"phase": "Failed", "observedGeneration": 1}, Waiting.EDIT),
])
def test_what_a_job_waits_for(status: dict[str, Any], waiting: Waiting) -> None:
    assert waiting_for(status) is waiting


def test_merged_applies_a_merge_patch() -> None:
    assert merged({"phase": "Pending", "runId": None, "x": 1}, {"phase": "Running", "x": None}) \
        == {"phase": "Running"}


def test_queued_jobs_wait_in_arrival_order_and_are_never_polled() -> None:
    schedule = Schedule(POLL)
    for uid in ("b", "a", "c"):
        schedule.synced(view(uid), QUEUED, now=0.0)
    assert [j.uid for j in schedule.waiting(now=0.0)] == ["b", "a", "c"]
    assert schedule.due(now=1000.0) == [] and schedule.next_due() is None


def test_a_job_without_its_finalizer_waits_for_a_slot_like_any_other() -> None:
    """The ticker puts the finalizer on when it admits a job; the schedule records it."""
    schedule = Schedule(POLL)
    bare = replace(view("b"), has_finalizer=False)
    schedule.synced(view("a"), QUEUED, now=0.0)
    schedule.synced(bare, QUEUED, now=0.0)
    assert [j.uid for j in schedule.waiting(now=0.0)] == ["a", "b"]
    assert not schedule.is_news(replace(bare, resource_version="2"))  # an echo of a write
    finalized = replace(bare, has_finalizer=True)
    assert schedule.is_news(finalized)
    assert not schedule.observe(finalized, now=1.0)  # no sync due: it still waits its turn
    assert not schedule.is_news(replace(finalized, resource_version="3"))  # the echo of it
    assert [j.has_finalizer for j in schedule.waiting(now=1.0)] == [True, True]
    assert schedule.due(now=1.0) == []  # still waits for a slot, not polled


def test_an_admitted_job_is_polled_every_interval_and_leaves_the_queue() -> None:
    schedule = Schedule(POLL)
    schedule.synced(view("a"), QUEUED, now=0.0)
    schedule.synced(view("b"), QUEUED, now=0.0)
    schedule.synced(view("a"), in_flight("Pending"), now=1.0)
    assert [j.uid for j in schedule.waiting(now=1.0)] == ["b"]
    assert schedule.due(now=5.9) == [] and schedule.next_due() == 1.0 + POLL
    (due,) = schedule.due(now=6.0)
    assert due.uid == "a" and due.status == in_flight("Pending")


def test_a_settled_job_is_dropped_and_its_old_events_are_no_news() -> None:
    schedule = Schedule(POLL)
    schedule.synced(view("a"), in_flight(), now=0.0)
    schedule.synced(view("a"), succeeded(), now=1.0)
    assert len(schedule) == 0 and schedule.due(now=100.0) == []
    assert not schedule.is_news(view("a", in_flight()))  # an event of an earlier write
    assert schedule.is_news(view("a", succeeded(), generation=2))  # an edit


def test_an_unfinished_promotion_is_polled() -> None:
    schedule = Schedule(POLL)
    schedule.synced(view("a"), succeeded(promotion={"decision": "Pending"}), now=0.0)
    assert [j.uid for j in schedule.due(now=POLL)] == ["a"]


def test_a_job_first_seen_is_due_at_once() -> None:
    """After a restart every job is news: each is synced once (its metrics repopulated)."""
    schedule = Schedule(POLL)
    assert schedule.observe(view("run", in_flight()), now=0.0)
    assert schedule.observe(view("done", succeeded()), now=0.0)
    assert schedule.observe(view("queued", QUEUED), now=0.0)
    assert {j.uid for j in schedule.due(now=0.0)} == {"run", "done"}
    assert [j.uid for j in schedule.waiting(now=0.0)] == ["queued"]


def test_a_known_job_keeps_the_status_written_last() -> None:
    """A watch event may carry an earlier write: continuing from it would repeat it."""
    schedule = Schedule(POLL)
    schedule.synced(view("a"), in_flight("Running"), now=0.0)
    assert not schedule.is_news(view("a", in_flight("Pending")))
    assert not schedule.observe(replace(view("a", in_flight("Pending")), resource_version="9"),
                                now=0.0)
    (due,) = schedule.due(now=POLL)
    assert due.status == in_flight("Running") and due.resource_version == "9"


def test_an_edit_makes_a_job_due_at_once_keeping_its_place_in_the_queue() -> None:
    schedule = Schedule(POLL)
    schedule.synced(view("a"), QUEUED, now=0.0)
    schedule.synced(view("b"), QUEUED, now=0.0)
    edited = view("b", QUEUED, generation=2)
    assert schedule.is_news(edited) and schedule.observe(edited, now=1.0)
    assert [j.uid for j in schedule.due(now=1.0)] == ["b"]
    schedule.synced(edited, {**QUEUED, "observedGeneration": 2}, now=1.0)
    assert schedule.due(now=1.0) == []
    assert [j.uid for j in schedule.waiting(now=1.0)] == ["a", "b"]


def test_an_edit_during_a_sync_is_not_lost() -> None:
    schedule = Schedule(POLL)
    schedule.synced(view("a"), in_flight(), now=0.0)
    schedule.observe(view("a", in_flight(), generation=2), now=1.0)  # while it is synced
    schedule.synced(view("a"), succeeded(), now=1.0)  # the sync saw generation 1
    assert [j.uid for j in schedule.due(now=1.0)] == ["a"]


def test_annotations_other_than_kopfs_are_news() -> None:
    schedule = Schedule(POLL)
    schedule.synced(view("a"), in_flight(), now=0.0)
    assert not schedule.is_news(view("a", annotations={"kopf.modelpress.io/x": "1"}))
    assert schedule.is_news(view("a", annotations={"modelpress.io/inference-service": "s"}))


def test_a_failed_sync_backs_off() -> None:
    schedule = Schedule(POLL)
    schedule.synced(view("q"), QUEUED, now=0.0)
    schedule.retry_later("q", when=10.0)
    assert list(schedule.waiting(now=9.0)) == []
    assert [j.uid for j in schedule.waiting(now=10.0)] == ["q"]


def test_a_forgotten_job_is_gone_from_every_queue() -> None:
    schedule = Schedule(POLL)
    schedule.synced(view("q"), QUEUED, now=0.0)
    schedule.synced(view("r"), in_flight(), now=0.0)
    schedule.forget("q")
    schedule.forget("r")
    assert len(schedule) == 0 and list(schedule.waiting(now=0.0)) == []
    assert schedule.is_news(view("r", in_flight()))
