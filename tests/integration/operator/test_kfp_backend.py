"""The kfp backend against a stand-in of the KFP v2beta1 REST API: runs, states, faults."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp_standin import KfpStandIn

from modelpress.api import StagedCandidate
from modelpress.jobfile import parse_job
from modelpress.operator.backends.base import BackendError, RunRequest, VerificationRequest
from modelpress.operator.backends.kfp import KfpBackend

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def kfp_api() -> Iterator[KfpStandIn]:
    server = KfpStandIn().start()
    yield server
    server.stop()


def request(example: str = "digits-prune-quantize.yaml", key: str = "uid-1",
            namespace: str | None = None) -> RunRequest:
    document = yaml.safe_load((ROOT / "examples" / example).read_text())
    if namespace:
        document["metadata"]["namespace"] = namespace
    job = parse_job(document, example)
    return RunRequest(key=key, job=job, output="s3://modelpress/ml/digits/")


def backend(url: str, **options: object) -> KfpBackend:
    settings: dict[str, object] = {"timeout_seconds": 2.0, "attempts": 3,
                                   "backoff_seconds": 0.01, "max_runs": 2}
    settings.update(options)
    return KfpBackend(url, **settings)  # type: ignore[arg-type]


def test_submit_creates_a_run_with_the_compiled_pipeline(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url)
    run_id = kfp.submit(request("minilm-int8.yaml"))
    run = kfp_api.state.runs[run_id]
    assert run["display_name"] == "ml-team/minilm-int8 (uid-1)"
    spec = run["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "modelpress-minilm-int8"
    executors = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert any("nodeSelector" in executor for executor in executors.values())
    assert run["runtime_config"]["pipeline_root"] == "s3://modelpress/ml/digits/pipeline-root"
    experiment = kfp_api.state.experiments[run["experiment_id"]]
    assert experiment["display_name"] == "modelpress"


def test_submit_is_idempotent_per_job(kfp_api: KfpStandIn) -> None:
    first = backend(kfp_api.url).submit(request())
    again = backend(kfp_api.url).submit(request())  # e.g. a restarted operator
    assert again == first
    assert kfp_api.count("POST", "/runs") == 1
    assert kfp_api.count("POST", "/experiments") == 1


TASKS: list[dict[str, Any]] = [
    {"display_name": "modelpress-digits-prune-quantize", "state": "RUNNING",
     "start_time": "2025-05-01T12:00:00Z"},
    {"display_name": "fetch", "state": "SUCCEEDED", "start_time": "2025-05-01T12:00:01Z",
     "end_time": "2025-05-01T12:00:04Z"},
    {"display_name": "prune", "state": "FAILED", "start_time": "2025-05-01T12:00:05Z",
     "end_time": "2025-05-01T12:00:09Z",
     "error": {"code": 2, "message": "sparsity leaves no weights"}},
]


@pytest.mark.parametrize(("state", "phase"), [
    ("PENDING", "Pending"), ("RUNNING", "Running"), ("CANCELING", "Running"),
    ("SUCCEEDED", "Succeeded"), ("FAILED", "Failed"), ("CANCELED", "Canceled"),
])
def test_run_states(kfp_api: KfpStandIn, state: str, phase: str) -> None:
    kfp = backend(kfp_api.url)
    run_id = kfp.submit(request())
    kfp_api.set_run(run_id, state)
    observed = kfp.poll(run_id)
    assert observed.phase == phase
    assert (observed.finished_at is not None) == (state in ("SUCCEEDED", "FAILED", "CANCELED"))


def test_failed_run_names_the_step_and_its_error(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url)
    run_id = kfp.submit(request())
    kfp_api.set_run(run_id, "FAILED", tasks=TASKS)
    observed = kfp.poll(run_id)
    assert (observed.failed_step, observed.message) == ("prune", "sparsity leaves no weights")
    assert [(s.name, s.phase, s.duration_seconds) for s in observed.steps] == [
        ("fetch", "Succeeded", 3.0), ("prune", "Failed", 4.0)]


def test_terminate_cancels_and_canceled_is_terminal(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url)
    run_id = kfp.submit(request())
    kfp.terminate(run_id)
    assert kfp.poll(run_id).phase == "Canceled"
    kfp.terminate(run_id)  # terminating again is harmless


def test_a_run_the_server_forgot_is_lost(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url)
    kfp.submit(request())
    assert kfp.poll("no-such-run").phase == "Lost"
    kfp.terminate("no-such-run")


def test_capacity_counts_runs_in_flight(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url, max_runs=2)
    first = kfp.submit(request(key="a"))
    kfp.submit(request(key="b"))
    assert not kfp.has_capacity()
    kfp_api.set_run(first, "SUCCEEDED")
    assert kfp.has_capacity()


def test_runs_are_counted_per_namespace_by_their_name(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url, max_runs=10)
    first = kfp.submit(request(key="a-1", namespace="team-a"))
    kfp.submit(request(key="a-2", namespace="team-a"))
    kfp.submit(request(key="b-1", namespace="team-a-evil"))
    assert (kfp.runs_in_namespace("team-a"), kfp.runs_in_namespace("team-a-evil"),
            kfp.runs_in_namespace("team-b")) == (2, 1, 0)
    kfp_api.set_run(first, "SUCCEEDED")
    assert kfp.runs_in_namespace("team-a") == 1


def test_5xx_answers_are_retried_with_backoff(kfp_api: KfpStandIn) -> None:
    delays: list[float] = []
    kfp = backend(kfp_api.url, sleep=delays.append, backoff_seconds=0.5)
    run_id = kfp.submit(request())
    kfp_api.fail(2, status=503, path_prefix="/runs/")
    assert kfp.poll(run_id).phase == "Pending"
    assert delays == [0.5, 1.0]


def test_a_create_whose_answer_was_lost_is_found_not_repeated(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url)
    kfp_api.lose_answers(1, "POST", "/runs")
    run_id = kfp.submit(request())
    assert list(kfp_api.state.runs) == [run_id]
    assert kfp_api.count("POST", "/runs") == 1


def test_persistent_5xx_gives_a_clear_error(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url)
    run_id = kfp.submit(request())
    kfp_api.fail(10, status=500, path_prefix="/runs/")
    with pytest.raises(BackendError, match=r"get run: the KFP API at .* is unreachable after "
                                           r"3 attempt\(s\): HTTP 500"):
        kfp.poll(run_id)


def test_a_slow_answer_times_out(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url, timeout_seconds=0.3, attempts=2)
    run_id = kfp.submit(request())
    kfp_api.stall(5, seconds=1.0, path_prefix="/runs/")
    began = time.monotonic()
    with pytest.raises(BackendError, match="timed out"):
        kfp.poll(run_id)
    assert time.monotonic() - began < 3.0


def test_4xx_is_not_retried(kfp_api: KfpStandIn) -> None:
    kfp = backend(kfp_api.url)
    run_id = kfp.submit(request())
    kfp_api.fail(1, status=403, path_prefix="/runs/")
    with pytest.raises(BackendError, match="refused: HTTP 403"):
        kfp.poll(run_id)
    assert kfp_api.count("GET", f"/runs/{run_id}") == 1


def test_an_unreachable_api_says_where_it_looked() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kfp = backend(f"http://127.0.0.1:{port}", attempts=2)
    with pytest.raises(BackendError, match=rf"health check: the KFP API at "
                                           rf"http://127.0.0.1:{port} is unreachable after 2 "
                                           r"attempt\(s\)"):
        kfp.submit(request())


# ------------------------------------------------------------------------ bearer token


TOKEN = "eyJhbGciOi.planted-kfp-token.c2lnbmF0dXJl"


def test_every_request_carries_the_token_from_its_file(kfp_api: KfpStandIn,
                                                        tmp_path: Path) -> None:
    kfp_api.state.token = TOKEN
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    kfp = backend(kfp_api.url, token_path=token_file)
    run_id = kfp.submit(request())
    assert kfp.poll(run_id).phase == "Pending"
    assert kfp_api.state.authorizations and set(kfp_api.state.authorizations) == {
        f"Bearer {TOKEN}"}
    rotated = TOKEN.replace("planted", "rotated")
    kfp_api.state.token = rotated
    token_file.write_text(rotated)  # what the kubelet does to a projected token
    assert kfp.poll(run_id).phase == "Pending"
    assert kfp_api.state.authorizations[-1] == f"Bearer {rotated}"


def test_a_refused_token_is_a_clear_error_without_the_token(kfp_api: KfpStandIn,
                                                            tmp_path: Path) -> None:
    kfp_api.state.token = "the-server-wants-another"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with pytest.raises(BackendError) as raised:
        backend(kfp_api.url, token_path=token_file).submit(request())
    assert "refused: HTTP 401" in str(raised.value)
    assert TOKEN not in str(raised.value)
    assert kfp_api.count("GET", "/healthz") == 1  # not retried


def test_a_missing_token_file_is_named(kfp_api: KfpStandIn, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    with pytest.raises(BackendError, match=f"the KFP token file {missing} cannot be read"):
        backend(kfp_api.url, token_path=missing).submit(request())
    assert kfp_api.state.requests == []


def test_verification_runs_go_to_the_kfp_namespace_unless_another_is_set(
        kfp_api: KfpStandIn) -> None:
    staged = StagedCandidate(uri="s3://platform/verify/ml/uid-1/candidate/",
                             sha256={"model.onnx": "d" * 64})
    verification = VerificationRequest(key="uid-1", job=request().job, candidate=staged,
                                       output="s3://platform/verify/ml/uid-1/verified/")
    for options, expected in (({}, "kubeflow"),
                              ({"verify_namespace": "modelpress-platform"},
                               "modelpress-platform")):
        run_id = backend(kfp_api.url, namespace="kubeflow", **options
                         ).submit_verification(verification)
        run = kfp_api.state.runs[run_id]
        assert kfp_api.state.experiments[run["experiment_id"]].get("namespace") == expected
