"""A cluster without a cluster for the operator's end-to-end tests: the Kubernetes API
stand-in, the real kubectl, and `modelpress operator --backend local` as its own process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kube_standin import KubeStandIn

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "digits-prune-quantize.yaml"
CRD = ROOT / "charts" / "modelpress" / "crds" / "compressionjobs.yaml"
INFERENCE_SERVICE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "inferenceservices.serving.kserve.io"},
    "spec": {"group": "serving.kserve.io", "scope": "Namespaced",
             "names": {"kind": "InferenceService", "plural": "inferenceservices",
                       "singular": "inferenceservice", "shortNames": ["isvc"]},
             "versions": [{"name": "v1beta1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(what: str, condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Cluster:
    api: KubeStandIn
    root: Path
    env: dict[str, str]
    metrics_port: int
    liveness_port: int

    def kubectl(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["kubectl", "--cache-dir", str(self.root / "kube-cache"), *args],
                              env=self.env, cwd=self.root, capture_output=True, text=True,
                              timeout=120)
        assert not check or done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    def job(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        found = [o for o in self.api.objects("compressionjobs", namespace)
                 if o["metadata"]["name"] == name]
        return found[0] if found else None

    def status(self, name: str, namespace: str = "default") -> dict[str, Any]:
        job = self.job(name, namespace)
        return (job or {}).get("status") or {}

    def runs(self) -> list[Path]:
        folder = self.root / "runs"
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def events(self, name: str, namespace: str = "default") -> list[tuple[str, str]]:
        return [(e["type"], e["reason"]) for e in self.api.objects("events", namespace)
                if e["involvedObject"]["name"] == name]

    def first_write(self, name: str) -> dict[str, Any]:
        """The job as the operator's first write left it (the API server's history)."""
        return next(obj for _, type_, kind, obj in list(self.api.store.history)
                    if type_ == "MODIFIED" and kind.plural == "compressionjobs"
                    and obj["metadata"]["name"] == name)

    def apply(self, name: str, annotations: dict[str, str] | None = None,
              namespace: str = "default", **spec_changes: Any) -> None:
        """kubectl apply the digits example as `namespace/name`, changed as asked."""
        document = yaml.safe_load(EXAMPLE.read_text())
        document["metadata"].update(name=name, namespace=namespace,
                                    annotations=annotations or {})
        document["spec"].update(spec_changes)
        self.apply_document(document, f"{namespace}-{name}")

    def apply_document(self, document: dict[str, Any], name: str) -> None:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document))
        self.kubectl("apply", "-f", str(path))


class Operator:
    """`modelpress operator --backend local` as its own process (run_operator), watching
    the namespace `default` or every namespace."""

    def __init__(self, cluster: Cluster, all_namespaces: bool = False) -> None:
        self.cluster = cluster
        self.all_namespaces = all_namespaces
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.cluster.root / f"operator-{self.starts}.log").open("wb")
        watched = "None, True" if self.all_namespaces else "'default', False"
        command = ("from modelpress.operator.main import run_operator; "
                   f"run_operator('local', {watched}, {self.cluster.metrics_port})")
        self.process = subprocess.Popen([sys.executable, "-c", command], env=self.cluster.env,
                                        cwd=self.cluster.root, stdout=log,
                                        stderr=subprocess.STDOUT)
        wait_until("the liveness endpoint", self.live, timeout=60)

    def live(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.cluster.liveness_port}"
                                        "/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, as when a node dies."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.cluster.metrics_port}/metrics",
                                    timeout=5) as answer:
            return str(answer.read().decode())


def start_cluster(root: Path, **settings: str) -> Cluster:
    """The API stand-in with the CRDs, a kubeconfig for it, and the operator's environment:
    runs under `root`/runs, outputs under `root`/outputs/<namespace>/, which (and
    `root`/production/) is each namespace's place; `settings` add or replace MODELPRESS_*
    variables."""
    api = KubeStandIn([yaml.safe_load(CRD.read_text()), INFERENCE_SERVICE_CRD]).start()
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": api.url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "tester",
                                                     "namespace": "default"}}]}))
    metrics_port, liveness_port = free_port(), free_port()
    outputs = (root / "outputs").as_uri()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "MODELPRESS_LOCAL_WORKDIR": str(root / "runs"),
           "MODELPRESS_DEFAULT_OUTPUT": outputs + "/{namespace}/{name}",
           "MODELPRESS_NAMESPACE_PREFIXES": json.dumps([
               outputs + "/{namespace}/", (root / "production").as_uri() + "/"]),
           "MODELPRESS_POLL_INTERVAL_SECONDS": "1",
           # One operator over every namespace runs the tenancy e2e with the local backend.
           "MODELPRESS_ALLOW_LOCAL_ALL_NAMESPACES": "true",
           "MODELPRESS_KSERVE_ENABLED": "true",
           "MODELPRESS_LOG_DEBUG": "true",
           "MODELPRESS_METRICS_ADDRESS": "127.0.0.1",
           "MODELPRESS_LIVENESS_ENDPOINT": f"http://127.0.0.1:{liveness_port}/healthz",
           **settings}
    return Cluster(api, root, env, metrics_port, liveness_port)


def running_operator(cluster: Cluster, all_namespaces: bool = False) -> Iterator[Operator]:
    """For a fixture: the operator started, then stopped."""
    running = Operator(cluster, all_namespaces)
    running.start()
    yield running
    running.stop()


# ------------------------------------------------------------------ replicas (kopf peering)

PEERING_CRDS = [yaml.safe_load((CRD.parent / name).read_text())
                for name in ("kopfpeerings.yaml", "clusterkopfpeerings.yaml")]
PEERING = "modelpress"


def start_peered_cluster(root: Path, lifetime_seconds: int, **settings: str) -> Cluster:
    """start_cluster, with kopf's peering CRDs and the KopfPeering of namespace default
    (as the chart creates them), and operators told to peer through it."""
    cluster = start_cluster(root, MODELPRESS_PEERING_NAME=PEERING,
                            MODELPRESS_PEERING_LIFETIME_SECONDS=str(lifetime_seconds),
                            **settings)
    cluster.api.add_crds(PEERING_CRDS)
    cluster.api.create("kopfpeerings", "default",
                       {"metadata": {"name": PEERING, "namespace": "default"}})
    return cluster


class Replica(Operator):
    """One of several operator processes on the same cluster: its own pod name (kopf's
    peering identity), peering priority, metrics and liveness ports, and log."""

    def __init__(self, cluster: Cluster, name: str, priority: int) -> None:
        super().__init__(cluster)
        self.name, self.priority = name, priority
        self.metrics_port, self.liveness_port = free_port(), free_port()

    def start(self) -> None:
        self.starts += 1
        env = {**self.cluster.env, "POD_ID": self.name,
               "MODELPRESS_PEERING_PRIORITY": str(self.priority),
               "MODELPRESS_LIVENESS_ENDPOINT":
                   f"http://127.0.0.1:{self.liveness_port}/healthz"}
        command = ("from modelpress.operator.main import run_operator; "
                   f"run_operator('local', 'default', False, {self.metrics_port})")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-c", command], env=env,
                                            cwd=self.cluster.root, stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_until(f"{self.name}'s liveness endpoint", self.live, timeout=60)

    @property
    def log(self) -> Path:
        return self.cluster.root / f"{self.name}.log"

    def logged(self, text: str) -> bool:
        return self.log.is_file() and text in self.log.read_text(errors="replace")

    def live(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz",
                                        timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False
