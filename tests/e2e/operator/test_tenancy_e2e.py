"""Tenancy end to end: one operator watching every namespace, a hostile job set in namespace
team-a that aims at team-b's place (its output, its promotion target, its input) or runs an
image of its own, next to a normal team-a job with the real digits pipeline.

Each hostile job fails at intake naming the field, with no run and nothing written under
team-b; the normal job succeeds and is promoted; the same edit of its promotion.target
towards team-b is then Rejected, and nothing is copied.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_cluster import Cluster, Operator, running_operator, start_cluster, wait_until

RUN_TIMEOUT_S = 600.0
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = start_cluster(tmp_path_factory.mktemp("tenancy-e2e"))
    yield running
    running.api.stop()


@pytest.fixture(scope="module")
def operator(cluster: Cluster) -> Iterator[Operator]:
    yield from running_operator(cluster, all_namespaces=True)


def team_place(cluster: Cluster, team: str) -> Path:
    return cluster.root / "outputs" / team


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def planted(cluster: Cluster) -> dict[str, bytes]:
    """team-b's own files: a model team-a's job tries to read."""
    model = team_place(cluster, "team-b") / "models" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"team-b's model")
    return files_under(team_place(cluster, "team-b"))


def hostile(cluster: Cluster) -> dict[str, tuple[str, dict[str, object]]]:
    """Job name -> (the field it abuses, its spec changes)."""
    team_b = team_place(cluster, "team-b").as_uri()
    example = {"uri": "builtin://digits-cnn", "task": "classification"}
    return {
        "steal-output": ("spec.output", {"output": f"{team_b}/digits/"}),
        "steal-target": ("spec.promotion.target",
                         {"promotion": {"target": f"{team_b}/production/"}}),
        "look-alike": ("spec.output", {
            "output": (cluster.root / "outputs" / "team-a-evil" / "x").as_uri()}),
        "climb-out": ("spec.output", {"output": f"{team_place(cluster, 'team-a').as_uri()}"
                                                f"/../team-b/digits/"}),
        "read-input": ("spec.model.uri", {"model": {**example,
                                                     "uri": f"{team_b}/models/model.onnx"}}),
        "own-image": ("spec.image", {"image": "evil.example/miner:1"}),
    }


@pytest.fixture(scope="module")
def outcome(cluster: Cluster, operator: Operator, planted: dict[str, bytes]) -> str:
    """The normal job and the hostile ones, applied together; the normal job finished."""
    name = "digits"
    target = (team_place(cluster, "team-a") / "production").as_uri()
    cluster.apply(name, namespace="team-a",
                  promotion={"gates": {"minCompressionRatio": 3.5}, "target": target})
    for job, (_, changes) in hostile(cluster).items():
        cluster.apply(job, namespace="team-a", **changes)
    wait_until("the normal job to finish", lambda: cluster.status(name, "team-a").get(
        "phase") in ("Succeeded", "Failed"), timeout=RUN_TIMEOUT_S)
    return name


def test_every_hostile_job_is_refused_at_intake_naming_the_field(
        cluster: Cluster, outcome: str) -> None:
    for job, (field, _) in hostile(cluster).items():
        status = wait_until(f"{job} to fail", lambda job=job: cluster.status(  # type: ignore[misc]
            job, "team-a").get("phase") == "Failed" and cluster.status(job, "team-a"))
        failed = next(c for c in status["conditions"] if c["type"] == "Succeeded")
        assert failed["reason"] == "InvalidSpec", (job, failed)
        assert failed["message"].startswith(f"{field}: "), (job, failed["message"])
        assert "runId" not in status, job
        assert cluster.first_write(job)["status"]["phase"] == "Failed"  # at intake


def test_nothing_was_written_under_team_b(cluster: Cluster, outcome: str,
                                          planted: dict[str, bytes]) -> None:
    assert files_under(team_place(cluster, "team-b")) == planted
    assert not (cluster.root / "outputs" / "team-a-evil").exists()
    runs = [json.loads((run / "request.json").read_text())["job"]["metadata"]["name"]
            for run in cluster.runs()]
    assert runs == [outcome]  # only the normal job ever ran


def test_the_normal_job_alongside_succeeds_and_is_promoted(cluster: Cluster,
                                                           outcome: str) -> None:
    status = cluster.status(outcome, "team-a")
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["promotion"]["decision"] == "Promoted"
    assert (team_place(cluster, "team-a") / "production" / "model.onnx").is_file()


def test_aiming_the_finished_jobs_promotion_at_team_b_is_rejected(
        cluster: Cluster, outcome: str, planted: dict[str, bytes]) -> None:
    target = (team_place(cluster, "team-b") / "production").as_uri()
    cluster.kubectl("patch", "cjob", outcome, "-n", "team-a", "--type", "merge", "-p",
                    json.dumps({"spec": {"promotion": {"target": target}}}))
    status = wait_until("the new decision", lambda: cluster.status(outcome, "team-a").get(
        "promotion", {}).get("decision") == "Rejected" and cluster.status(outcome, "team-a"))
    assert status["promotion"]["reasons"][0].startswith(f"spec.promotion.target: {target}")
    assert status["phase"] == "Succeeded" and status["observedGeneration"] == 2
    assert files_under(team_place(cluster, "team-b")) == planted
