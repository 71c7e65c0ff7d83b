"""kopf handlers: each hands the job to the controller and applies the status it returns.

A brand-new job gets its first status from the intake (no backend involved). Then
create, resume (an operator restart), an edit of `spec.promotion`, and a polling timer all
do the same thing, a sync; the controller keeps them from racing. Deleting a job runs the
finalizer. The controller comes through kopf's `memo` (see main.run_operator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import kopf

from modelpress.api import API_GROUP, API_VERSION
from modelpress.crd import PLURAL
from modelpress.operator.config import OperatorSettings
from modelpress.operator.controller import Controller, EventSink, view_of
from modelpress.operator.reconcile import JobView

# Read once at import: kopf needs the interval when the timer is declared.
POLL_SECONDS = OperatorSettings().poll_interval_seconds
RETRY_SECONDS = 10.0
KOPF_PREFIX = f"kopf.{API_GROUP}"
FINALIZER = f"{API_GROUP}/finalizer"
T = TypeVar("T")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Progress in annotations of kopf's own prefix (the status belongs to the job, and
    modelpress.io/ annotations to the user), our finalizer name, only warnings of kopf's
    own log turned into Events (ours are explicit), and one Event poster."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    # Events go out one at a time: when many jobs arrive at once, their statuses (the
    # first thing a user looks at) are not queued behind hundreds of Event posts.
    settings.posting.worker_limit = 1


def _brand_new(body: kopf.Body, event: kopf.RawEvent, **_: Any) -> bool:
    """Created and never handled: no phase, no finalizer of ours yet, not being deleted."""
    metadata = body.get("metadata", {})
    return event.get("type") != "DELETED" and not (body.get("status") or {}).get("phase") \
        and FINALIZER not in (metadata.get("finalizers") or []) \
        and not metadata.get("deletionTimestamp")


@kopf.on.event(API_GROUP, API_VERSION, PLURAL, when=_brand_new)
async def intake(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """A new job's first status (Pending, or Failed for an invalid spec), written in the
    processing cycle in which kopf adds its finalizer instead of a round trip later by the
    create handler. Pure and quick, so it runs on the event loop."""
    patch.status.update(memo.controller.accept(view_of(body), _events_of(body)))


@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec.promotion")
def sync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    _sync(memo.controller, body, patch)


def _unsettled(status: kopf.Status, **_: Any) -> bool:
    """Only a job in flight, or one whose promotion is unfinished, changes on its own."""
    promotion = status.get("promotion") or {}
    return status.get("phase") not in ("Succeeded", "Failed") \
        or promotion.get("decision") == "Pending"


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=POLL_SECONDS, initial_delay=POLL_SECONDS,
            when=_unsettled)
def poll(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    _sync(memo.controller, body, patch)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL)
def finalize(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    job = view_of(body)
    _counted(memo.controller, job, lambda: memo.controller.delete(job, _events_of(body)))


def _sync(controller: Controller, body: kopf.Body, patch: kopf.Patch) -> None:
    job = view_of(body)
    patch.status.update(_counted(controller, job,
                                 lambda: controller.sync(job, _events_of(body))))


def _counted(controller: Controller, job: JobView, work: Callable[[], T]) -> T:
    """Run `work`; an error is counted in the metrics, then kopf retries the handler."""
    try:
        return work()
    except Exception as error:
        controller.record_error(job, error)
        raise kopf.TemporaryError(f"reconcile failed: {error}", delay=RETRY_SECONDS) from error


def _events_of(body: kopf.Body) -> EventSink:
    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)

    return emit
