"""The operator against the Kubernetes API stand-in, with a fake step runner.

`modelpress operator --backend local` runs every job's pipeline through kfp.local; here the
operator process is started the same way (run_operator) except that its local backend is
given a runner from tests/integration/operator/fake_runners.py, so a run takes
milliseconds instead of minutes. Used by the secret-leak tests and the load benchmark.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "e2e" / "operator"
FAKE_RUNNERS = ROOT / "tests" / "integration" / "operator"
CRD = ROOT / "charts" / "modelpress" / "crds" / "compressionjobs.yaml"
JOBS_PATH = "/apis/modelpress.io/v1alpha1/namespaces/{namespace}/compressionjobs"
TERMINAL = ("Succeeded", "Failed")
START_TIMEOUT_S = 60.0

for _helpers in (STANDIN, FAKE_RUNNERS):  # the API stand-in; the KFP stand-in
    if str(_helpers) not in sys.path:
        sys.path.insert(0, str(_helpers))

from kube_standin import KubeStandIn  # noqa: E402

# The operator's entry point; with the local backend, its runner swapped for a fake one.
# `{prologue}` is code of the caller's that runs first (the load benchmark's timers).
LAUNCH = """
import sys
from modelpress.operator import main
from modelpress.operator.backends.local import LocalBackend
{prologue}
runner, metrics_port, backend = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if backend == "local":
    main.make_backend = lambda name, settings: LocalBackend(
        settings.local_workdir, settings.max_runs_in_flight, runner=runner)
main.run_operator(backend, "default", False, metrics_port)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(what: str, condition: Callable[[], Any], timeout: float,
               interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_standin() -> KubeStandIn:
    return KubeStandIn([yaml.safe_load(CRD.read_text())]).start()


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "tester",
                                                     "namespace": "default"}}]}))
    return path


@dataclass
class OperatorProcess:
    """One operator process; its log is kept in `log_path`."""

    root: Path
    api: KubeStandIn
    runner: str = "fake_runners:succeed"
    backend: str = "local"  # or "kfp": MODELPRESS_KFP_HOST in extra_env names the API
    extra_env: dict[str, str] = field(default_factory=dict)
    name: str = "operator"
    prologue: str = ""
    # The CPUs the operator (its intake, its runs) may use; None: any.
    cpus: set[int] | None = None
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

    def environment(self) -> dict[str, str]:
        kubeconfig = write_kubeconfig(self.root / "kubeconfig", self.api.url)
        python_path = os.pathsep.join(filter(None, [str(FAKE_RUNNERS),
                                                    os.environ.get("PYTHONPATH")]))
        # Nothing of the caller's own S3 or modelpress settings: only what is given here.
        inherited = {key: value for key, value in os.environ.items()
                     if not key.startswith(("AWS_", "MODELPRESS_"))}
        return {**inherited, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": python_path,
                "PYTHONSAFEPATH": "1",
                "MODELPRESS_LOCAL_WORKDIR": str(self.root / "runs"),
                "MODELPRESS_DEFAULT_OUTPUT": (self.root / "outputs").as_uri()
                + "/{namespace}/{name}",
                # Each namespace's outputs, the tests' promotion targets, and the default.
                "MODELPRESS_NAMESPACE_PREFIXES": json.dumps([
                    (self.root / "outputs").as_uri() + "/{namespace}/",
                    (self.root / "production").as_uri() + "/",
                    "s3://modelpress/{namespace}/"]),
                "MODELPRESS_POLL_INTERVAL_SECONDS": "1",
                "MODELPRESS_METRICS_ADDRESS": "127.0.0.1",
                "MODELPRESS_LIVENESS_ENDPOINT":
                    f"http://127.0.0.1:{self.liveness_port}/healthz",
                **self.extra_env}

    def start(self) -> OperatorProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", LAUNCH.format(prologue=self.prologue), self.runner,
                 str(self.metrics_port), self.backend],
                env=self.environment(), cwd=self.root, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=self._pin if self.cpus else None)
        wait_until("the operator's liveness endpoint", self.live, timeout=START_TIMEOUT_S)
        return self

    def _pin(self) -> None:
        """In the child, before exec: every thread and child it makes inherits the set."""
        assert self.cpus is not None
        os.sched_setaffinity(0, self.cpus)

    def live(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited with {self.process.returncode}:\n"
                                 + self.log_path.read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz",
                                        timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as answer:
            return str(answer.read().decode())

    def stop(self) -> None:
        """SIGTERM (kopf shuts down cleanly), then SIGKILL: only this process, by its pid."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def create_job(api: KubeStandIn, document: dict[str, Any]) -> dict[str, Any]:
    """POST the job to the stand-in, as `kubectl create` does."""
    namespace = document["metadata"].get("namespace", "default")
    request = urllib.request.Request(
        api.url + JOBS_PATH.format(namespace=namespace), method="POST",
        data=json.dumps(document).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        created: dict[str, Any] = json.loads(answer.read())
    return created


def jobs(api: KubeStandIn, namespace: str = "default") -> dict[str, dict[str, Any]]:
    return {job["metadata"]["name"]: job for job in api.objects("compressionjobs", namespace)}


def phase_of(api: KubeStandIn, name: str, namespace: str = "default") -> str | None:
    job = jobs(api, namespace).get(name) or {}
    return (job.get("status") or {}).get("phase")


def events(api: KubeStandIn, namespace: str = "default") -> list[dict[str, Any]]:
    return list(api.objects("events", namespace))
