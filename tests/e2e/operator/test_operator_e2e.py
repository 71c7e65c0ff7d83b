"""The operator end to end, with no cluster: a Kubernetes API stand-in, the real kubectl,
the operator process with the local backend, and the real digits pipeline.

One job runs the whole way (with the operator killed and restarted mid-run); a second is
deleted mid-run; a third has a spec the schema cannot reject. Then editing the finished
job's promotion re-judges it without a new run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_store import kserve_canary_status
from operator_cluster import Cluster, Operator, running_operator, start_cluster, wait_until

RUN_TIMEOUT_S = 600.0
INFERENCE_SERVICE = {
    "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
    "metadata": {"name": "digits", "namespace": "default",
                 "labels": {"modelpress.io/promotion": "enabled"}},  # it opts in
    "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"},
                                     "storageUri": "s3://models/digits/previous"}}}}
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(tmp_path_factory.mktemp("operator-e2e"))
    yield running
    running.api.stop()


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    yield from running_operator(cluster)


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
    wait_until("the canary", lambda: "canaryTrafficPercent" in _service(cluster)["spec"][
        "predictor"] or cluster.status(name).get("phase") == "Failed")
    _kserve_reports_the_canary(cluster)
    wait_until("the promotion", lambda: cluster.status(name).get("promotion", {}).get(
        "decision") != "Pending", timeout=30)
    return name


def _service(cluster: Cluster) -> dict[str, Any]:
    [service] = cluster.api.objects("inferenceservices", "default")
    return service


def _kserve_reports_the_canary(cluster: Cluster) -> None:
    """Play KServe's controller: the canary revision is ready with its 10% of traffic."""
    service = _service(cluster)
    service["status"] = kserve_canary_status(service, latest_percent=10)
    cluster.api.replace("inferenceservices", "default", service)


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
                          "Promoted": ("True", "Promoted"),
                          "CanaryReady": ("True", "CanaryServing")}


def test_the_inference_service_serves_the_promoted_model(cluster: Cluster,
                                                        finished: str) -> None:
    """As a canary (docs/kserve-canary.md), not an in-place patch."""
    assert _service(cluster)["spec"]["predictor"] == {
        "canaryTrafficPercent": 10,
        "model": {"modelFormat": {"name": "onnx"},
                  "storageUri": (cluster.root / "production").as_uri()}}
    assert "InferenceService digits serves it to 10% of traffic as a canary" in next(
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
