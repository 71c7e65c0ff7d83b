"""kopf handlers: thin entries into the controller and its ticker.

A brand-new job gets its first status from the intake, a process of its own beside kopf
(operator/intake.py); kopf leaves it alone until it has a phase. Its finalizer is put on
by the ticker when it admits the job, just before its run is submitted (Ticker._finalized,
Controller._observe), not by kopf: when 1,000 jobs arrive at once, a finalizer patch for
each, and kopf's processing of its watch event, delayed the first status of the jobs
behind it (docs/operator-throughput.md). One ticker (operator/ticker.py) syncs the jobs
whose state can change (see operator/scheduling.py); the handlers only tell it what the
watch stream brought: a job first seen (given its phase by the intake, or after a
restart), an edit. Deleting a job runs the finalizer; a job deleted before its finalizer
was on (it had no run) is just forgotten.
The controller comes through kopf's `memo` (see main.run_operator); the ticker is made at
startup and started by the first job event, whose context holds kopf's Event poster.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from modelpress.api import API_GROUP, API_VERSION, KIND
from modelpress.crd import PLURAL
from modelpress.operator.config import OperatorSettings
from modelpress.operator.controller import EventSink, view_of
from modelpress.operator.intake import brand_new
from modelpress.operator.reconcile import FINALIZER, JobView
from modelpress.operator.ticker import KubeStatusWriter, Ticker, kube_api

RETRY_SECONDS = 10.0
EVENT_POSTERS = 4
EVENT_POSTER_LINGER_SECONDS = 0.05
KOPF_PREFIX = f"kopf.{API_GROUP}"


class NoDiffBase(kopf.DiffBaseStorage):
    """Keeps nothing. kopf stores each object's last handled spec to diff it for on.create
    and on.update handlers; this operator has none (the ticker tells edits by generation),
    and storing it cost every new job a second patch, and its watch event, in the burst in
    which jobs wait for their phase (and a deep copy of every body). Deletion is told by
    its timestamp, not a diff."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return {}  # nothing to compare, so no deep copy of every body kopf receives

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Progress in annotations of kopf's own prefix (the status belongs to the job, and
    modelpress.io/ annotations to the user), no diff base, our finalizer name, only
    warnings of kopf's own log turned into Events (ours are explicit), a few Event posters,
    and the ticker."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.WARNING
    # kopf posts each job's Events in order from a worker of that job's, which lingers
    # `idle_timeout` for more: a few such workers at a time keep a burst of new jobs'
    # statuses (the first thing a user looks at) ahead of their Events, and a short linger
    # keeps Events flowing (one worker lingering a second, the default, posted one Event a
    # second: 1,000 new jobs' Queued Events took a quarter of an hour).
    settings.posting.worker_limit = EVENT_POSTERS
    settings.posting.idle_timeout = EVENT_POSTER_LINGER_SECONDS
    operator = OperatorSettings()
    memo.ticker = Ticker(memo.controller, KubeStatusWriter(kube_api()), _events_of_job,
                         operator.poll_interval_seconds, workers=operator.sync_workers,
                         may_act=memo.may_act)


@kopf.on.cleanup()
async def stop_ticking(memo: kopf.Memo, **_: Any) -> None:
    await memo.ticker.stop()


def _news(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> bool:
    """An event that tells the ticker something (most only echo its own status writes);
    not a new job's (the intake process's, until it has a phase), nor one of a job being
    deleted (the finalizer's)."""
    event_type = str(event.get("type"))
    return event_type != "DELETED" and not body.get("metadata", {}).get("deletionTimestamp") \
        and not brand_new(event_type, body) and bool(memo.ticker.is_news(view_of(body)))


@kopf.on.event(API_GROUP, API_VERSION, PLURAL, when=_news)
async def observe(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A job first seen (just given its phase by the intake, or after a restart) or edited:
    the ticker queues it, or syncs it at once."""
    memo.ticker.observe(view_of(body))
    memo.ticker.start()


def _has_finalizer(body: kopf.Body, **_: Any) -> bool:
    """The ticker's finalizer is on: kopf runs `finalize` on deletion and then takes it off.
    kopf adds the finalizer of a deletion handler to every job its filter matches, so
    matching only jobs that have it leaves putting it on to the ticker."""
    return FINALIZER in (body.get("metadata", {}).get("finalizers") or [])


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, when=_has_finalizer)
def finalize(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    job = view_of(body)
    try:
        memo.controller.delete(job, _events_of(body))
    except Exception as error:  # counted in the metrics, then kopf retries the handler
        memo.controller.record_error(job, error)
        raise kopf.TemporaryError(f"finalizing failed: {error}", delay=RETRY_SECONDS) from error
    memo.ticker.forget(job.uid)


def _deleted(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


@kopf.on.event(API_GROUP, API_VERSION, PLURAL, when=_deleted)
def forget(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A job gone: one deleted before its finalizer was on never reached `finalize`, so
    its place in the schedule and its metric series go here (again, harmlessly, for one
    that did)."""
    job = view_of(body)
    memo.controller.forget(job)
    memo.ticker.forget(job.uid)


def _events_of(body: kopf.Body) -> EventSink:
    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    return emit


def _events_of_job(job: JobView) -> EventSink:
    """Events about `job` from the ticker, which has its view rather than kopf's body."""
    reference: kopf.RawBody = {
        "apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND,
        "metadata": {"namespace": job.namespace, "name": job.name, "uid": job.uid}}
    return _events_of(kopf.Body(reference))
