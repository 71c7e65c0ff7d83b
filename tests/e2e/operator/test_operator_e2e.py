"""The operator end to end, with no cluster: a Kubernetes API stand-in, the real kubectl,
the operator process with the local backend, and the real digits pipeline.

One job runs the whole way (with the operator killed and restarted mid-run); a second is
deleted mid-run; a third has a spec the schema cannot reject. Then editing the finished
job's promotion re-judges it without a new run.
"""

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

import pytest
import yaml
from kube_standin import KubeStandIn

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "digits-prune-quantize.yaml"
RUN_TIMEOUT_S = 600.0
INFERENCE_SERVICE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "inferenceservices.serving.kserve.io"},
    "spec": {"group": "serving.kserve.io", "scope": "Namespaced",
             "names": {"kind": "InferenceService", "plural": "inferenceservices",
                       "singular": "inferenceservice", "shortNames": ["isvc"]},
             "versions": [{"name": "v1beta1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]}}
INFERENCE_SERVICE = {
    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
    "metadata": {"name": "digits", "namespace": "default"},
    "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"},
                                     "storageUri": "s3://models/digits/previous"}}}}
pytestmark = pytest.mark.e2e


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

    def job(self, name: str) -> dict[str, Any] | None:
        found = [o for o in self.api.objects("compressionjobs", "default")
                 if o["metadata"]["name"] == name]
        return found[0] if found else None

    def status(self, name: str) -> dict[str, Any]:
        job = self.job(name)
        return (job or {}).get("status") or {}

    def runs(self) -> list[Path]:
        folder = self.root / "runs"
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def events(self, name: str) -> list[tuple[str, str]]:
        return [(e["type"], e["reason"]) for e in self.api.objects("events", "default")
                if e["involvedObject"]["name"] == name]

    def first_write(self, name: str) -> dict[str, Any]:
        """The job as the operator's first write left it (the API server's history)."""
        return next(obj for _, type_, kind, obj in list(self.api.store.history)
                    if type_ == "MODIFIED" and kind.plural == "compressionjobs"
                    and obj["metadata"]["name"] == name)

    def apply(self, name: str, annotations: dict[str, str] | None = None,
              **spec_changes: Any) -> None:
        """kubectl apply the digits example under `name`, changed as asked."""
        document = yaml.safe_load(EXAMPLE.read_text())
        document["metadata"].update(name=name, annotations=annotations or {})
        document["spec"].update(spec_changes)
        self.apply_document(document, name)

    def apply_document(self, document: dict[str, Any], name: str) -> None:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document))
        self.kubectl("apply", "-f", str(path))


class Operator:
    """`modelpress operator --backend local` as its own process (run_operator)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.cluster.root / f"operator-{self.starts}.log").open("wb")
        command = ("from modelpress.operator.main import run_operator; "
                   f"run_operator('local', 'default', False, {self.cluster.metrics_port})")
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("operator-e2e")
    crd = yaml.safe_load((ROOT / "charts" / "modelpress" / "crds" / "compressionjobs.yaml")
                         .read_text())
    api = KubeStandIn([crd, INFERENCE_SERVICE_CRD]).start()
    kubeconfig = root / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": api.url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "tester",
                                                     "namespace": "default"}}]}))
    metrics_port, liveness_port = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "MODELPRESS_LOCAL_WORKDIR": str(root / "runs"),
           "MODELPRESS_DEFAULT_OUTPUT": (root / "outputs").as_uri() + "/{namespace}/{name}",
           "MODELPRESS_POLL_INTERVAL_SECONDS": "1",
           "MODELPRESS_KSERVE_ENABLED": "true",
           "MODELPRESS_LOG_DEBUG": "true",
           "MODELPRESS_METRICS_ADDRESS": "127.0.0.1",
           "MODELPRESS_LIVENESS_ENDPOINT": f"http://127.0.0.1:{liveness_port}/healthz"}
    yield Cluster(api, root, env, metrics_port, liveness_port)
    api.stop()


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    running = Operator(cluster)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def finished(cluster: Cluster, operator: Operator) -> str:
    """The digits job, promoted to a target and an InferenceService, with the operator
    killed and restarted while a step runs."""
    name = "digits"
    target = (cluster.root / "production").as_uri()
    cluster.apply_document(INFERENCE_SERVICE, "inference-service")
    cluster.apply(name, annotations={"modelpress.io/inference-service": "digits"},
                  promotion={"gates": {"minCompressionRatio": 3.5, "maxAccuracyDrop": 0.01},
                             "target": target})
    wait_until("a running step", lambda: cluster.status(name).get("phase") == "Failed" or any(
        s["phase"] == "Running" for s in cluster.status(name).get("steps", [])), timeout=120)
    assert cluster.status(name)["phase"] != "Failed", json.dumps(cluster.status(name), indent=1)
    operator.kill()
    operator.start()
    wait_until("the job to finish", lambda: cluster.status(name).get("phase") in (
        "Succeeded", "Failed"), timeout=RUN_TIMEOUT_S)
    return name


def test_kubectl_get_shows_the_outcome(cluster: Cluster, finished: str) -> None:
    status = cluster.status(finished)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    header, row = cluster.kubectl("get", "cjob", finished).splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "RATIO", "SPEEDUP", "DROP", "PROMOTION", "AGE"]
    cells = row.split()
    assert cells[:2] == [finished, "Succeeded"]
    assert float(cells[2]) >= 3.5 and cells[5] == "Promoted"


def test_the_restart_submitted_nothing_twice(cluster: Cluster, finished: str) -> None:
    (run,) = [folder for folder in cluster.runs() if finished in _job_name(folder)]
    events = (run / "events.jsonl").read_text().splitlines()
    assert sum(1 for line in events if json.loads(line)["event"] == "started"
               and json.loads(line)["step"] == "fetch") == 1
    assert cluster.events(finished).count(("Normal", "Submitted")) == 1


def test_the_first_write_gives_the_job_its_phase(cluster: Cluster, finished: str) -> None:
    """The intake's Pending goes out in kopf's first cycle (with its finalizer), before
    the create handler: no backend call stands between an apply and a phase."""
    first = cluster.first_write(finished)
    assert first["status"]["phase"] == "Pending" and "runId" not in first["status"]
    assert [c["reason"] for c in first["status"]["conditions"]] == ["Queued", "AwaitingResults"]
    assert "kopf.modelpress.io/last-handled-configuration" not in first["metadata"].get(
        "annotations", {})  # kopf had not run a change handler yet


def test_the_promoted_model_is_at_the_target(cluster: Cluster, finished: str) -> None:
    status = cluster.status(finished)
    assert status["promotion"]["decision"] == "Promoted"
    target = cluster.root / "production"
    assert (target / "model.onnx").is_file() and (target / "results.json").is_file()
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Succeeded": ("True", "RunSucceeded"),
                          "Promoted": ("True", "Promoted")}


def test_the_inference_service_serves_the_promoted_model(cluster: Cluster,
                                                        finished: str) -> None:
    (service,) = cluster.api.objects("inferenceservices", "default")
    model = service["spec"]["predictor"]["model"]
    assert model == {"modelFormat": {"name": "onnx"},
                     "storageUri": (cluster.root / "production").as_uri()}
    assert "InferenceService digits now serves it" in next(
        c["message"] for c in cluster.status(finished)["conditions"] if c["type"] == "Promoted")


def test_kubectl_describe_shows_the_events(cluster: Cluster, finished: str) -> None:
    described = cluster.kubectl("describe", "cjob", finished)
    events = described[described.index("Events:"):]
    for reason in ("Submitted", "Running", "RunSucceeded", "Promoted"):
        assert reason in events


def test_metrics_report_the_job(operator: Operator, finished: str) -> None:
    text = operator.metrics()
    labels = f'job="{finished}",model="builtin://digits-cnn",namespace="default"'
    assert f"modelpress_compression_ratio{{{labels}}}" in text
    assert 'modelpress_jobs{namespace="default",phase="Succeeded"} 1.0' in text


def test_a_spec_the_schema_lets_by_fails_naming_the_field(cluster: Cluster,
                                                          operator: Operator) -> None:
    cluster.apply("backwards", steps=[{"quantize": {"mode": "dynamic"}},
                                      {"prune": {"sparsity": 0.5}}])
    status = wait_until("InvalidSpec", lambda: cluster.status("backwards").get(
        "phase") == "Failed" and cluster.status("backwards"))
    failed = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert failed["reason"] == "InvalidSpec"
    assert "steps[0]: quantize must be the last step" in failed["message"]
    # Events are posted after the status is written: wait for it, then count.
    assert wait_until("the event", lambda: cluster.events("backwards")) == [
        ("Warning", "InvalidSpec")]
    assert cluster.first_write("backwards")["status"]["phase"] == "Failed"
    assert "runId" not in status


def test_deleting_a_running_job_terminates_its_run(cluster: Cluster,
                                                   operator: Operator) -> None:
    cluster.apply("doomed")
    wait_until("the run to start", lambda: cluster.status("doomed").get("phase") == "Running",
               timeout=120)
    run_id = cluster.status("doomed")["runId"]
    cluster.kubectl("delete", "cjob", "doomed", "--timeout=60s")
    assert cluster.job("doomed") is None
    run = cluster.root / "runs" / run_id
    assert (run / "canceled").exists()
    pid = json.loads((run / "worker.json").read_text())["pid"]
    wait_until("the worker to exit", lambda: not _alive(pid), timeout=30)
    assert 'job="doomed"' not in operator.metrics()


def test_editing_the_promotion_rejudges_without_rerunning(cluster: Cluster,
                                                          finished: str) -> None:
    runs_before = cluster.runs()
    cluster.kubectl("patch", "cjob", finished, "--type", "merge", "-p", json.dumps(
        {"spec": {"promotion": {"gates": {"minCompressionRatio": 50.0}}}}))
    status = wait_until("the new decision", lambda: cluster.status(finished).get(
        "promotion", {}).get("decision") == "Rejected" and cluster.status(finished))
    assert "below minCompressionRatio 50" in status["promotion"]["reasons"][0]
    assert status["observedGeneration"] == 2 and status["phase"] == "Succeeded"
    assert cluster.runs() == runs_before


def _job_name(run: Path) -> str:
    request = json.loads((run / "request.json").read_text())
    return str(request["job"]["metadata"]["name"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())
