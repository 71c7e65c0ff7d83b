"""A local Kubernetes API stand-in: just what kopf and kubectl use, on 127.0.0.1.

It serves discovery (legacy, non-aggregated), a minimal /openapi/v3, namespaces, events
and one custom resource from its CRD: list (with `kind`, a list resourceVersion, label
and field selectors, server-side Tables for the printer columns), get, create (uid,
resourceVersion, generation, creationTimestamp, 201), PUT, merge and JSON PATCH, a separate status
subresource, DELETE with finalizers, and watches from a resourceVersion (JSON lines, with
the initial BOOKMARK a `sendInitialEvents` watch waits for). There is no admission,
schema validation, auth, or garbage collection. More custom resources can be added while it
runs (`add_crds`), e.g. kopf's peering ones for an operator with more than one replica.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web
from kube_store import (
    CORE_KINDS,
    Json,
    Kind,
    Store,
    Watcher,
    age,
    json_patch,
    kind_of_crd,
    lookup,
    merge_patch,
    status_document,
)

WATCH_KEEPALIVE_SECONDS = 5.0


class KubeStandIn:
    """The API server, serving from its own event loop in a thread."""

    def __init__(self, crds: list[Json]) -> None:
        self.crds = crds
        self.store = Store([*CORE_KINDS, *(kind_of_crd(crd) for crd in crds)])
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> KubeStandIn:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        self.call(lambda: [self.store.create(self._kind("customresourcedefinitions"), None,
                                             copy.deepcopy(crd)) for crd in self.crds])
        self.call(lambda: self.store.create(self._kind("namespaces"), None,
                                            {"metadata": {"name": "default"}}))
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for watcher in list(self.store.watchers):
            self._loop.call_soon_threadsafe(watcher.queue.put_nowait, {"type": "STOP"})
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def call(self, function: Callable[[], Any]) -> Any:
        """Run `function` on the server's loop (the store is not thread-safe)."""
        async def run() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def add_crds(self, crds: list[Json]) -> None:
        """Serve more custom resources (e.g. kopf's peering ones) from now on: a client's
        discovery finds them, as after `kubectl apply` of their CRDs."""
        def register() -> None:
            for crd in crds:
                self.store.kinds.append(kind_of_crd(crd))
                self.store.create(self._kind("customresourcedefinitions"), None,
                                  copy.deepcopy(crd))

        self.crds = [*self.crds, *crds]
        self.call(register)

    def create(self, plural: str, namespace: str | None, body: Json) -> Json:
        """Create an object as a client's POST would."""
        return self.call(lambda: self.store.create(self._kind(plural), namespace,
                                                   copy.deepcopy(body)))

    def replace(self, plural: str, namespace: str | None, body: Json) -> Json:
        """Replace an object whole as a PUT would (status included for a kind without a
        status subresource): how a test plays another controller, e.g. KServe's."""
        name = body["metadata"]["name"]
        return self.call(lambda: self.store.update(self._kind(plural), namespace, name,
                                                   copy.deepcopy(body), None))

    def objects(self, plural: str, namespace: str | None = None) -> list[Json]:
        return self.call(lambda: self.store.listed(self._kind(plural), namespace, {}))

    # ------------------------------------------------------------------ routing

    def _kind(self, plural: str, group: str | None = None) -> Kind:
        for kind in self.store.kinds:
            if kind.plural == plural and (group is None or kind.group == group):
                return kind
        raise web.HTTPNotFound(text=status_document(404, "NotFound", f"no resource {plural}"),
                               content_type="application/json")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        parts = [part for part in request.path.split("/") if part]
        discovery = self._discovery(parts)
        if discovery is not None:
            return web.json_response(discovery)
        if parts[:1] == ["api"] and len(parts) > 2:
            return await self._resource(request, "", parts[2:])
        if parts[:1] == ["apis"] and len(parts) > 3:
            return await self._resource(request, parts[1], parts[3:])
        raise web.HTTPNotFound(text=status_document(404, "NotFound", f"no route {request.path}"),
                               content_type="application/json")

    def _discovery(self, parts: list[str]) -> Json | None:
        groups = sorted({kind.group for kind in self.store.kinds if kind.group})
        if parts == ["version"]:
            return {"major": "1", "minor": "37", "gitVersion": "v1.37.0-standin",
                    "platform": "linux/amd64"}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g)
                                                                          for g in groups]}
        if parts == ["api", "v1"]:
            return self._resource_list("", "v1")
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])}
        if len(parts) == 3 and parts[0] == "apis" and parts[1] in groups:
            return self._resource_list(parts[1], parts[2])
        if parts[:2] == ["openapi", "v3"]:
            return self._openapi(parts[2:])
        return None

    def _group(self, group: str) -> Json:
        version = next(k.version for k in self.store.kinds if k.group == group)
        entry = {"groupVersion": f"{group}/{version}", "version": version}
        return {"name": group, "versions": [entry], "preferredVersion": entry}

    def _resource_list(self, group: str, version: str) -> Json:
        resources: list[Json] = []
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        for kind in self.store.kinds:
            if (kind.group, kind.version) != (group, version):
                continue
            resources.append({"name": kind.plural, "singularName": kind.kind.lower(),
                              "namespaced": kind.namespaced, "kind": kind.kind, "verbs": verbs,
                              "shortNames": list(kind.short_names)})
            if kind.status_subresource:
                resources.append({"name": f"{kind.plural}/status", "singularName": "",
                                  "namespaced": kind.namespaced, "kind": kind.kind,
                                  "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources}

    def _openapi(self, rest: list[str]) -> Json:
        """Enough for kubectl to see that create and patch take `fieldValidation`, so it
        leaves validation to the server (which this stand-in does not do)."""
        custom = [kind for kind in self.store.kinds if kind not in CORE_KINDS]
        if not rest:
            return {"paths": {f"apis/{k.group}/{k.version}": {
                "serverRelativeURL": f"/openapi/v3/apis/{k.group}/{k.version}?hash=1"}
                for k in custom}}
        paths: Json = {}
        for kind in custom:
            gvk = {"group": kind.group, "version": kind.version, "kind": kind.kind}
            collection = f"/apis/{kind.group}/{kind.version}/namespaces/{{namespace}}/" \
                         f"{kind.plural}"
            for path, verb in ((collection, "post"), (collection + "/{name}", "patch")):
                paths[path] = {verb: {
                    "x-kubernetes-action": verb, "x-kubernetes-group-version-kind": gvk,
                    "parameters": [{"name": "fieldValidation", "in": "query",
                                    "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "OK"}}}}
        return {"openapi": "3.0.0", "info": {"title": "stand-in", "version": "v1"},
                "paths": paths, "components": {"schemas": {}}}

    async def _resource(self, request: web.Request, group: str,
                        parts: list[str]) -> web.StreamResponse:
        namespace: str | None = None
        if len(parts) >= 3 and parts[0] == "namespaces":
            namespace, parts = parts[1], parts[2:]
        kind = self._kind(parts[0], group)
        name = parts[1] if len(parts) > 1 else None
        subresource = parts[2] if len(parts) > 2 else None
        query = dict(request.query)
        if request.method == "GET" and name is None:
            # As the API server parses it (Go's strconv.ParseBool): the kubernetes client's
            # Watch sends Python's "True".
            if query.get("watch") in ("1", "t", "T", "true", "TRUE", "True"):
                return await self._watch(request, kind, namespace, query)
            return self._answer(request, kind, self._list(kind, namespace, query), query)
        if request.method == "POST":
            return web.json_response(self.store.create(kind, namespace, await request.json()),
                                     status=201)
        if name is None:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        if request.method == "GET":
            return self._answer(request, kind, copy.deepcopy(
                self.store.get(kind, namespace, name)), query, single=True)
        if request.method == "PUT":
            return web.json_response(self.store.update(kind, namespace, name,
                                                       await request.json(), subresource))
        if request.method == "PATCH":
            current = copy.deepcopy(self.store.get(kind, namespace, name))
            body = await request.json()
            _check_precondition(current, body)
            patched = json_patch(current, body) if isinstance(body, list) \
                else merge_patch(current, body)
            return web.json_response(self.store.update(kind, namespace, name, patched,
                                                       subresource))
        if request.method == "DELETE":
            return web.json_response(self.store.delete(kind, namespace, name))
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST", "PUT", "PATCH", "DELETE"])

    def _list(self, kind: Kind, namespace: str | None, query: dict[str, str]) -> Json:
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": self.store.listed(kind, namespace, query)}

    def _answer(self, request: web.Request, kind: Kind, document: Json,
                query: dict[str, str], single: bool = False) -> web.Response:
        if "as=Table" not in request.headers.get("Accept", ""):
            return web.json_response(document)
        items = [document] if single else document["items"]
        return web.json_response(self._table(kind, items, query.get("includeObject")))

    def _table(self, kind: Kind, items: list[Json], include: str | None) -> Json:
        columns = [{"name": "Name", "type": "string", "format": "name", "priority": 0,
                    "description": "Name"}]
        columns += [{"name": c["name"], "type": "string" if c["type"] == "date" else c["type"],
                     "format": "", "priority": c.get("priority", 0),
                     "description": c.get("description", "")} for c in kind.printer_columns]
        if not kind.printer_columns:
            columns.append({"name": "Age", "type": "string", "format": "", "priority": 0,
                            "description": "Age"})
        rows = []
        for item in items:
            cells: list[Any] = [item["metadata"]["name"]]
            for column in kind.printer_columns or ({"jsonPath": ".metadata.creationTimestamp",
                                                    "type": "date"},):
                value = lookup(item, column["jsonPath"])
                cells.append(age(value) if column["type"] == "date" else value)
            row_object = item if include == "Object" else {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": item["metadata"]}
            rows.append({"cells": cells, "object": None if include == "None" else row_object})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "columnDefinitions": columns, "rows": rows}

    async def _watch(self, request: web.Request, kind: Kind, namespace: str | None,
                     query: dict[str, str]) -> web.StreamResponse:
        watcher = Watcher(kind, namespace, query)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        backlog = self._backlog(watcher, query)
        self.store.watchers.append(watcher)
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    event = await asyncio.wait_for(watcher.queue.get(),
                                                   min(left, WATCH_KEEPALIVE_SECONDS))
                except TimeoutError:
                    continue
                events = [event, *_queued(watcher.queue)]
                stop = any(queued["type"] == "STOP" for queued in events)
                lines = [json.dumps(queued).encode() + b"\n" for queued in events
                         if queued["type"] != "STOP"]
                if lines:
                    await response.write(b"".join(lines))
                if stop:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away
        finally:
            self.store.watchers.remove(watcher)
        return response

    def _backlog(self, watcher: Watcher, query: dict[str, str]) -> list[Json]:
        """Events owed before live ones: all objects (no or zero resourceVersion, or
        sendInitialEvents) or the history after the given resourceVersion."""
        version = query.get("resourceVersion") or "0"
        if query.get("sendInitialEvents") == "true" or version == "0":
            events = [{"type": "ADDED", "object": obj} for obj in
                      self.store.listed(watcher.kind, watcher.namespace, query)]
            if query.get("sendInitialEvents") == "true":
                events.append({"type": "BOOKMARK", "object": {
                    "kind": watcher.kind.kind, "apiVersion": watcher.kind.api_version,
                    "metadata": {"resourceVersion": str(self.store.resource_version),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}})
            return events
        return [{"type": type_, "object": obj} for rv, type_, kind, obj in self.store.history
                if rv > int(version) and kind == watcher.kind and watcher.wants(obj)]


def _check_precondition(current: Json, patch: Any) -> None:
    """A merge patch that names a resourceVersion applies only to that version (409
    Conflict otherwise), as the API server has it."""
    wanted = (patch.get("metadata") or {}).get("resourceVersion") \
        if isinstance(patch, dict) else None
    if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
        raise web.HTTPConflict(text=status_document(
            409, "Conflict", "the object has been modified; please apply your changes to "
            "the latest version and try again"), content_type="application/json")


def _queued(queue: asyncio.Queue[Json]) -> list[Json]:
    """Every event already waiting: a watch writes them in one go, as the API server's
    buffered watch channel does, so that under a burst of writes the stream keeps up with
    the store instead of taking a turn of the event loop per event."""
    events = []
    while not queue.empty():
        events.append(queue.get_nowait())
    return events
