"""Faults during `modelpress run`: each ends in a clean failure, and nothing that looks
published is left behind.

- a pipeline step's process is SIGKILLed while it runs;
- the S3 server (a short-lived SeaweedFS of this module's own) is stopped mid-run;
- the S3 endpoint vanishes in the middle of publishing, between two artifacts (a proxy in
  front of the shared server cuts every connection when the second artifact is about to
  become final);
- `file://` inputs outside MODELPRESS_ALLOWED_FILE_ROOTS: by `..` segments, symlinks,
  percent-encoding or a look-alike sibling folder.

The runs are slow (each starts a kfp.local pipeline), so they all start together when the
module's first test asks for them, and each test then checks its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_runs import (
    LIGHT_SPEC,
    cli,
    command_line,
    descendants,
    environment,
    finish,
    start_cli,
    wait_for_event,
    write_job,
)
from modelpress_test_servers import (
    S3Server,
    find_weed,
    remove_grpc_sockets,
    wait_until_serving,
    weed_command,
    write_identities,
)
from modelpress_test_servers import stop as stop_server

from modelpress.components.sources import local_file
from modelpress.errors import StoreError
from modelpress.store import open_store

pytestmark = pytest.mark.e2e
PUBLISHED = ("results.json", "report.html", "lineage.json")
# A prune that fine-tunes runs for several seconds: long enough to be killed mid-step.
FINE_TUNING_SPEC: dict[str, Any] = {
    **LIGHT_SPEC,
    "data": {**LIGHT_SPEC["data"], "train": "builtin://digits?split=train"},
    "steps": [{"prune": {"sparsity": 0.5, "schedule": {"iterations": 1, "fineTuneEpochs": 1}}},
              {"quantize": {"mode": "dynamic"}}],
}


@dataclass
class Outcome:
    completed: subprocess.CompletedProcess[str]
    folder: Path
    notes: dict[str, Any] = field(default_factory=dict)

    def error_lines(self) -> list[str]:
        return [line for line in self.completed.stderr.splitlines() if line.startswith("error")]

    def shown(self) -> str:
        return (f"exit {self.completed.returncode}\nstdout:\n{self.completed.stdout[-2000:]}"
                f"\nstderr:\n{self.completed.stderr[-3000:]}\nnotes: {self.notes}")


def assert_clean_failure(outcome: Outcome, code: int, *named: str) -> str:
    """Exit `code`, no traceback, exactly one error line holding each of `named`."""
    shown = outcome.shown()
    assert outcome.completed.returncode == code, shown
    assert "Traceback" not in outcome.completed.stdout + outcome.completed.stderr, shown
    lines = outcome.error_lines()
    assert len(lines) == 1, shown
    for text in named:
        assert text in lines[0], f"{text!r} not in the error line\n{shown}"
    assert "\x1b" not in outcome.completed.stderr, f"raw terminal escapes in the error\n{shown}"
    return lines[0]


def s3_environment(folder: Path, server: S3Server, endpoint: str | None = None
                   ) -> dict[str, str]:
    return environment(folder, MODELPRESS_S3_ENDPOINT=endpoint or server.endpoint,
                       AWS_ACCESS_KEY_ID=server.access_key,
                       AWS_SECRET_ACCESS_KEY=server.secret_key)


def objects_under(server: S3Server, bucket: str, prefix: str) -> dict[str, tuple[bytes, str]]:
    """name (below `prefix`) -> (bytes, the sha256 its metadata claims); {} without a bucket."""
    client = server.client()
    if not client.bucket_exists(bucket):
        return {}
    found = {}
    for listed in client.list_objects(bucket, prefix=prefix, recursive=True):
        name = str(listed.object_name)
        response = client.get_object(bucket, name)
        try:
            claimed = response.headers.get("x-amz-meta-sha256", "")
            found[name.removeprefix(prefix)] = (response.read(), claimed)
        finally:
            response.close()
            response.release_conn()
    return found


def assert_nothing_looks_published(objects: dict[str, tuple[bytes, str]]) -> None:
    """No completion marker or report; every final-looking object is whole (its bytes
    hash to what its metadata says); anything else is under the store's .tmp/ folder."""
    for name in PUBLISHED:
        assert name not in objects, f"{name} was published by a failed run"
    for name, (data, claimed) in objects.items():
        if name.startswith(".tmp/"):
            continue
        assert claimed == hashlib.sha256(data).hexdigest(), f"{name} is not whole"


# ------------------------------------------------------------------- a killed step


def killed_step(folder: Path) -> Outcome:
    """SIGKILL the Python process of the prune step while it fine-tunes."""
    job = write_job(folder, "killed-step", FINE_TUNING_SPEC)
    process = start_cli("run", str(job), "--output", str(folder / "out"),
                        env=environment(folder), cwd=folder)
    notes: dict[str, Any] = {}
    try:
        wait_for_event(folder, process, "started", "prune")
        steps = [pid for pid in descendants(process.pid)
                 if "kfp.dsl.executor_main" in command_line(pid)
                 and Path(command_line(pid)[0]).name.startswith("python")]
        notes["killed"] = [command_line(pid)[:3] for pid in steps]
        for pid in steps:
            os.kill(pid, signal.SIGKILL)
    finally:
        completed = finish(process)
    return Outcome(completed, folder, notes)


# -------------------------------------------------------- the S3 server stopped mid-run


@dataclass
class OwnServer:
    """A SeaweedFS of this test's own, which can be stopped and started again on the same
    ports and data."""

    workdir: Path
    server: S3Server = field(init=False)
    command: list[str] = field(init=False)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir()
        identities = self.workdir / "s3-identities.json"
        access_key, secret_key = f"mp{secrets.token_hex(8)}", secrets.token_urlsafe(24)
        write_identities(identities, access_key, secret_key)
        self.command, port = weed_command(find_weed(), self.workdir, identities)
        self.server = S3Server(f"http://127.0.0.1:{port}", access_key, secret_key)

    def start(self) -> None:
        log = self.workdir / "weed.log"
        with log.open("ab") as handle:
            self.process = subprocess.Popen(self.command, cwd=self.workdir, stdout=handle,
                                            stderr=subprocess.STDOUT)
        wait_until_serving(self.server, self.process, log)

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)
            remove_grpc_sockets(self.command)  # or the restart finds them taken

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir / "data", ignore_errors=True)


def server_stopped_mid_run(folder: Path) -> Outcome:
    """Stop the server once the first step has finished; publishing comes later."""
    own = OwnServer(folder / "seaweedfs")
    own.start()
    bucket, prefix = "stopped", "team-a/digits/"
    try:
        own.server.client().make_bucket(bucket)
        job = write_job(folder, "server-stopped", LIGHT_SPEC)
        process = start_cli("run", str(job), "--output", f"s3://{bucket}/{prefix}",
                            env=s3_environment(folder, own.server), cwd=folder)
        try:
            events = wait_for_event(folder, process, "finished", "fetch")
            own.stop()
        finally:
            completed = finish(process)
        own.start()  # back on the same ports and data, to see what the run left there
        objects = objects_under(own.server, bucket, prefix)
    finally:
        own.remove()
    notes = {"stopped after": [(e["event"], e["step"]) for e in events], "objects": objects}
    return Outcome(completed, folder, notes)


# ------------------------------------------------ the endpoint lost between two artifacts


class CuttingProxy:
    """A TCP proxy to an S3 endpoint that, on the first request whose request line matches
    `cut_at`, forwards nothing more: it stops listening and drops every connection, as a
    server that dies would."""

    def __init__(self, upstream_port: int, cut_at: re.Pattern[bytes]) -> None:
        self.upstream_port = upstream_port
        self.cut_at = cut_at
        self.cut = threading.Event()
        self.requests: list[bytes] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    def start(self) -> CuttingProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shut(self) -> None:
        self.cut.set()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        if self.cut.is_set():
            client_writer.transport.abort()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.upstream_port)
        self._writers += [client_writer, upstream_writer]
        await asyncio.gather(self._pump(client_reader, upstream_writer, watch=True),
                             self._pump(upstream_reader, client_writer, watch=False),
                             return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    watch: bool) -> None:
        while not self.cut.is_set():
            chunk = await reader.read(65536)
            if not chunk:
                break
            if watch:
                self.requests += re.findall(rb"^[A-Z]+ [^ ]+ HTTP/1\.1", chunk, re.MULTILINE)
                if self.cut_at.search(chunk):
                    await self._shut()
                    break
            writer.write(chunk)
            await writer.drain()
        writer.close()


def endpoint_lost_while_publishing(folder: Path, server: S3Server) -> Outcome:
    """Cut the endpoint as report.html is about to become final (model.onnx already is)."""
    bucket, prefix = f"cut-{secrets.token_hex(4)}", "team-a/digits/"
    upstream = int(server.endpoint.rsplit(":", 1)[1])
    cut_at = re.compile(rb"^PUT /" + re.escape(f"{bucket}/{prefix}report.html".encode())
                        + rb"[ ?]", re.MULTILINE)
    proxy = CuttingProxy(upstream, cut_at).start()
    try:
        job = write_job(folder, "endpoint-lost", LIGHT_SPEC)
        completed = cli("run", str(job), "--output", f"s3://{bucket}/{prefix}", cwd=folder,
                        env=s3_environment(folder, server, f"http://127.0.0.1:{proxy.port}"))
    finally:
        cut = proxy.cut.is_set()
        proxy.close()
    verified = cli("verify", f"s3://{bucket}/{prefix}", cwd=folder,
                   env=s3_environment(folder, server))
    notes = {"cut": cut, "requests": [r.decode() for r in proxy.requests],
             "objects": objects_under(server, bucket, prefix), "verify": verified}
    return Outcome(completed, folder, notes)


# ---------------------------------------------------------------------- path traversal


@dataclass(frozen=True)
class Escape:
    id: str
    field: str  # the spec field that names the file
    uri: Callable[[Path], str]  # of the case's folder


def _npz(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=np.zeros((10, 1, 8, 8), np.float32), y=np.arange(10, dtype=np.int64))


def _plant(folder: Path) -> None:
    """`allowed/` is the only allowed root; the files the uris point at lie outside it."""
    (folder / "allowed").mkdir()
    _npz(folder / "outside" / "eval.npz")
    _npz(folder / "allowed-twin" / "eval.npz")
    (folder / "outside" / "model.onnx").write_bytes(b"not read")
    (folder / "allowed" / "model-link.onnx").symlink_to(folder / "outside" / "model.onnx")
    (folder / "allowed" / "outside-link").symlink_to(folder / "outside")


ESCAPES = [
    Escape("model-outside", "spec.model.uri", lambda f: f"file://{f}/outside/model.onnx"),
    Escape("model-dot-dot", "spec.model.uri",
           lambda f: f"file://{f}/allowed/../outside/model.onnx"),
    Escape("model-encoded-dot-dot", "spec.model.uri",
           lambda f: f"file://{f}/allowed/%2e%2e/outside/model.onnx"),
    Escape("model-symlink", "spec.model.uri", lambda f: f"file://{f}/allowed/model-link.onnx"),
    Escape("eval-dot-dot", "spec.data.eval",
           lambda f: f"file://{f}/allowed/sub/../../outside/eval.npz"),
    Escape("eval-symlinked-folder", "spec.data.eval",
           lambda f: f"file://{f}/allowed/outside-link/eval.npz"),
    Escape("eval-look-alike-sibling", "spec.data.eval",
           lambda f: f"file://{f}/allowed-twin/eval.npz"),
    Escape("calibration-dot-dot", "spec.data.calibration",
           lambda f: f"file://{f}/allowed/../outside/eval.npz"),
]


def escape_attempt(folder: Path, case: Escape) -> Outcome:
    _plant(folder)
    spec = json.loads(json.dumps(LIGHT_SPEC))
    *parents, last = case.field.removeprefix("spec.").split(".")
    node = spec
    for part in parents:
        node = node[part]
    node[last] = case.uri(folder)
    job = write_job(folder, case.id, spec)
    settings = {"MODELPRESS_ALLOWED_FILE_ROOTS": json.dumps([str(folder / "allowed")])}
    # The output is allowed: the CLI checks it before the inputs, and the input is the case.
    completed = cli("run", str(job), "--output", str(folder / "allowed" / "out"), cwd=folder,
                    env=environment(folder, **settings))
    return Outcome(completed, folder)


@dataclass(frozen=True)
class WriteEscape:
    id: str
    field: str  # what the error names: the flag or the spec field
    output: Callable[[Path], str]  # of the case's folder
    from_spec: bool  # spec.output, else --output


WRITE_ESCAPES = [
    WriteEscape("output-flag-outside", "--output", lambda f: str(f / "outside" / "out"), False),
    WriteEscape("output-spec-dot-dot", "spec.output",
                lambda f: f"file://{f}/allowed/../outside/out", True),
    WriteEscape("output-spec-symlinked", "spec.output",
                lambda f: f"file://{f}/allowed/outside-link/out", True),
]


def write_escape_attempt(folder: Path, case: WriteEscape) -> Outcome:
    _plant(folder)
    spec = json.loads(json.dumps(LIGHT_SPEC))
    flag: list[str] = []
    if case.from_spec:
        spec["output"] = case.output(folder)
    else:
        flag = ["--output", case.output(folder)]
    job = write_job(folder, case.id, spec)
    settings = {"MODELPRESS_ALLOWED_FILE_ROOTS": json.dumps([str(folder / "allowed")])}
    completed = cli("run", str(job), *flag, cwd=folder, env=environment(folder, **settings))
    return Outcome(completed, folder)


# ------------------------------------------------------------------------- the runs


def _escape_in_new_folder(factory: pytest.TempPathFactory, case: Escape) -> Outcome:
    return escape_attempt(factory.mktemp(case.id), case)


def _write_escape_in_new_folder(factory: pytest.TempPathFactory, case: WriteEscape) -> Outcome:
    return write_escape_attempt(factory.mktemp(case.id), case)


@pytest.fixture(scope="module")
def outcomes(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, Future[Outcome]]]:
    scenarios: dict[str, Callable[[], Outcome]] = {
        "killed-step": lambda: killed_step(tmp_path_factory.mktemp("killed")),
        "server-stopped": lambda: server_stopped_mid_run(tmp_path_factory.mktemp("stopped")),
        "endpoint-lost": lambda: endpoint_lost_while_publishing(
            tmp_path_factory.mktemp("lost"), s3_server),
        **{case.id: partial(_escape_in_new_folder, tmp_path_factory, case) for case in ESCAPES},
        **{case.id: partial(_write_escape_in_new_folder, tmp_path_factory, case)
           for case in WRITE_ESCAPES},
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {name: pool.submit(run) for name, run in scenarios.items()}


def test_a_killed_step_fails_the_run_naming_it(outcomes: dict[str, Future[Outcome]]) -> None:
    outcome = outcomes["killed-step"].result()
    assert outcome.notes["killed"], f"no step process was found to kill\n{outcome.shown()}"
    assert_clean_failure(outcome, 1, "step prune failed")
    output = outcome.folder / "out"
    assert not any((output / name).exists() for name in PUBLISHED), outcome.shown()


def test_the_server_stopped_mid_run_fails_it_cleanly(outcomes: dict[str, Future[Outcome]]
                                                     ) -> None:
    outcome = outcomes["server-stopped"].result()
    line = assert_clean_failure(outcome, 1, "step report failed", "cannot reach")
    assert "127.0.0.1" in line, line  # names the endpoint it tried
    assert ("finished", "fetch") in outcome.notes["stopped after"]
    assert_nothing_looks_published(outcome.notes["objects"])


def test_an_endpoint_lost_while_publishing_leaves_no_complete_looking_set(
        outcomes: dict[str, Future[Outcome]]) -> None:
    outcome = outcomes["endpoint-lost"].result()
    assert outcome.notes["cut"], f"the run never got to publishing report.html\n" \
                                 f"{outcome.shown()}"
    assert_clean_failure(outcome, 1, "step report failed")
    objects = outcome.notes["objects"]
    assert "model.onnx" in objects, "the cut was meant to fall after the first artifact"
    assert_nothing_looks_published(objects)
    verified = outcome.notes["verify"]
    assert verified.returncode == 1, verified.stderr  # a consumer sees an incomplete set


@pytest.mark.parametrize("case", ESCAPES, ids=[case.id for case in ESCAPES])
def test_a_file_outside_the_allowed_roots_is_refused(case: Escape,
                                                     outcomes: dict[str, Future[Outcome]]
                                                     ) -> None:
    outcome = outcomes[case.id].result()
    assert_clean_failure(outcome, 2, case.field, "outside the allowed roots")
    assert not (outcome.folder / "allowed" / "out").exists(), outcome.shown()


@pytest.mark.parametrize("case", WRITE_ESCAPES, ids=[case.id for case in WRITE_ESCAPES])
def test_an_output_outside_the_allowed_roots_is_refused_before_any_step(
        case: WriteEscape, outcomes: dict[str, Future[Outcome]]) -> None:
    outcome = outcomes[case.id].result()
    assert_clean_failure(outcome, 2, case.field, "outside the allowed roots")
    assert not (outcome.folder / "outside" / "out").exists(), outcome.shown()


def test_the_store_refuses_a_folder_outside_the_allowed_roots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last line of defence, for any writer that skipped the check before the run."""
    _plant(tmp_path)
    monkeypatch.setenv("MODELPRESS_ALLOWED_FILE_ROOTS", json.dumps([str(tmp_path / "allowed")]))
    assert open_store(tmp_path / "allowed" / "out").root_uri.startswith("file://")
    for escape in (tmp_path / "outside", tmp_path / "allowed" / "outside-link" / "out",
                   f"file://{tmp_path}/allowed/../outside"):
        with pytest.raises(StoreError, match="outside the allowed roots"):
            open_store(escape)


def test_the_allowed_roots_let_their_own_files_through(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusals above come from the roots, not from refusing every file."""
    _plant(tmp_path)
    _npz(tmp_path / "allowed" / "eval.npz")
    monkeypatch.setenv("MODELPRESS_ALLOWED_FILE_ROOTS", json.dumps([str(tmp_path / "allowed")]))
    inside = f"file://{tmp_path}/allowed/sub/../eval.npz"
    assert local_file(inside) == (tmp_path / "allowed" / "eval.npz").resolve()
    with pytest.raises(FileNotFoundError, match="outside the allowed roots"):
        local_file(f"file://{tmp_path}/allowed/outside-link/eval.npz")
