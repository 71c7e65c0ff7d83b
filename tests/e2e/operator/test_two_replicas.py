"""Two operator replicas peering through kopf, with no cluster: the API stand-in serving
kopf's peering resources, two `modelpress operator` processes with different priorities,
and the real digits pipeline.

The higher-priority replica takes the job; it is killed (SIGKILL) while a step runs; the
other resumes once the dead one's peering record expires, finds the run in flight (runs
are keyed by the job's uid) and finishes the job: one run, one submission. The promoted
model then reaches the job's InferenceService as a KServe canary, not an in-place patch;
KServe's report of it becomes the job's CanaryReady condition, and an edit of the job's
spec.promotion.canary promotes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kube_store import kserve_canary_status
from operator_cluster import Cluster, Replica, start_peered_cluster, wait_until

pytestmark = pytest.mark.e2e

LIFETIME_SECONDS = 5  # the peering record's lifetime: how long a takeover may wait
RUN_TIMEOUT_S = 600.0
JOB = "digits"
SERVICE = {
    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
    "metadata": {"name": "digits", "namespace": "default",
                 "annotations": {"serving.kserve.io/deploymentMode": "Serverless"},
                 "labels": {"modelpress.io/promotion": "enabled"}},  # its owners opt in
    "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"},
                                     "storageUri": "s3://models/digits/v1"}}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_peered_cluster(tmp_path_factory.mktemp("replicas"), LIFETIME_SECONDS)
    yield running
    running.api.stop()


@pytest.fixture(scope="module")
def replicas(cluster: Cluster) -> Iterator[tuple[Replica, Replica]]:
    active, standby = Replica(cluster, "operator-a", 200), Replica(cluster, "operator-b", 100)
    active.start()
    wait_until("operator-a's peering record", lambda: "operator-a" in _peers(cluster))
    standby.start()
    yield active, standby
    active.stop()
    standby.stop()


@pytest.fixture(scope="module")
def takeover(cluster: Cluster, replicas: tuple[Replica, Replica]) -> float:
    """Seconds from killing the active replica, mid-run, to the other one resuming."""
    active, standby = replicas
    # operator-b starts paused (its peering is mandatory) and stays so: operator-a's
    # record is alive and has the higher priority.
    wait_until("operator-b's peering record", lambda: "operator-b" in _peers(cluster))
    cluster.apply_document(SERVICE, "inference-service")
    cluster.apply(JOB, annotations={"modelpress.io/inference-service": "digits"},
                  promotion={"gates": {"minCompressionRatio": 3.5},
                             "target": (cluster.root / "production").as_uri(),
                             "canary": {"trafficPercent": 20}})
    wait_until("a running step", lambda: cluster.status(JOB).get("phase") == "Failed" or any(
        step["phase"] == "Running" for step in cluster.status(JOB).get("steps", [])),
        timeout=120)
    assert cluster.status(JOB)["phase"] != "Failed", json.dumps(cluster.status(JOB), indent=1)
    assert not standby.logged("Resuming operations")  # paused while operator-a lived
    killed = time.monotonic()
    active.kill()
    wait_until("operator-b to resume", lambda: standby.logged("Resuming operations"),
               timeout=LIFETIME_SECONDS + 30)
    resumed = time.monotonic() - killed
    wait_until("the job to finish", lambda: cluster.status(JOB).get("phase") in (
        "Succeeded", "Failed"), timeout=RUN_TIMEOUT_S)
    return resumed


def test_the_other_replica_takes_over_within_the_peering_lifetime(takeover: float) -> None:
    # kopf waits out the dead record's lifetime, then touches its own to look again.
    assert takeover <= LIFETIME_SECONDS + 10


def test_the_job_finishes_after_the_takeover(cluster: Cluster, takeover: float) -> None:
    status = cluster.status(JOB)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert (cluster.root / "production" / "model.onnx").is_file()


def test_exactly_one_run_and_one_submission(cluster: Cluster, takeover: float) -> None:
    [run] = cluster.runs()
    assert run.name == cluster.status(JOB)["runId"]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert sum(1 for event in events
               if event["event"] == "started" and event["step"] == "fetch") == 1
    assert cluster.events(JOB).count(("Normal", "Submitted")) == 1


def test_the_inference_service_gets_a_canary(cluster: Cluster, takeover: float) -> None:
    service = _service(cluster)
    assert service["spec"]["predictor"] == {
        "canaryTrafficPercent": 20,
        "model": {"modelFormat": {"name": "onnx"},
                  "storageUri": (cluster.root / "production").as_uri()}}
    assert service["metadata"]["annotations"]["modelpress.io/promotion"] == f"default/{JOB}"
    promotion = cluster.status(JOB)["promotion"]
    assert (promotion["canaryState"], promotion["stableUri"]) == (
        "Canary", "s3://models/digits/v1")


def test_canary_ready_follows_kserve_then_an_edit_promotes(cluster: Cluster,
                                                           takeover: float) -> None:
    assert _condition(cluster, "CanaryReady")[:2] == ("Unknown", "AwaitingKServe")
    _report(cluster, latest_percent=20)
    wait_until("CanaryReady", lambda: _condition(cluster, "CanaryReady")[1] == "CanaryServing")
    assert cluster.status(JOB)["promotion"]["decision"] == "Promoted"
    cluster.kubectl("patch", "cjob", JOB, "--type", "merge", "-p", json.dumps(
        {"spec": {"promotion": {"canary": {"action": "promote"}}}}))
    wait_until("the promotion", lambda: "canaryTrafficPercent" not in _service(
        cluster)["spec"]["predictor"])
    _report(cluster, latest_percent=100, rolled_out_revision=2)
    wait_until("CanaryPromoted",
               lambda: _condition(cluster, "CanaryReady")[1] == "CanaryPromoted")
    assert len(cluster.runs()) == 1  # promoting re-ran nothing


def _peers(cluster: Cluster) -> dict[str, Any]:
    [peering] = cluster.api.objects("kopfpeerings", "default")
    return dict(peering.get("status") or {})


def _service(cluster: Cluster) -> dict[str, Any]:
    [service] = cluster.api.objects("inferenceservices", "default")
    return service


def _condition(cluster: Cluster, type_: str) -> tuple[str, str, str]:
    found = [c for c in cluster.status(JOB).get("conditions", []) if c["type"] == type_]
    return (found[0]["status"], found[0]["reason"], found[0]["message"]) if found \
        else ("", "", "")


def _report(cluster: Cluster, latest_percent: int, rolled_out_revision: int = 1) -> None:
    """Play KServe's controller: the status of the service's current generation."""
    service = _service(cluster)
    service["status"] = kserve_canary_status(service, latest_percent, rolled_out_revision)
    cluster.api.replace("inferenceservices", "default", service)
