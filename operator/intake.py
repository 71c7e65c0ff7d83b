"""The intake: a process of the operator's own that gives each new job its first status.

A job has a phase right after it is applied: Pending (queued for a run slot), or Failed
naming the field its spec gets wrong. Neither needs the backend, only the spec, so it is
written here, from a bare watch of the jobs, in a process forked from the operator's at
startup. kopf handles each watch event in a processing cycle of its own, about 3 ms of
CPU a job, on one event loop under one GIL; with the first status written in that cycle,
the last of 1,000 jobs applied at once waited seconds for its phase
(docs/operator-throughput.md). The operator's process takes a job over from the first
event that shows it with a phase (the ticker queues it and admits it when a slot is free).

- Each write is conditional on the version the intake read (a merge patch naming the
  resourceVersion): an edit made meanwhile is never answered with a stale first status,
  as the edit's own event brings the job back.
- The Events of a first status (Queued, or the invalid spec) are posted behind the
  statuses, once no new job came for a moment, as the ticker yields to new jobs.
- It writes only while this replica may act (peering): when it may again, it lists the
  jobs afresh, so none that arrived meanwhile is missed.
- It lives and dies with the operator's process: each notices the other's end (a pipe,
  and the child's exit), and the operator stops when its intake is gone, to be restarted
  whole.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import select
import signal
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelpress.api import API_GROUP, API_VERSION, KIND
from modelpress.crd import PLURAL
from modelpress.operator.controller import utc_now, view_of
from modelpress.operator.reconcile import (
    FINALIZER,
    Config,
    EmitEvent,
    JobView,
    accept,
    checked,
    transition_events,
)
from modelpress.operator.status import parse_status, status_patch
from modelpress.operator.ticker import kube_configuration

CONCURRENT_WRITES = 128
EVENT_POSTERS = 2
# Events wait until no new job came for QUIET_SECONDS, but at most MAX_EVENT_DELAY_SECONDS.
QUIET_SECONDS = 0.25
MAX_EVENT_DELAY_SECONDS = 10.0
WATCH_TIMEOUT_SECONDS = 300
RECONNECT_SECONDS = 1.0
# A failed write (not a conflict, not a job gone) is tried again after these many seconds.
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)
PEERING_SECONDS = 1.0
READY_TIMEOUT_SECONDS = 60.0
GONE = 404
CONFLICT = 409
logger = logging.getLogger(__name__)


def brand_new(event_type: str, body: Mapping[str, Any]) -> bool:
    """Created and never handled: no phase, no finalizer of ours, not being deleted."""
    metadata = body.get("metadata", {})
    return event_type in ("ADDED", "MODIFIED") and not (body.get("status") or {}).get("phase") \
        and FINALIZER not in (metadata.get("finalizers") or []) \
        and not metadata.get("deletionTimestamp")


@dataclass(frozen=True)
class FirstStatus:
    """What the intake writes for a new job: its status patch, conditional on the version
    read, and the Events that go with it."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    patch: dict[str, Any]
    events: list[EmitEvent]

    def body(self) -> dict[str, Any]:
        """The merge patch of the status subresource."""
        return {"metadata": {"resourceVersion": self.resource_version}, "status": self.patch}


def first_status(job: JobView, config: Config, now: datetime) -> FirstStatus:
    """A new job's first status: Pending and queued, or Failed naming its spec's fault."""
    before = parse_status(job.status)
    after = accept(job, checked(job, config), now)
    return FirstStatus(job.namespace, job.name, job.uid, job.resource_version,
                       status_patch(job.status, after), transition_events(before, after))


def event_body(first: FirstStatus, event: EmitEvent, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about the job, as kopf posts them."""
    stamp = now.isoformat().replace("+00:00", "Z")
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{first.name}.", "namespace": first.namespace},
            "involvedObject": {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND,
                               "name": first.name, "namespace": first.namespace,
                               "uid": first.uid},
            "reason": event.reason, "message": event.message[:1024], "type": event.type,
            "source": {"component": "modelpress"}, "reportingComponent": "modelpress",
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}


class KubeSession:
    """The API server's address and credentials (`settings`, a kubernetes client
    Configuration), for aiohttp. The token is read for each request, so a rotated
    service-account token is picked up."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        self.host = str(settings.host).rstrip("/")

    def headers(self) -> dict[str, str]:
        token = self._settings.get_api_key_with_prefix("authorization")
        return {"Authorization": token} if token else {}

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.host.startswith("https://"):
            return False
        settings = self._settings
        context = ssl.create_default_context(cafile=settings.ssl_ca_cert)
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file)
        if not settings.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


class Intake:
    """Watches the jobs of `namespace` (None: every namespace) and writes each new one's
    first status, up to CONCURRENT_WRITES at once."""

    def __init__(self, kube: KubeSession, config: Config, namespace: str | None,
                 may_act: Callable[[], bool] | None = None) -> None:
        self._kube = kube
        self._config = config
        self._namespace = namespace
        self._may_act = may_act  # None: standalone, always
        self._acting = may_act is None
        self._writes = asyncio.Semaphore(CONCURRENT_WRITES)
        self._events: asyncio.Queue[FirstStatus] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_new = 0.0  # monotonic time of the last new job seen
        self._watching: asyncio.Task[None] | None = None
        # Where the watch resumes after it ends (None: from a fresh listing of every job).
        self._version: str | None = None
        self._session: Any = None  # an aiohttp.ClientSession, while run() runs

    async def run(self, ready: Callable[[], None]) -> None:
        """Until cancelled; `ready` is called once the first watch is open."""
        import aiohttp

        connector = aiohttp.TCPConnector(ssl=self._kube.ssl_context(),
                                         limit=CONCURRENT_WRITES + EVENT_POSTERS + 2)
        async with aiohttp.ClientSession(self._kube.host, connector=connector) as session:
            self._session = session
            for _ in range(EVENT_POSTERS):
                self._spawn(self._post_events())
            if self._may_act is not None:
                self._acting = await asyncio.to_thread(self._may_act)
                self._spawn(self._follow_peering())
            while True:
                self._watching = asyncio.create_task(self._watch(ready))
                try:
                    await self._watching
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise
                    # else: the watch was restarted (see _follow_peering)
                except Exception as error:
                    logger.warning("The intake's watch ended (%s: %s); watching again",
                                   type(error).__name__, error)
                    self._version = None  # what happened meanwhile is listed again
                    await asyncio.sleep(RECONNECT_SECONDS)

    def _jobs_path(self, namespace: str | None) -> str:
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"/apis/{API_GROUP}/{API_VERSION}{where}/{PLURAL}"

    async def _watch(self, ready: Callable[[], None]) -> None:
        """One watch: from where the last one ended, or from a listing of every job (as
        ADDED events) at the start, after an expired version, and when this replica may
        act again, so that no job is missed."""
        import aiohttp

        params = {"watch": "true", "timeoutSeconds": str(WATCH_TIMEOUT_SECONDS),
                  **({"resourceVersion": self._version} if self._version else {})}
        async with self._session.get(self._jobs_path(self._namespace), params=params,
                                     headers=self._kube.headers(),
                                     timeout=aiohttp.ClientTimeout(total=None)) as stream:
            stream.raise_for_status()
            ready()
            async for line in stream.content:
                event = json.loads(line)
                if event.get("type") == "ERROR":  # e.g. 410 Gone: the version expired
                    self._version = None
                    raise RuntimeError(f"the watch answered {event.get('object')}")
                body = event.get("object") or {}
                self._version = body.get("metadata", {}).get("resourceVersion") \
                    or self._version
                if self._acting and brand_new(str(event.get("type")), body):
                    self._last_new = time.monotonic()
                    self._take(body)
                    # The stream's lines come without a pause while they are buffered:
                    # without this, in a burst the writes just started waited for the
                    # stream to go quiet (every first status after the last job applied).
                    await asyncio.sleep(0)

    def _take(self, body: Mapping[str, Any]) -> None:
        """Write the first status of the new job `body`. A job that cannot be judged is
        logged and left (its next event tries again), never allowed to stop the watch."""
        try:
            first = first_status(view_of(body), self._config, utc_now())
        except Exception:
            metadata = body.get("metadata", {})
            logger.exception("The first status of %s/%s could not be made",
                             metadata.get("namespace"), metadata.get("name"))
            return
        self._spawn(self._write(first))

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, first: FirstStatus) -> None:
        """Write the first status; a conflict (the job changed: its newer version is
        handled from its own event) or a job gone ends it, any other failure is retried."""
        path = f"{self._jobs_path(first.namespace)}/{first.name}/status"
        for delay in (0.0, *RETRY_SECONDS):
            await asyncio.sleep(delay)
            try:
                async with self._writes, self._session.patch(
                        path, data=json.dumps(first.body()),
                        headers={**self._kube.headers(),
                                 "Content-Type": "application/merge-patch+json"}) as answer:
                    text = await answer.text()
            except Exception as error:
                status, why = None, f"{type(error).__name__}: {error}"
            else:
                status, why = answer.status, f"{answer.status}: {text[:300]}"
            if status == 200:
                await self._events.put(first)
                return
            if status in (GONE, CONFLICT):
                return
            logger.warning("The first status of %s/%s was not written (%s); trying again",
                           first.namespace, first.name, why)
        logger.error("The first status of %s/%s was not written; it is written when the "
                     "job next changes or the operator restarts", first.namespace, first.name)

    async def _post_events(self) -> None:
        while True:
            first = await self._events.get()
            await self._quiet()
            for event in first.events:
                try:
                    await self._post_event(first, event)
                except Exception as error:  # an Event is worth a log line, not a retry
                    logger.warning("An Event of %s/%s was not posted: %s: %s",
                                   first.namespace, first.name, type(error).__name__, error)

    async def _quiet(self) -> None:
        """Until no new job came for QUIET_SECONDS (at most MAX_EVENT_DELAY_SECONDS): the
        API server's time goes to new jobs' statuses first."""
        deadline = time.monotonic() + MAX_EVENT_DELAY_SECONDS
        while (now := time.monotonic()) < deadline and now - self._last_new < QUIET_SECONDS:
            await asyncio.sleep(QUIET_SECONDS)

    async def _post_event(self, first: FirstStatus, event: EmitEvent) -> None:
        async with self._session.post(f"/api/v1/namespaces/{first.namespace}/events",
                                      json=event_body(first, event, utc_now()),
                                      headers=self._kube.headers()) as answer:
            await answer.read()
            answer.raise_for_status()

    async def _follow_peering(self) -> None:
        """Whether this replica may act, read every PEERING_SECONDS; when it may again,
        the watch starts afresh (listing every job)."""
        assert self._may_act is not None
        while True:
            await asyncio.sleep(PEERING_SECONDS)
            acting = await asyncio.to_thread(self._may_act)
            resumed = acting and not self._acting
            self._acting = acting
            if resumed and self._watching is not None:
                self._version = None
                self._watching.cancel()


def start_intake(config: Config, namespace: str | None,
                 may_act: Callable[[], Callable[[], bool]] | None = None) -> int:
    """Fork the intake and return its pid once its watch is open. Call it before any
    thread starts (a fork copies only the calling thread), with logging set up (the
    intake logs as this process does). `may_act` makes, in the intake, the peering gate
    it asks (None: standalone). When the intake exits, this process is sent SIGTERM, so
    that the operator stops and is restarted whole."""
    ready_read, ready_write = os.pipe()
    alive_read, alive_write = os.pipe()
    # Everything made so far (modules, classes, settings: kept for the process's life) is
    # left out of the cyclic collector's passes, in both processes. Else a full pass in
    # the intake walks the whole heap it inherited, ~0.15 s in a burst of new jobs, and
    # writes to every object's header, unsharing the pages the fork shares.
    gc.freeze()
    pid = os.fork()
    if pid == 0:
        os.close(ready_read)
        os.close(alive_write)
        _serve_forked(config, namespace, may_act, ready_write, alive_read)
    os.close(ready_write)
    os.close(alive_read)
    try:
        _await_ready(pid, ready_read)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(ready_read)
    threading.Thread(target=_stop_when_gone, args=(pid, alive_write), daemon=True,
                     name="modelpress-intake-waiter").start()
    logger.info("The intake (pid %d) gives new jobs their first status", pid)
    return pid


def _await_ready(pid: int, ready_read: int) -> None:
    readable, _, _ = select.select([ready_read], [], [], READY_TIMEOUT_SECONDS)
    if not readable or not os.read(ready_read, 1):
        raise RuntimeError(f"the intake (pid {pid}) did not start watching within "
                           f"{READY_TIMEOUT_SECONDS:.0f} s")


def _stop_when_gone(pid: int, alive_write: int) -> None:
    """Reap the intake; its end stops the operator (kopf stops on SIGTERM)."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    logger.error("The intake (pid %d) exited (%s); stopping the operator", pid, how)
    os.close(alive_write)
    os.kill(os.getpid(), signal.SIGTERM)


def _serve_forked(config: Config, namespace: str | None,
                  may_act: Callable[[], Callable[[], bool]] | None, ready_write: int,
                  alive_read: int) -> None:
    """The intake process's life: never returns."""
    code = 0
    try:
        gate = may_act() if may_act is not None else None
        intake = Intake(KubeSession(kube_configuration()), config, namespace, gate)
        _run_until_orphaned(intake, ready_write, alive_read)
    except BaseException as error:  # the operator's process logs the exit too
        logger.exception("The intake stopped: %s: %s", type(error).__name__, error)
        code = 1
    finally:
        os._exit(code)


def _run_until_orphaned(intake: Intake, ready_write: int, alive_read: int) -> None:
    """Run the intake until the operator's process ends (its end of the pipe closes)."""
    import uvloop

    def ready() -> None:
        nonlocal ready_write
        if ready_write >= 0:
            os.write(ready_write, b"1")
            os.close(ready_write)
            ready_write = -1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        work = asyncio.create_task(intake.run(ready))
        orphaned = loop.create_future()

        def parent_gone() -> None:
            loop.remove_reader(alive_read)
            orphaned.set_result(None)

        loop.add_reader(alive_read, parent_gone)
        await asyncio.wait([work, orphaned], return_when=asyncio.FIRST_COMPLETED)
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        if not orphaned.done():
            work.result()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
