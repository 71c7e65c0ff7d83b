"""The intake process's watch and writes against the API stand-in: each new job gets its
first status and then its Event, a stale first status is refused (the edit's own event is
answered instead), and a paused replica writes nothing until it may act."""

from __future__ import annotations

import asyncio
import copy
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_standin import KubeStandIn
from kubernetes import client

from modelpress.api import API_GROUP, API_VERSION
from modelpress.crd import PLURAL
from modelpress.operator import intake as intake_module
from modelpress.operator.controller import utc_now, view_of
from modelpress.operator.intake import Intake, KubeSession, first_status
from modelpress.operator.reconcile import Config

ROOT = Path(__file__).resolve().parents[3]
CRD = ROOT / "charts" / "modelpress" / "crds" / "compressionjobs.yaml"
sys.path.insert(0, str(ROOT / "tests" / "unit" / "operator"))
from opfixtures import spec  # noqa: E402

CONFIG = Config(default_output="s3://modelpress/{namespace}/{name}/")
WAIT_S = 10.0


@pytest.fixture
def api() -> Iterator[KubeStandIn]:
    standin = KubeStandIn([yaml.safe_load(CRD.read_text())]).start()
    yield standin
    standin.stop()


def _settings(api: KubeStandIn) -> client.Configuration:
    settings = client.Configuration()
    settings.host = api.url
    return settings


def _objects(api: KubeStandIn) -> Any:
    return client.CustomObjectsApi(client.ApiClient(_settings(api)))


def _create(api: KubeStandIn, name: str, job_spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "CompressionJob",
            "metadata": {"name": name, "namespace": "default"}, "spec": job_spec}
    return dict(_objects(api).create_namespaced_custom_object(
        API_GROUP, API_VERSION, "default", PLURAL, copy.deepcopy(body)))


def _status(api: KubeStandIn, name: str) -> dict[str, Any]:
    body = _objects(api).get_namespaced_custom_object(API_GROUP, API_VERSION, "default",
                                                      PLURAL, name)
    return dict(body.get("status") or {})


def _events(api: KubeStandIn) -> list[tuple[str, str, str]]:
    listed = client.CoreV1Api(client.ApiClient(_settings(api))).list_namespaced_event("default")
    return sorted((e.involved_object.name, e.type, e.reason) for e in listed.items)


async def _until(what: str, condition: Callable[[], Any]) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await asyncio.to_thread(condition):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _running(intake: Intake, test: Callable[[], Awaitable[None]]) -> None:
    """Run `test` while `intake` runs (its watch open)."""
    async def both() -> None:
        opened = asyncio.Event()
        work = asyncio.create_task(intake.run(opened.set))
        try:
            await asyncio.wait_for(opened.wait(), WAIT_S)
            await test()
        finally:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)

    asyncio.run(both())


def _spec(sparsity: float = 0.5) -> dict[str, Any]:
    value = spec()
    value["steps"][0]["prune"]["sparsity"] = sparsity
    value.pop("output", None)
    value["promotion"].pop("target", None)
    return value


def test_new_jobs_get_their_first_status_then_their_event(
        api: KubeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_module, "QUIET_SECONDS", 0.05)
    _create(api, "before", _spec())  # already there when the watch opens: listed
    intake = Intake(KubeSession(_settings(api)), CONFIG, "default")

    async def test() -> None:
        _create(api, "valid", _spec())
        _create(api, "invalid", _spec(sparsity=1.5))
        await _until("three first statuses",
                     lambda: all(_status(api, n).get("phase") for n in
                                 ("before", "valid", "invalid")))
        await _until("three Events", lambda: len(_events(api)) == 3)

    _running(intake, test)
    assert _status(api, "before")["phase"] == _status(api, "valid")["phase"] == "Pending"
    failed = _status(api, "invalid")
    assert failed["phase"] == "Failed" and "sparsity" in failed["conditions"][0]["message"]
    assert _events(api) == [("before", "Normal", "Queued"), ("invalid", "Warning", "InvalidSpec"),
                            ("valid", "Normal", "Queued")]


def test_writes_start_while_the_watch_stream_is_still_buffered(
        api: KubeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs listed at once come in one buffered chunk of the stream: each job's write
    starts before the next job is taken, not once the stream goes quiet."""
    names = [f"listed-{index}" for index in range(10)]
    for name in names:
        _create(api, name, _spec())
    order: list[tuple[str, str]] = []
    take, write = Intake._take, Intake._write

    def taking(self: Intake, body: Any) -> None:
        order.append(("take", body["metadata"]["name"]))
        take(self, body)

    async def writing(self: Intake, first: Any) -> None:
        order.append(("write", first.name))
        await write(self, first)

    monkeypatch.setattr(Intake, "_take", taking)
    monkeypatch.setattr(Intake, "_write", writing)
    intake = Intake(KubeSession(_settings(api)), CONFIG, "default")

    async def test() -> None:
        await _until("every first status",
                     lambda: all(_status(api, name).get("phase") for name in names))

    _running(intake, test)
    listed = sorted(names, key=[name for step, name in order if step == "take"].index)
    assert order == [(step, name) for name in listed for step in ("take", "write")]


def test_a_stale_first_status_is_refused_and_the_edit_answered(
        api: KubeStandIn) -> None:
    stale = view_of(_create(api, "edited", _spec()))
    _objects(api).patch_namespaced_custom_object(  # now invalid, at a new version
        API_GROUP, API_VERSION, "default", PLURAL, "edited", {"spec": _spec(sparsity=1.5)})
    intake = Intake(KubeSession(_settings(api)), CONFIG, "default")

    async def test() -> None:
        await _until("the edit's first status", lambda: _status(api, "edited").get("phase"))
        before = _status(api, "edited")
        await intake._write(first_status(stale, CONFIG, utc_now()))  # the version before
        assert _status(api, "edited") == before

    _running(intake, test)
    assert _status(api, "edited")["phase"] == "Failed"  # the edit's spec, not the stale one


def test_a_paused_replica_writes_nothing_until_it_may_act(
        api: KubeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_module, "PEERING_SECONDS", 0.05)
    leading = [False]
    intake = Intake(KubeSession(_settings(api)), CONFIG, "default", lambda: leading[0])

    async def test() -> None:
        _create(api, "waits", _spec())
        await asyncio.sleep(0.5)
        assert _status(api, "waits") == {}
        leading[0] = True  # the watch starts afresh and lists it
        await _until("its first status", lambda: _status(api, "waits").get("phase"))

    _running(intake, test)
    assert _status(api, "waits")["phase"] == "Pending"


def test_a_watch_that_ends_is_resumed(api: KubeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake_module, "WATCH_TIMEOUT_SECONDS", 1)
    intake = Intake(KubeSession(_settings(api)), CONFIG, "default")

    async def test() -> None:
        _create(api, "early", _spec())
        await _until("the first job's status", lambda: _status(api, "early").get("phase"))
        await asyncio.sleep(2.5)  # the watch ended and was resumed twice
        _create(api, "late", _spec())
        await _until("the later job's status", lambda: _status(api, "late").get("phase"))

    _running(intake, test)
