"""Which jobs the operator syncs, and when: one schedule for the whole controller.

A job changes without an edit only while its run is in flight, while its promotion is
unfinished, and when a run slot frees for it. So instead of a timer per job (kopf gives
each its own task, and with a thousand jobs queued for four slots a thousand syncs a
second found nothing to do while new jobs waited for their phase), the operator keeps
this schedule and one ticker (`ticker.Ticker`) works through it:

- a run in flight, or an unfinished promotion: synced every poll interval;
- waiting for a slot: synced in arrival order when a slot may have freed (a run seen
  ending, a job deleted, or once per poll interval for slots freed elsewhere), the
  ticker putting its finalizer on first;
- edited (a generation its status has not observed), or first seen: synced at once;
- settled: never, until an edit.

Pure bookkeeping: no I/O, and the (monotonic) time comes in. The status an entry holds is
the one the operator wrote last, not the one in the latest watch event: events of earlier
writes may still be on their way, and continuing from one would repeat its transitions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from modelpress.operator.reconcile import TERMINAL_PHASES, JobView

# Annotations kopf rewrites as it handles a job: not an edit of the job.
KOPF_ANNOTATIONS = "kopf."


class Waiting(Enum):
    """What a job waits for."""

    SLOT = "slot"  # no run yet: admitted when a slot frees
    RUN = "run"  # its run is in flight: polled
    PROMOTION = "promotion"  # finished, its promotion unfinished (a copy to retry): polled
    EDIT = "edit"  # settled: nothing happens until its spec changes


def waiting_for(status: Mapping[str, Any] | None) -> Waiting:
    """What a job with this (raw) status waits for."""
    status = status or {}
    if status.get("phase") in TERMINAL_PHASES:
        promotion = status.get("promotion") or {}
        return Waiting.PROMOTION if promotion.get("decision") == "Pending" else Waiting.EDIT
    return Waiting.RUN if status.get("runId") else Waiting.SLOT


def merged(status: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> dict[str, Any]:
    """`status` after the JSON merge patch `patch` (top-level keys; None deletes one)."""
    result = {**(status or {}), **patch}
    return {key: value for key, value in result.items() if value is not None}


def _own_annotations(view: JobView) -> dict[str, str]:
    return {key: value for key, value in view.annotations.items()
            if not key.startswith(KOPF_ANNOTATIONS)}


@dataclass
class _Entry:
    view: JobView  # the latest spec and metadata, with the status written last
    waiting: Waiting
    due: float  # monotonic time of its next sync (SLOT: the earliest it may be tried)


class Schedule:
    """Jobs by uid, in two queues: those waiting for a slot (in the order first seen: the
    order they get slots) and those polled. Settled jobs are kept as (uid → generation)
    only, so an old event of one is told apart from an edit. Every call costs in
    proportion to the polled jobs, or (`waiting`) to the queue read, never to all jobs."""

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._queued: dict[str, _Entry] = {}
        self._polled: dict[str, _Entry] = {}
        self._settled: dict[str, int] = {}
        # Queued jobs whose spec changed: synced at once (the edit may have made the spec
        # invalid), keeping their place in the queue.
        self._edited: set[str] = set()

    def __len__(self) -> int:
        return len(self._queued) + len(self._polled)

    def knows(self, uid: str) -> bool:
        """Whether the job is queued, polled or settled here."""
        return self._entry(uid) is not None or uid in self._settled

    def is_news(self, view: JobView) -> bool:
        """Whether a watch event of `view` tells the schedule something: a job it does not
        know (first seen, e.g. after a restart), a new generation, its finalizer put on, or
        other annotations. Most events only echo the operator's own status writes."""
        entry = self._entry(view.uid)
        if entry is None:
            return self._settled.get(view.uid) != view.generation
        return entry.view.generation != view.generation \
            or entry.view.has_finalizer != view.has_finalizer \
            or _own_annotations(entry.view) != _own_annotations(view)

    def observe(self, view: JobView, now: float) -> bool:
        """Take in a job from a watch event (or the ticker's own finalizer write); whether
        a sync is due at once (a job first seen, or one whose spec changed). A known job
        keeps the status written last."""
        entry = self._entry(view.uid)
        if entry is None:
            self._settled.pop(view.uid, None)
            self._place(view.uid, _Entry(view, waiting_for(view.status), now))
            return True
        edited = entry.view.generation != view.generation
        entry.view = replace(view, status=entry.view.status)
        if edited:
            entry.due = now
            if entry.waiting is Waiting.SLOT:
                self._edited.add(view.uid)
        return edited

    def synced(self, view: JobView, status: Mapping[str, Any], now: float) -> None:
        """Record the status just written (or confirmed) for `view`, and when the job is
        due next."""
        entry = self._entry(view.uid) or _Entry(view, Waiting.SLOT, now)
        # An edit may have arrived while the sync ran: then it is due again at once.
        observed = status.get("observedGeneration") == entry.view.generation
        waiting = waiting_for(status)
        if waiting is Waiting.EDIT and observed:
            self.forget(view.uid)
            self._settled[view.uid] = view.generation
            return
        entry.view = replace(entry.view, status=dict(status))
        entry.waiting = waiting
        entry.due = now if waiting is Waiting.SLOT or not observed else now + self.poll_seconds
        self._place(view.uid, entry)
        if observed or waiting is not Waiting.SLOT:
            self._edited.discard(view.uid)

    def retry_later(self, uid: str, when: float) -> None:
        """A sync of `uid` failed: try again at `when`."""
        entry = self._entry(uid)
        if entry is not None:
            entry.due = when

    def forget(self, uid: str) -> None:
        self._queued.pop(uid, None)
        self._polled.pop(uid, None)
        self._settled.pop(uid, None)
        self._edited.discard(uid)

    def due(self, now: float) -> list[JobView]:
        """Jobs to sync now whether or not a slot is free: polled ones due (a run in
        flight, a promotion to retry, an edit), and queued ones just edited."""
        return [entry.view for entry in self._polled_now() if entry.due <= now]

    def waiting(self, now: float) -> Iterator[JobView]:
        """Jobs waiting for a slot, first come first served, but not those backing off."""
        return (entry.view for entry in list(self._queued.values()) if entry.due <= now)

    def next_due(self) -> float | None:
        """The earliest time a job of `due` is due (None: none is)."""
        return min((entry.due for entry in self._polled_now()), default=None)

    def _polled_now(self) -> Iterator[_Entry]:
        yield from self._polled.values()
        yield from (self._queued[uid] for uid in self._edited)

    def _entry(self, uid: str) -> _Entry | None:
        return self._queued.get(uid) or self._polled.get(uid)

    def _place(self, uid: str, entry: _Entry) -> None:
        """Into the queue its state belongs to; a job already queued keeps its place."""
        if entry.waiting is Waiting.SLOT:
            self._polled.pop(uid, None)
            self._queued.setdefault(uid, entry)
        else:
            self._queued.pop(uid, None)
            self._polled[uid] = entry
