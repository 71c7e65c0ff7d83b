"""What one namespace's job may touch and for how long, table-style: its namespace's
prefixes, the allowed images, its own namespace's opted-in InferenceServices, its deadline,
and its namespace's share of the runs in flight."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from opfixtures import (
    NOW,
    Copier,
    Events,
    FakeBackend,
    Ticks,
    accepted,
    apply,
    in_flight,
    intake,
    reconciled,
    run,
    run_results,
    spec,
    succeeded,
)

from modelpress.errors import InvalidInput
from modelpress.operator.config import OperatorSettings
from modelpress.operator.controller import Controller
from modelpress.operator.main import operator_config
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.promotion import Promote
from modelpress.operator.reconcile import (
    Config,
    EmitEvent,
    JobView,
    Observation,
    SubmitRun,
    TerminateRun,
    checked,
)
from modelpress.operator.status import find_condition

STEP_IMAGE = "ghcr.io/modelpress/step:0.1.0"
TEAMS = Config(default_output="s3://modelpress/{namespace}/{name}/",
               namespace_prefixes=("s3://modelpress/{namespace}/", "file:///data/{namespace}/"),
               allowed_images=(STEP_IMAGE, "registry.example/custom-step:2"),
               kserve_enabled=True, max_deadline_seconds=3600, max_runs_per_namespace=1)
SERVICE = "modelpress.io/inference-service"


def team_job(spec_: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
             namespace: str = "team-a", name: str = "digits", uid: str = "uid-1",
             generation: int = 1, annotations: dict[str, str] | None = None) -> JobView:
    return JobView(namespace=namespace, name=name, uid=uid, generation=generation,
                   spec=spec_ if spec_ is not None else spec(), status=status or {},
                   annotations=annotations or {})


def changed(path: str, value: Any) -> dict[str, Any]:
    """The example spec with the field at dotted `path` (below spec) set to `value`."""
    document = spec()
    *parents, leaf = path.split(".")
    place = document
    for key in parents:
        place = place.setdefault(key, {})
    place[leaf] = value
    return document


def _succeeded_condition(status: Any) -> Any:
    return find_condition(status, "Succeeded")


def _kinds(actions: list[Any]) -> list[str]:
    return [type(action).__name__ for action in actions if not isinstance(action, EmitEvent)]


# ------------------------------------------------------------------------ intake

REFUSED = [
    # field (below spec), value naming a place outside team-a's prefixes
    ("output", "s3://modelpress/team-b/digits/"),
    ("output", "s3://modelpress/team-a-evil/digits/"),
    ("output", "s3://modelpress/team-a/../team-b/digits/"),
    ("output", "s3://production/models/"),
    ("output", "file:///data/team-b/out/"),
    ("promotion.target", "s3://modelpress/team-b/production/"),
    ("promotion.target", "s3://modelpress/team-a/x/../../team-b/"),
    ("model.uri", "s3://modelpress/team-b/model.onnx"),
    ("model.uri", "file:///data/team-b/model.onnx"),
    ("data.eval", "s3://modelpress/team-b/eval.npz"),
    ("data.calibration", "file:///data/team-a/../team-b/calibration.npz"),
    ("data.train", "s3://modelpress/team-b/train.npz"),
    ("data.validation", "s3://modelpress/team-b/validation.npz"),
]


@pytest.mark.parametrize(("path", "value"), REFUSED)
def test_a_job_naming_another_namespace_is_refused_at_intake(path: str, value: str) -> None:
    view = team_job(changed(path, value))
    decision = reconciled(view, Observation(NOW), TEAMS)
    for status in (accepted(view, NOW, TEAMS), decision.status):
        failed = _succeeded_condition(status)
        assert status.phase == "Failed"
        assert (failed.status, failed.reason) == ("False", "InvalidSpec")
        assert failed.message.startswith(f"spec.{path}: {value} lies outside")
        assert "s3://modelpress/team-a/" in failed.message
    assert _kinds(decision.actions) == []  # nothing submitted: nothing read or written


ADMITTED = [
    ("output", "s3://modelpress/team-a/digits/"),
    ("output", "file:///data/team-a/out/"),
    ("promotion.target", "s3://modelpress/team-a/production/"),
    ("model.uri", "s3://modelpress/team-a/model.onnx"),
    ("data.eval", "file:///data/team-a/eval.npz"),
    ("data.eval", "builtin://digits?split=test"),
    ("image", ""),
    ("image", STEP_IMAGE),
    ("image", "registry.example/custom-step:2"),
]


@pytest.mark.parametrize(("path", "value"), ADMITTED)
def test_a_job_within_its_namespace_is_submitted(path: str, value: str) -> None:
    decision = reconciled(team_job(changed(path, value)), Observation(NOW), TEAMS)
    assert _kinds(decision.actions) == ["SubmitRun"], _succeeded_condition(decision.status)


def test_an_operator_default_output_outside_the_prefixes_refuses_the_job() -> None:
    config = replace(TEAMS, default_output="s3://shared/{name}/")
    status = accepted(team_job(), NOW, config)
    assert status.phase == "Failed"
    assert _succeeded_condition(status).message.startswith(
        "spec.output (unset: the operator's default): s3://shared/digits/ lies outside")


@pytest.mark.parametrize("image", ["ghcr.io/modelpress/step:latest", "evil.example/miner:1",
                                   "ghcr.io/modelpress/step:0.1.0@sha256:00"])
def test_an_image_outside_the_allowlist_is_refused(image: str) -> None:
    decision = reconciled(team_job(changed("image", image)), Observation(NOW), TEAMS)
    failed = _succeeded_condition(decision.status)
    assert (decision.status.phase, failed.reason) == ("Failed", "InvalidSpec")
    assert failed.message.startswith(f"spec.image: {image} is not an allowed image")
    assert _kinds(decision.actions) == []


# --------------------------------------------------------------------- promotion


@pytest.mark.parametrize("target", ["s3://modelpress/team-b/production/",
                                    "s3://modelpress/team-a-evil/production/"])
def test_an_edit_aiming_the_promotion_at_another_namespace_is_rejected(target: str) -> None:
    view = team_job(spec(target=target), succeeded(), generation=2)
    decision = reconciled(view, Observation(NOW), TEAMS)
    assert decision.status.phase == "Succeeded"
    assert decision.status.promotion is not None
    assert decision.status.promotion.decision == "Rejected"
    assert decision.status.promotion.reasons[0].startswith(
        f"spec.promotion.target: {target} lies outside")
    assert _kinds(decision.actions) == []


def test_the_same_edit_on_a_running_operator_copies_nothing() -> None:
    backend, copier = FakeBackend(phase="Succeeded"), Copier()
    controller = Controller(backend, TEAMS, OperatorMetrics(),  # type: ignore[arg-type]
                            results_reader=lambda output: run_results(), copier=copier,
                            clock=lambda: NOW)
    view = team_job()
    view = apply(view, controller.sync(view, Events()))
    view = apply(view, controller.sync(view, Events()))
    assert view.status is not None and view.status["phase"] == "Succeeded"
    edited = replace(view, generation=2, spec=spec(target="s3://modelpress/team-b/prod/"))
    view = apply(edited, controller.sync(edited, Events()))
    assert view.status is not None and view.status["promotion"]["decision"] == "Rejected"
    assert copier.copies == []


SERVICES = [
    # annotation, decision, Promoted reason, the Promote action's service
    ("digits", "Pending", "AwaitingResults", "digits"),
    ("team-a/digits", "Pending", "AwaitingResults", "digits"),
    ("team-b/digits", "Rejected", "InferenceServiceRefused", None),
    ("kube-system/digits", "Rejected", "InferenceServiceRefused", None),
]


@pytest.mark.parametrize(("annotation", "decision", "reason", "service"), SERVICES)
def test_only_an_inference_service_of_the_jobs_namespace_is_patched(
        annotation: str, decision: str, reason: str, service: str | None) -> None:
    observed = Observation(NOW, run=run("Succeeded"), results=run_results())
    view = team_job(spec(gates={}), in_flight(), annotations={SERVICE: annotation})
    result = reconciled(view, observed, TEAMS)
    assert result.status.promotion is not None
    assert result.status.promotion.decision == decision
    assert find_condition(result.status, "Promoted").reason == reason  # type: ignore[union-attr]
    promotes = [a for a in result.actions if isinstance(a, Promote)]
    assert [p.inference_service for p in promotes] == ([service] if service else [])
    if service is None:
        assert "a job may only promote to one in its own namespace (team-a)" in \
            result.status.promotion.reasons[-1]


class InferenceServices:
    """kubernetes.client.CustomObjectsApi for one InferenceService, labelled as given."""

    def __init__(self, labels: dict[str, str]) -> None:
        self.service = {"metadata": {"labels": labels},
                        "spec": {"predictor": {"model": {"storageUri": "s3://old"}}}}
        self.patches: list[tuple[str, str]] = []

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                     plural: str, name: str) -> dict[str, Any]:
        return self.service

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                       plural: str, name: str, body: dict[str, Any]) -> None:
        self.patches.append((namespace, name))


def test_an_inference_service_that_has_not_opted_in_is_left_alone() -> None:
    services, copier = InferenceServices(labels={}), Copier()
    controller = Controller(FakeBackend(phase="Succeeded"), TEAMS,  # type: ignore[arg-type]
                            OperatorMetrics(), results_reader=lambda output: run_results(),
                            copier=copier, kserve_api=services, clock=lambda: NOW)
    view = team_job(spec(target="s3://modelpress/team-a/prod/"),
                    annotations={SERVICE: "digits"})
    view = apply(view, controller.sync(view, Events()))
    events = Events()
    view = apply(view, controller.sync(view, events))
    assert view.status is not None and view.status["promotion"]["decision"] == "Pending"
    promoted = next(c for c in view.status["conditions"] if c["type"] == "Promoted")
    assert promoted["reason"] == "InferenceServiceRefused"
    assert "team-a/digits has not opted in" in promoted["message"]
    assert "modelpress.io/promotion: enabled" in promoted["message"]
    assert ("Warning", "InferenceServiceRefused") in [(t, r) for t, r, _ in events.seen]
    assert services.patches == [] and copier.copies == []
    services.service["metadata"]["labels"] = {"modelpress.io/promotion": "enabled"}
    view = apply(view, controller.sync(view, Events()))  # the poll after the owners opt in
    # Copied, and out to the service as a canary: Pending until KServe reports it serving
    # (tests/unit/operator/test_canary.py).
    assert view.status is not None and view.status["promotion"]["decision"] == "Pending"
    assert view.status["promotion"]["canaryState"] == "Canary"
    assert services.patches == [("team-a", "digits")]
    assert copier.copies == [("s3://modelpress/team-a/digits/", "s3://modelpress/team-a/prod/")]


# ---------------------------------------------------------------------- deadline

STARTED = NOW - timedelta(seconds=600)
DEADLINES = [
    # spec.deadlineSeconds, the operator's cap, run phase, run's start, overdue
    (300, 3600, "Running", STARTED, True),
    (900, 3600, "Running", STARTED, False),
    (None, 500, "Running", STARTED, True),
    (None, 3600, "Running", STARTED, False),
    (3600, 500, "Running", STARTED, True),  # the cap wins over the job's own
    (300, 3600, "Pending", STARTED, True),  # created but never scheduled
    (300, 3600, "Pending", None, False),  # no start known yet: not judged
    (300, 3600, "Succeeded", STARTED, False),  # finished in the end: not overdue
]


@pytest.mark.parametrize(("asked", "cap", "phase", "started", "overdue"), DEADLINES)
def test_a_run_past_its_deadline_is_terminated_and_fails(
        asked: int | None, cap: int, phase: str, started: Any, overdue: bool) -> None:
    value = spec() if asked is None else changed("deadlineSeconds", asked)
    before = in_flight(phase="Pending" if phase == "Pending" else "Running",
                       startedAt=started if phase != "Pending" else None)
    observed = Observation(NOW, run=run(phase, started_at=started), results=run_results())
    decision = reconciled(team_job(value, before), observed, replace(TEAMS,
                                                                     max_deadline_seconds=cap))
    failed = _succeeded_condition(decision.status)
    terminated = [a for a in decision.actions if isinstance(a, TerminateRun)]
    assert (failed.reason == "DeadlineExceeded") == overdue
    assert bool(terminated) == overdue
    if overdue:
        deadline = min(asked or cap, cap)
        assert decision.status.phase == "Failed"
        assert failed.message == f"run run-1 ran past its deadline of {deadline} s and was " \
                                 "terminated"
        assert terminated == [TerminateRun("run-1", f"it ran past its deadline of {deadline} s")]
        assert decision.status.promotion is not None
        assert decision.status.promotion.decision == "Rejected"


def test_a_deadline_below_a_minute_is_refused_by_the_schema() -> None:
    decision = reconciled(team_job(changed("deadlineSeconds", 10)), Observation(NOW), TEAMS)
    assert _succeeded_condition(decision.status).message.startswith("spec.deadlineSeconds: ")


def test_the_controller_terminates_an_overdue_run() -> None:
    backend, events = FakeBackend(), Events()
    controller = Controller(backend, TEAMS, OperatorMetrics(),  # type: ignore[arg-type]
                            clock=lambda: NOW)
    overdue = in_flight(startedAt=NOW - timedelta(seconds=3601))
    patch = controller.sync(team_job(status=overdue), events)
    assert patch["phase"] == "Failed"
    assert backend.terminated == ["run-1"]
    assert ("Warning", "DeadlineExceeded") in [(t, r) for t, r, _ in events.seen]
    assert ("Normal", "Terminated", "run run-1 terminated: it ran past its deadline of 3600 s") \
        in events.seen


# ------------------------------------------------------------ runs per namespace


def _cap_controller(ticks: Ticks) -> tuple[Controller, FakeBackend]:
    backend = FakeBackend(capacity=10)
    controller = Controller(backend, TEAMS, OperatorMetrics(),  # type: ignore[arg-type]
                            results_reader=lambda output: run_results(), clock=lambda: NOW,
                            monotonic=ticks)
    return controller, backend


def _queued(status: dict[str, Any]) -> bool:
    return any(c["reason"] == "Queued" for c in status.get("conditions", []))


def test_a_namespace_at_its_cap_queues_its_jobs_while_others_start() -> None:
    ticks = Ticks()
    controller, backend = _cap_controller(ticks)
    first = team_job(uid="a-1", name="first")
    first = apply(first, controller.sync(first, Events()))
    second = team_job(uid="a-2", name="second")
    second = apply(second, controller.sync(second, Events()))
    other = team_job(namespace="team-b", uid="b-1", name="other")
    assert controller.sync(other, Events())["runId"] == "run-2"
    assert second.status is not None and _queued(second.status)
    assert "runId" not in second.status
    checks = backend.capacity_checks
    for _ in range(20):  # its timer: nothing to do while team-a is full
        assert controller.sync(second, Events()) == {}
    assert backend.capacity_checks == checks
    backend.phase = "Succeeded"
    controller.sync(first, Events())  # team-a's run ends here: its slot is free at once
    backend.terminated.append("run-1")
    assert controller.sync(second, Events())["runId"] == "run-3"
    assert [r.job.metadata.namespace for r in backend.submitted] == ["team-a", "team-b",
                                                                     "team-a"]


def test_a_full_namespace_does_not_hold_up_another_namespaces_queued_job() -> None:
    ticks = Ticks()
    controller, backend = _cap_controller(ticks)
    held = team_job(uid="a-1", name="held")
    controller.sync(held, Events())
    waiting = apply(team_job(uid="a-2", name="waiting"),
                    controller.sync(team_job(uid="a-2", name="waiting"), Events()))
    assert waiting.status is not None and _queued(waiting.status)
    fresh = team_job(namespace="team-b", uid="b-1", name="queued")
    queued_b = intake(controller, fresh)  # Queued, as the intake leaves it
    assert queued_b.status is not None and _queued(queued_b.status)
    assert controller.sync(queued_b, Events())["runId"] == "run-2"


# ------------------------------------------------------------------ the settings


def test_the_settings_become_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_NAMESPACE_PREFIXES", '["s3://ml-store/{namespace}/"]')
    monkeypatch.setenv("MODELPRESS_DEFAULT_OUTPUT", "s3://ml-store/{namespace}/{name}/")
    monkeypatch.setenv("MODELPRESS_STEP_IMAGE", "registry.example/step:3")
    monkeypatch.setenv("MODELPRESS_MAX_DEADLINE_SECONDS", "7200")
    monkeypatch.setenv("MODELPRESS_MAX_RUNS_PER_NAMESPACE", "4")
    config = operator_config(OperatorSettings())
    assert config.namespace_prefixes == ("s3://ml-store/{namespace}/",)
    assert config.allowed_images == ("registry.example/step:3",)  # default: the step image
    assert (config.max_deadline_seconds, config.max_runs_per_namespace) == (7200, 4)
    monkeypatch.setenv("MODELPRESS_ALLOWED_IMAGES", '["a.example/s:1", "b.example/s:2"]')
    assert operator_config(OperatorSettings()).allowed_images == ("a.example/s:1",
                                                                  "b.example/s:2")


def test_the_defaults_are_the_documented_ones() -> None:
    settings = OperatorSettings()
    assert settings.namespace_prefixes == ["s3://modelpress/{namespace}/"]
    assert (settings.max_deadline_seconds, settings.max_runs_per_namespace) == (21600, 2)
    assert operator_config(settings).namespace_prefixes == ("s3://modelpress/{namespace}/",)


@pytest.mark.parametrize(("prefixes", "output", "where"), [
    ('["s3://modelpress/{namespace}/"]', "s3://elsewhere/{namespace}/{name}/",
     "MODELPRESS_DEFAULT_OUTPUT"),
    ('["s3://modelpress/{namespace}/"]', "s3://modelpress/{name}/", "MODELPRESS_DEFAULT_OUTPUT"),
    ('["https://example.com/{namespace}/"]', "s3://modelpress/{namespace}/{name}/",
     "MODELPRESS_NAMESPACE_PREFIXES"),
])
def test_unusable_settings_stop_the_operator_naming_them(
        monkeypatch: pytest.MonkeyPatch, prefixes: str, output: str, where: str) -> None:
    monkeypatch.setenv("MODELPRESS_NAMESPACE_PREFIXES", prefixes)
    monkeypatch.setenv("MODELPRESS_DEFAULT_OUTPUT", output)
    with pytest.raises(InvalidInput) as raised:
        operator_config(OperatorSettings())
    assert raised.value.where == where


def test_submit_carries_the_jobs_own_namespace_output() -> None:
    decision = reconciled(team_job(), Observation(NOW), TEAMS)
    (submit,) = [a for a in decision.actions if isinstance(a, SubmitRun)]
    assert submit.request.output == "s3://modelpress/team-a/digits/"


@pytest.mark.parametrize(("job_secrets", "refused"), [(False, True), (True, False)],
                         ids=["one-namespace-for-all-steps", "multi-user-kubeflow"])
def test_a_job_chooses_its_storage_secret_only_where_its_steps_run_apart(
        job_secrets: bool, refused: bool) -> None:
    config = replace(TEAMS, job_secrets=job_secrets)
    job = team_job({**spec(), "storage": {"secretName": "platform-s3"}})
    parsed = checked(job, config)
    if refused:
        assert isinstance(parsed, str) and parsed.startswith("spec.storage.secretName: ")
    else:
        assert not isinstance(parsed, str) and parsed.spec.storage is not None


@pytest.mark.parametrize(("backend", "namespace", "job_secrets"),
                         [("local", None, False), ("kfp", None, False), ("kfp", "kubeflow", True)])
def test_only_a_multi_user_kubeflow_lets_jobs_choose_secrets(
        monkeypatch: pytest.MonkeyPatch, backend: str, namespace: str | None,
        job_secrets: bool) -> None:
    if namespace:
        monkeypatch.setenv("MODELPRESS_KFP_NAMESPACE", namespace)
    assert operator_config(OperatorSettings(), backend).job_secrets is job_secrets


def test_a_refused_image_is_named_on_one_line() -> None:
    job = team_job({**spec(), "image": "evil\r\nX-Injected: 1"})
    problem = checked(job, TEAMS)
    assert isinstance(problem, str) and len(problem.splitlines()) == 1
    assert problem.startswith("spec.image: evil")
