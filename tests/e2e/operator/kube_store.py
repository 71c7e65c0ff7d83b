"""The stand-in API server's storage: objects, resourceVersions, history, watchers,
selectors, and merge / JSON patches. Used from one event loop (not thread-safe)."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

Json = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    printer_columns: tuple[Json, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


CORE_KINDS = (
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",)),
    Kind("", "v1", "events", "Event", namespaced=True, short_names=("ev",)),
    Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
         namespaced=False, short_names=("crd",)),
)


def kind_of_crd(crd: Json) -> Kind:
    spec, version = crd["spec"], crd["spec"]["versions"][0]
    return Kind(spec["group"], version["name"], spec["names"]["plural"], spec["names"]["kind"],
                namespaced=spec["scope"] == "Namespaced",
                short_names=tuple(spec["names"].get("shortNames", [])),
                status_subresource="status" in version.get("subresources", {}),
                printer_columns=tuple(version.get("additionalPrinterColumns", [])))


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def kserve_canary_status(service: Json, latest_percent: int,
                         rolled_out_revision: int = 1) -> Json:
    """What KServe's controller reports for a Knative (Serverless) InferenceService whose
    second revision is ready with `latest_percent` of the traffic, revision
    `rolled_out_revision` being the latest rolled out: the status of its current generation."""
    name = service["metadata"]["name"]
    previous, latest = f"{name}-predictor-00001", f"{name}-predictor-00002"
    return {"observedGeneration": service["metadata"]["generation"],
            "components": {"predictor": {
                "latestCreatedRevision": latest, "latestReadyRevision": latest,
                "latestRolledoutRevision": f"{name}-predictor-{rolled_out_revision:05d}",
                "traffic": [{"revisionName": previous, "percent": 100 - latest_percent},
                            {"revisionName": latest, "percent": latest_percent,
                             "latestRevision": True}]}}}


def json_patch(target: Json, operations: list[Json]) -> Json:
    """RFC 6902 add, remove, replace and test (what kopf sends for finalizers)."""
    document = copy.deepcopy(target)
    for operation in operations:
        *parents, last = [part.replace("~1", "/").replace("~0", "~")
                          for part in operation["path"].split("/")[1:]]
        holder: Any = document
        for part in parents:
            holder = holder[int(part)] if isinstance(holder, list) else holder[part]
        op = operation["op"]
        if op == "test":
            found = holder[int(last)] if isinstance(holder, list) else holder.get(last)
            if found != operation["value"]:
                raise web.HTTPUnprocessableEntity(
                    text=status_document(422, "Invalid", f"test failed at {operation['path']}"),
                    content_type="application/json")
        elif op == "remove":
            del holder[int(last) if isinstance(holder, list) else last]
        elif isinstance(holder, list):
            index = len(holder) if last == "-" else int(last)
            if op == "add":
                holder.insert(index, operation["value"])
            else:
                holder[index] = operation["value"]
        else:
            holder[last] = operation["value"]
    return document


def lookup(document: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    return document


def _selector_matches(text: str | None, get: Callable[[str], Any]) -> bool:
    """Equality selectors (`a=b`, `a==b`, `a!=b`, bare `a` for existence), comma-joined."""
    for term in filter(None, (text or "").split(",")):
        if "!=" in term:
            key, wanted = term.split("!=", 1)
            if str(get(key.strip()) or "") == wanted.strip():
                return False
        elif "=" in term:
            key, wanted = term.replace("==", "=").split("=", 1)
            if str(get(key.strip()) or "") != wanted.strip():
                return False
        elif get(term.strip()) is None:
            return False
    return True


def age(created: str | None) -> str:
    if not created:
        return "<unknown>"
    seconds = int((datetime.now(UTC) - datetime.fromisoformat(created)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass
class Watcher:
    kind: Kind
    namespace: str | None
    query: dict[str, str]
    queue: asyncio.Queue[Json] = field(default_factory=asyncio.Queue)

    def wants(self, obj: Json) -> bool:
        meta = obj["metadata"]
        if self.namespace and meta.get("namespace") != self.namespace:
            return False
        return _selector_matches(self.query.get("labelSelector"),
                                 lambda key: meta.get("labels", {}).get(key)) and \
            _selector_matches(self.query.get("fieldSelector"), lambda key: lookup(obj, key))


class Store:
    """Objects by (kind plural, namespace, name), a global resourceVersion and history."""

    def __init__(self, kinds: list[Kind]) -> None:
        self.kinds = kinds
        self.objects: dict[tuple[str, str, str], Json] = {}
        self.history: list[tuple[int, str, Kind, Json]] = []
        self.watchers: list[Watcher] = []
        self._versions = itertools.count(1)
        self.resource_version = 0

    def _bump(self, obj: Json) -> None:
        self.resource_version = next(self._versions)
        obj["metadata"]["resourceVersion"] = str(self.resource_version)

    def notify(self, type_: str, kind: Kind, obj: Json) -> None:
        snapshot = copy.deepcopy(obj)
        self.history.append((self.resource_version, type_, kind, snapshot))
        for watcher in self.watchers:
            if watcher.kind == kind and watcher.wants(snapshot):
                watcher.queue.put_nowait({"type": type_, "object": snapshot})

    def listed(self, kind: Kind, namespace: str | None, query: dict[str, str]) -> list[Json]:
        probe = Watcher(kind, namespace, query)
        return [copy.deepcopy(obj) for (plural, _, _), obj in sorted(self.objects.items())
                if plural == kind.plural and probe.wants(obj)]

    def create(self, kind: Kind, namespace: str | None, body: Json) -> Json:
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if kind.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        key = (kind.plural, meta.get("namespace", ""), meta["name"])
        if key in self.objects:
            raise web.HTTPConflict(text=status_document(409, "AlreadyExists",
                                                f'{kind.plural} "{meta["name"]}" already exists'),
                                   content_type="application/json")
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_text(), generation=1)
        body.update(apiVersion=kind.api_version, kind=kind.kind)
        if kind.status_subresource:
            body.pop("status", None)
        self._bump(body)
        self.objects[key] = body
        self.notify("ADDED", kind, body)
        return copy.deepcopy(body)

    def get(self, kind: Kind, namespace: str | None, name: str) -> Json:
        found = self.objects.get((kind.plural, namespace or "", name))
        if found is None:
            raise web.HTTPNotFound(text=status_document(404, "NotFound",
                                                f'{kind.plural} "{name}" not found'),
                                   content_type="application/json")
        return found

    def update(self, kind: Kind, namespace: str | None, name: str, new: Json,
               subresource: str | None) -> Json:
        current = self.get(kind, namespace, name)
        if subresource == "status":
            updated = {**current, "status": new.get("status")}
        else:
            updated = {**new, "apiVersion": kind.api_version, "kind": kind.kind}
            if kind.status_subresource:
                updated["status"] = current.get("status")
            kept = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "namespace",
                    "name")
            updated["metadata"] = {**new.get("metadata", {}),
                                   **{k: v for k, v in current["metadata"].items() if k in kept}}
            if updated.get("spec") != current.get("spec"):
                updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
        updated = {key: value for key, value in updated.items() if value is not None}
        self._bump(updated)
        key = (kind.plural, namespace or "", name)
        if updated["metadata"].get("deletionTimestamp") and \
                not updated["metadata"].get("finalizers"):
            del self.objects[key]
            self.notify("DELETED", kind, updated)
        else:
            self.objects[key] = updated
            self.notify("MODIFIED", kind, updated)
        return copy.deepcopy(updated)

    def delete(self, kind: Kind, namespace: str | None, name: str) -> Json:
        current = self.get(kind, namespace, name)
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                current["metadata"]["deletionTimestamp"] = now_text()
                current["metadata"]["deletionGracePeriodSeconds"] = 0
                self._bump(current)
                self.notify("MODIFIED", kind, current)
            return copy.deepcopy(current)
        del self.objects[(kind.plural, namespace or "", name)]
        self._bump(current)
        self.notify("DELETED", kind, current)
        return copy.deepcopy(current)


def status_document(code: int, reason: str, message: str) -> str:
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {},
                       "status": "Failure", "message": message, "reason": reason,
                       "code": code})
