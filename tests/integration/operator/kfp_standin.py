"""A stand-in for the Kubeflow Pipelines v2beta1 REST API, on 127.0.0.1.

It serves what the kfp backend uses (healthz, experiments, runs create/get/list/terminate)
with KFP's snake_case JSON, keeps runs in memory, lets a test move a run through its
states, injects faults (the next N requests answer with a status code, or stall), and can
demand a bearer token.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

PREFIX = "/apis/v2beta1"


@dataclass
class Fault:
    remaining: int
    status: int = 503
    stall_seconds: float = 0.0
    path_prefix: str = ""
    after_serving: bool = False  # the request takes effect, but its answer is lost
    method: str = ""  # any method when empty


@dataclass
class KfpState:
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # When set, a request without "Authorization: Bearer <token>" is answered 401, as
    # multi-user KFP does; every Authorization header received is kept.
    token: str | None = None
    authorizations: list[str | None] = field(default_factory=list)

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.remaining > 0 and path.startswith(PREFIX + fault.path_prefix) \
                        and fault.method in ("", method):
                    fault.remaining -= 1
                    return fault
        return None


class KfpStandIn:
    def __init__(self) -> None:
        self.state = KfpState()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> KfpStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail(self, times: int, status: int = 503, path_prefix: str = "") -> None:
        self.state.faults.append(Fault(times, status=status, path_prefix=path_prefix))

    def lose_answers(self, times: int, method: str, path_prefix: str, status: int = 504) -> None:
        """The next such requests are served, then answered with `status` (a gateway
        timeout): what happens when an answer is lost on its way back."""
        self.state.faults.append(Fault(times, status=status, path_prefix=path_prefix,
                                       after_serving=True, method=method))

    def stall(self, times: int, seconds: float, path_prefix: str = "") -> None:
        self.state.faults.append(Fault(times, status=200, stall_seconds=seconds,
                                       path_prefix=path_prefix))

    def set_run(self, run_id: str, state: str, tasks: list[dict[str, Any]] | None = None,
                error: str | None = None) -> None:
        run = self.state.runs[run_id]
        run["state"] = state
        if tasks is not None:
            run["run_details"] = {"task_details": tasks}
        if error:
            run["error"] = {"code": 2, "message": error}
        if state in ("SUCCEEDED", "FAILED", "CANCELED"):
            run["finished_at"] = _now()

    def count(self, method: str, path_prefix: str) -> int:
        return sum(1 for m, p in self.state.requests
                   if m == method and p.startswith(PREFIX + path_prefix))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _matches(item: dict[str, Any], filter_text: str | None) -> bool:
    if not filter_text:
        return True
    for predicate in json.loads(filter_text).get("predicates", []):
        key = predicate["key"]
        wanted = predicate.get("stringValue", predicate.get("string_value"))
        if predicate.get("operation") in ("EQUALS", 1) and item.get(key) != wanted:
            return False
    return True


def _handler(state: KfpState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass  # quiet: requests are recorded in state.requests instead

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            state.requests.append((method, url.path))
            state.authorizations.append(self.headers.get("Authorization"))
            if state.token is not None \
                    and self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._send(401, {"error": "no valid bearer token", "code": 16})
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            fault = state.take_fault(method, url.path)
            if fault and fault.stall_seconds:
                time.sleep(fault.stall_seconds)
            elif fault and not fault.after_serving:
                return self._send(fault.status, {"error": "injected", "code": 14})
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            status, document = _route(state, method, url.path.removeprefix(PREFIX), query,
                                      body)
            if fault and fault.after_serving:
                status, document = fault.status, {"error": "injected", "code": 14}
            self._send(status, document)

        def _send(self, status: int, document: dict[str, Any]) -> None:
            data = json.dumps(document).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

    return Handler


def _route(state: KfpState, method: str, path: str, query: dict[str, str],
           body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with state.lock:
        if (method, path) == ("GET", "/healthz"):
            return 200, {"multi_user": False, "pipeline_store": "database"}
        if (method, path) == ("GET", "/experiments"):
            # A multi-user KFP lists the experiments of the namespace asked for only.
            found = [e for e in state.experiments.values() if _matches(e, query.get("filter"))
                     and query.get("namespace") in (None, e.get("namespace"))]
            return 200, {"experiments": found, "total_size": len(found)}
        if (method, path) == ("POST", "/experiments"):
            experiment = {**body, "experiment_id": str(uuid.uuid4()), "created_at": _now(),
                          "storage_state": "AVAILABLE"}
            state.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if (method, path) == ("POST", "/runs"):
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING",
                   "created_at": _now(), "scheduled_at": _now(), "storage_state": "AVAILABLE"}
            state.runs[run["run_id"]] = run
            return 200, run
        if (method, path) == ("GET", "/runs"):
            return 200, _list_runs(state, query)
        if path.startswith("/runs/"):
            return _one_run(state, method, path.removeprefix("/runs/"))
    return 404, {"error": f"no route {method} {path}", "code": 5}


def _list_runs(state: KfpState, query: dict[str, str]) -> dict[str, Any]:
    runs = [run for run in state.runs.values()
            if query.get("experiment_id") in (None, run.get("experiment_id"))
            and _matches(run, query.get("filter"))]
    runs.sort(key=lambda run: run["created_at"], reverse=True)
    page = runs[:int(query.get("page_size", "10"))]
    return {"runs": page, "total_size": len(runs)}


def _one_run(state: KfpState, method: str, rest: str) -> tuple[int, dict[str, Any]]:
    run_id, _, verb = rest.partition(":")
    run = state.runs.get(run_id)
    if run is None:
        return 404, {"error": f"run {run_id} not found", "code": 5}
    if method == "GET" and not verb:
        return 200, run
    if method == "POST" and verb == "terminate":
        if run["state"] not in ("SUCCEEDED", "FAILED", "CANCELED"):
            run["state"] = "CANCELED"
            run["finished_at"] = _now()
        return 200, {}
    return 404, {"error": f"no route {method} /runs/{rest}", "code": 5}
