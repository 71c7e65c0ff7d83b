"""The ticker: one task for the whole operator that syncs the jobs the schedule says are
due and writes their status (see `scheduling` for why there is no timer per job).

It runs on kopf's event loop. Each sync (backend calls, reading results, promoting) runs
in a worker thread, at most `workers` at a time; admitting queued jobs runs one at a time
and stops at the first that finds every slot taken. A status is written only when it
changed, as a merge patch of the status subresource; Events go through kopf's poster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from modelpress.api import API_GROUP, API_VERSION
from modelpress.crd import PLURAL
from modelpress.operator.controller import Controller, EventSink
from modelpress.operator.reconcile import FINALIZER, JobView
from modelpress.operator.scheduling import Schedule, Waiting, merged, waiting_for

RETRY_SECONDS = 10.0
# While new jobs arrive (the last one seen less than INTAKE_QUIET_SECONDS ago) the
# ticker starts no sync, for at most MAX_YIELD_SECONDS at a time (see Ticker._yields).
INTAKE_QUIET_SECONDS = 0.25
MAX_YIELD_SECONDS = 10.0
logger = logging.getLogger(__name__)
T = TypeVar("T")


class JobGone(Exception):
    """The job no longer exists (deleted since it was last seen)."""


class StatusWriter(Protocol):
    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """Merge `patch` into the job's status; JobGone when there is no such job."""
        ...

    def put_finalizer(self, job: JobView) -> bool:
        """Put FINALIZER on `job` (nothing to do when it is on); False when the job changed
        under the write (try again); JobGone when it no longer exists or is being
        deleted."""
        ...


class KubeStatusWriter:
    """Status patches through the Kubernetes API (the status subresource), and the
    finalizer."""

    def __init__(self, api: Any) -> None:
        self._api = api  # a kubernetes.client.CustomObjectsApi

    def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._api.patch_namespaced_custom_object_status(
                API_GROUP, API_VERSION, namespace, PLURAL, name, {"status": patch})
        except ApiException as error:
            if error.status == 404:
                raise JobGone(f"{namespace}/{name}") from error
            raise

    def put_finalizer(self, job: JobView) -> bool:
        """Read the job, then patch its finalizers at the version read (a merge patch naming
        a resourceVersion is conditional), so a finalizer another controller adds meanwhile
        is never overwritten: a conflict is answered False."""
        from kubernetes.client.exceptions import ApiException

        try:
            body = self._api.get_namespaced_custom_object(
                API_GROUP, API_VERSION, job.namespace, PLURAL, job.name)
            metadata = body["metadata"]
            finalizers = metadata.get("finalizers") or []
            if metadata.get("uid") != job.uid or metadata.get("deletionTimestamp"):
                raise JobGone(f"{job.namespace}/{job.name}")
            if FINALIZER in finalizers:
                return True
            self._api.patch_namespaced_custom_object(
                API_GROUP, API_VERSION, job.namespace, PLURAL, job.name,
                {"metadata": {"finalizers": [*finalizers, FINALIZER],
                              "resourceVersion": metadata["resourceVersion"]}})
        except ApiException as error:
            if error.status == 404:
                raise JobGone(f"{job.namespace}/{job.name}") from error
            if error.status == 409:
                return False
            raise
        return True


def kube_configuration() -> Any:
    """The API server's address and credentials, a kubernetes client Configuration:
    in-cluster, else the kubeconfig of $KUBECONFIG as it is set now (the kubernetes client
    reads it once, when imported), as kopf's own login finds them."""
    from kubernetes import client, config

    settings = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=settings)
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                client_configuration=settings)
    return settings


def kube_api() -> Any:
    """A CustomObjectsApi of the API server `kube_configuration` finds."""
    from kubernetes import client

    return client.CustomObjectsApi(client.ApiClient(kube_configuration()))


class Ticker:
    """Works through the schedule: polled jobs when due, queued jobs when a slot may be
    free (a run seen ending, a job deleted, a new job, or once per poll interval)."""

    def __init__(self, controller: Controller, writer: StatusWriter,
                 events_for: Callable[[JobView], EventSink], poll_seconds: float, *,
                 workers: int = 4, monotonic: Callable[[], float] = time.monotonic,
                 may_act: Callable[[], bool] = lambda: True,
                 intake_quiet_seconds: float = INTAKE_QUIET_SECONDS) -> None:
        self.controller = controller
        self._may_act = may_act  # False while a peer replica acts (operator/peering.py)
        self.schedule = Schedule(poll_seconds)
        self._writer = writer
        self._events_for = events_for
        self._poll_seconds = poll_seconds
        self._workers = asyncio.Semaphore(workers)
        self._monotonic = monotonic
        # The schedule is changed from kopf's handlers (on the loop, or in kopf's threads)
        # and by the ticker.
        self._lock = threading.Lock()
        self._admit = True  # whether something may have freed a slot since the last pass
        self._admitted_at = 0.0  # monotonic time of the last admission pass
        self._intake_quiet_seconds = intake_quiet_seconds
        self._arrived_at = -intake_quiet_seconds  # monotonic time a new job was last seen
        self._yield_began: float | None = None  # when the current yield to the intake began
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------- from kopf's handlers

    def is_news(self, job: JobView) -> bool:
        with self._lock:
            return self.schedule.is_news(job)

    def observe(self, job: JobView) -> None:
        """A watch event of a job (see Schedule.observe). A job first seen waiting for a
        slot has just arrived (the intake gave it its phase), or this process has just
        started: either way, more may follow at once (see _yields)."""
        now = self._monotonic()
        with self._lock:
            first_seen = not self.schedule.knows(job.uid)
            due = self.schedule.observe(job, now)
        if first_seen:
            self.controller.observed(job)
            if waiting_for(job.status) is Waiting.SLOT:
                self._arrived_at = now
        if due:
            self._poke()

    def forget(self, uid: str) -> None:
        """The job was deleted; the slot its run held (if any) is free for the next."""
        with self._lock:
            self.schedule.forget(uid)
        self._poke()

    def start(self) -> None:
        """Start ticking on the running loop. Called from a kopf handler: the task
        inherits kopf's context, which its Event poster needs."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self.run(), name="modelpress-ticker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --------------------------------------------------------------------- the loop

    async def run(self) -> None:
        while True:
            await self.tick()
            await self._sleep()

    async def tick(self) -> None:
        """Sync the polled jobs that are due, then admit queued ones while slots last: when
        something may have freed a slot, and at least once per poll interval (for slots
        freed elsewhere). Nothing while new jobs arrive (see _yields) or another replica
        acts."""
        now = self._monotonic()
        if self._yields(now) or not await asyncio.to_thread(self._may_act):
            return
        with self._lock:
            due = self.schedule.due(now)
        await asyncio.gather(*(self._sync_one(job) for job in due))
        if self._admit or now - self._admitted_at >= self._poll_seconds:
            self._admit, self._admitted_at = False, now
            await self._admit_waiting()

    def _yields(self, now: float) -> bool:
        """Whether to start no sync now, while new jobs arrive. Syncs (submit, poll, read
        results, in threads) compete for the CPUs with the intake process, which writes
        the new jobs' first status, and with this event loop, which takes them over: with
        the ticker running the first runs during a burst, 1,000 jobs applied at once waited
        20 s for their phase. A burst is over in seconds, so the ticker waits for a pause
        in arrivals, but never more than MAX_YIELD_SECONDS at a time, so that a steady
        stream of new jobs cannot stall the runs in flight."""
        if now - self._arrived_at >= self._intake_quiet_seconds:
            self._yield_began = None
            return False
        if self._yield_began is None:
            self._yield_began = now
        if now - self._yield_began < MAX_YIELD_SECONDS:
            return True
        self._yield_began = None  # a turn for the syncs; the next yield starts afresh
        return False

    async def _admit_waiting(self) -> None:
        if self.controller.slots_taken():
            return
        with self._lock:
            waiting = list(self.schedule.waiting(self._monotonic()))
        for job in waiting:
            if self.controller.slots_taken():
                return
            if self.controller.slots_taken(job.namespace):
                continue
            finalized = job if job.has_finalizer else await asyncio.to_thread(self._finalized, job)
            if finalized is not None:
                await self._sync_one(finalized)

    async def _sleep(self) -> None:
        """Until the next polled job is due, something new happens, or a poll interval
        passed."""
        with self._lock:
            next_due = self.schedule.next_due()
        delay = self._poll_seconds if next_due is None else next_due - self._monotonic()
        if self._yield_began is not None:  # look again when arrivals may have paused
            delay = min(delay, self._intake_quiet_seconds)
        try:
            await asyncio.wait_for(self._wake.wait(), max(0.0, min(delay, self._poll_seconds)))
        except TimeoutError:
            pass  # time to look again
        self._wake.clear()

    def _poke(self) -> None:
        """Wake the ticker for an admission pass (thread-safe)."""
        self._admit = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _sync_one(self, job: JobView) -> None:
        async with self._workers:
            ended = await asyncio.to_thread(self._sync, job)
        if ended:
            self._admit = True

    def _finalized(self, job: JobView) -> JobView | None:
        """`job` with the operator's finalizer, put on now, just before its run may be
        submitted: a job that waits for a slot costs no write but its first status (when
        1,000 arrive at once, a finalizer patch each, and its watch event, would delay the
        phase of the ones behind). None: the job is gone (forgotten), or the write failed
        or met a newer version (tried again at a later pass)."""
        written = self._attempt(job, lambda: self._writer.put_finalizer(job))
        if written is None:
            return None
        if not written:  # the job changed under the write
            self._admit = True
            return None
        finalized = replace(job, has_finalizer=True)
        with self._lock:
            self.schedule.observe(finalized, self._monotonic())
        return finalized

    def _attempt(self, job: JobView, work: Callable[[], T]) -> T | None:
        """`work()` for `job`, or None when it failed: a job gone is forgotten; any other
        error is reported, counted, and tried again RETRY_SECONDS later, like a failed
        handler."""
        try:
            return work()
        except JobGone:
            self.forget(job.uid)
        except Exception as error:
            self.controller.record_error(job, error)
            logger.warning("Sync of %s/%s failed; retrying in %.0f s: %s", job.namespace,
                           job.name, RETRY_SECONDS, error)
            with self._lock:
                self.schedule.retry_later(job.uid, self._monotonic() + RETRY_SECONDS)
        return None

    def _sync(self, job: JobView) -> bool:
        """Sync one job and write its status; whether its run ended (a slot freed)."""
        patch = self._attempt(job, lambda: self._written_sync(job))
        if patch is None:
            return False
        status = merged(job.status, patch)
        with self._lock:
            self.schedule.synced(job, status, self._monotonic())
        return waiting_for(job.status) is Waiting.RUN and waiting_for(status) is not Waiting.RUN

    def _written_sync(self, job: JobView) -> dict[str, Any]:
        """Sync `job` and write the status patch it gives (when not empty)."""
        patch = self.controller.sync(job, self._events_for(job))
        if patch:
            self._writer.patch_status(job.namespace, job.name, patch)
        return patch
