"""A real MLflow tracking server and model registry for integration tests.

`mlflow server` on a free port of 127.0.0.1, with a sqlite backend and a local artifact
root in a temporary folder; readiness is polled, and the server's process group is stopped
when the session ends. Test modules import the fixtures they use from here. A server that
cannot start fails the tests that need it: it never skips them. The fixtures are named
`mlflow_server` and `mlflow_env`; a module imports them by their functions' names.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
# Minutes on a busy two-core machine (the server imports much); seconds on a quiet one.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 15.0
# MLflow's client retries a refused connection for minutes by default; a test of an outage
# wants the answer at once.
FAST_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def free_port() -> int:
    """A port nothing listens on at 127.0.0.1 (also what a registry that is down looks like)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class MlflowServer:
    uri: str  # http://127.0.0.1:PORT
    artifacts: Path


def _command(port: int, folder: Path) -> list[str]:
    mlflow = Path(sys.executable).parent / "mlflow"
    return [str(mlflow), "server", "--host", LOOPBACK, "--port", str(port),
            "--backend-store-uri", f"sqlite:///{folder / 'db'}",
            "--default-artifact-root", (folder / "art").as_uri(), "--workers", "1"]


def _wait_until_serving(uri: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.25)
    pytest.fail(f"mlflow server did not answer within {START_TIMEOUT_S:.0f} s:\n"
                f"{log.read_text(errors='replace')[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Its own process group (the server and the workers it starts), by the leader's PID."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session", name="mlflow_server")
def mlflow_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = folder / "server.log"
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith("MLFLOW_")}
    environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job workers to start
    with log.open("wb") as output:
        process = subprocess.Popen(_command(port, folder), cwd=folder, env=environment,
                                   stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = MlflowServer(f"http://{LOOPBACK}:{port}", folder / "art")
    try:
        _wait_until_serving(server.uri, process, log)
        yield server
    finally:
        _stop(process)


@pytest.fixture(name="mlflow_env")
def mlflow_env_fixture(mlflow_server: MlflowServer,
                       monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    """The environment a user sets to reach the test server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    for name, value in FAST_FAILURE.items():
        monkeypatch.setenv(name, value)
    return mlflow_server
