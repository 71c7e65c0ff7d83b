"""The KServe rollout of a promoted model: a canary (canaryTrafficPercent on Knative,
spec.canary on a Standard deployment), promoted or rolled back by an edit of the job's
spec.promotion.canary, and KServe's report of it mirrored into the CanaryReady condition.
The decisions are pure; the controller is driven with a fake InferenceService API."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from opfixtures import NOW, Events, FakeBackend, apply, in_flight, run_results, spec

from modelpress.api import Canary, CompressionStatus, Promotion, PromotionStatus
from modelpress.operator.backends.base import RunState
from modelpress.operator.controller import Controller
from modelpress.operator.kserve import canary_name, is_standard, observed_rollout, rollout_change
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.promotion import CanaryStep, Promote, canary_step, first_step
from modelpress.operator.reconcile import Config, JobView
from modelpress.operator.status import Rollout, find_condition, rolled_out
from modelpress.store import sha256_of

JOB = "ml/digits"
NEW, OLD = "s3://bucket/ml/prod/v2", "s3://bucket/ml/prod/v1"
MODEL = {"modelFormat": {"name": "onnx"}, "storageUri": OLD}


def knative(predictor: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    """An InferenceService on Knative (the serverless mode), generation 1 unless told."""
    return {"metadata": {"name": "digits", "generation": status.pop("generation", 1),
                         "annotations": {"serving.kserve.io/deploymentMode": "Serverless"}},
            "spec": {"predictor": predictor or {"model": dict(MODEL)}}, "status": status}


def standard(canary: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    """An InferenceService as a Standard (raw) deployment of KServe 0.20."""
    spec_: dict[str, Any] = {"predictor": {"model": dict(MODEL)}}
    if canary is not None:
        spec_["canary"] = canary
    return {"metadata": {"name": "digits", "generation": status.pop("generation", 1),
                         "annotations": {"serving.kserve.io/deploymentMode": "Standard"}},
            "spec": spec_, "status": status}


def step(state: str = "Canary", percent: int = 10, stable: str | None = None) -> CanaryStep:
    return CanaryStep(output="s3://bucket/ml/digits/", target=NEW, inference_service="digits",
                      uri=NEW, state=state, percent=percent,  # type: ignore[arg-type]
                      stable_uri=stable)


# ------------------------------------------------------------------ what is patched

OURS = canary_name(JOB, NEW)
ENTRY = {"predictor": {"name": OURS, "model": {**MODEL, "storageUri": NEW}}, "trafficPercent": 10}
OTHER = {"predictor": {"name": "theirs", "model": {**MODEL, "storageUri": "s3://x"}},
         "trafficPercent": 5}

CHANGES = [
    # id, service, step, the spec patch (None: nothing to patch)
    pytest.param(knative(), step(), {"predictor": {
        "model": {"storageUri": NEW}, "canaryTrafficPercent": 10}}, id="knative-canary"),
    pytest.param(knative({"model": {**MODEL, "storageUri": NEW}, "canaryTrafficPercent": 10}),
                 step(stable=OLD), None, id="knative-canary-already-there"),
    pytest.param(knative({"model": {**MODEL, "storageUri": NEW}, "canaryTrafficPercent": 10}),
                 step(percent=30, stable=OLD), {"predictor": {"canaryTrafficPercent": 30}},
                 id="knative-new-percent"),
    pytest.param(knative({"model": {**MODEL, "storageUri": NEW}, "canaryTrafficPercent": 10}),
                 step("Promoted", stable=OLD), {"predictor": {"canaryTrafficPercent": None}},
                 id="knative-promote-drops-the-percent"),
    pytest.param(knative({"model": {**MODEL, "storageUri": NEW}, "canaryTrafficPercent": 10}),
                 step("RolledBack", stable=OLD), {"predictor": {
                     "model": {"storageUri": OLD}, "canaryTrafficPercent": 0}},
                 id="knative-rollback-restores-and-pins"),
    pytest.param(knative(), step("RolledBack", stable=OLD), None,
                 id="knative-rollback-of-a-model-it-does-not-serve"),
    pytest.param(knative(), step("Promoted"), {"predictor": {"model": {"storageUri": NEW}}},
                 id="knative-promote-at-once"),
    pytest.param(standard(), step(), {"canary": [ENTRY]}, id="standard-canary-entry"),
    pytest.param(standard([OTHER]), step(), {"canary": [OTHER, ENTRY]},
                 id="standard-keeps-other-canaries"),
    pytest.param(standard([OTHER, ENTRY]), step(stable=OLD), None,
                 id="standard-canary-already-there"),
    pytest.param(standard([ENTRY]), step("Promoted", stable=OLD), {
        "canary": None, "predictor": {"name": OURS, "model": {"storageUri": NEW}}},
                 id="standard-promote-renames-the-stable-predictor"),
    pytest.param(standard([OTHER, ENTRY]), step("RolledBack", stable=OLD), {"canary": [OTHER]},
                 id="standard-rollback-removes-the-entry"),
]


@pytest.mark.parametrize(("service", "wanted", "spec_patch"), CHANGES)
def test_the_patch_brings_the_service_to_the_step(service: dict[str, Any], wanted: CanaryStep,
                                                  spec_patch: dict[str, Any] | None) -> None:
    change = rollout_change(service, wanted, JOB)
    if spec_patch is None:
        assert change.patch is None
        return
    assert change.patch == {"metadata": {"annotations": {"modelpress.io/promotion": JOB}},
                            "spec": spec_patch}
    assert change.stable_uri == OLD


@pytest.mark.parametrize(("service", "standard_mode"), [
    ({"spec": {"predictor": {}, "canary": []}}, True),
    ({"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}}}, True),
    ({"metadata": {}, "status": {"deploymentMode": "Standard"}}, True),
    ({"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Knative"}}}, False),
    ({"spec": {"predictor": {}}}, False),
], ids=["spec-canary", "legacy-raw-annotation", "status-mode", "knative", "unknown"])
def test_the_canary_shape_is_read_from_the_service(service: dict[str, Any],
                                                   standard_mode: bool) -> None:
    assert is_standard(service) is standard_mode


def test_the_canary_name_is_a_predictor_name() -> None:
    assert OURS.startswith("mp-") and len(OURS) == 13 and OURS == canary_name(JOB, NEW)
    assert canary_name(JOB, OLD) != OURS


# ------------------------------------------------------------------ what KServe reports


def _traffic(latest_percent: int) -> list[dict[str, Any]]:
    return [{"revisionName": "digits-predictor-00001", "tag": "prev",
             "percent": 100 - latest_percent},
            {"revisionName": "digits-predictor-00002", "latestRevision": True, "tag": "latest",
             "percent": latest_percent}]


def _predictor(latest_percent: int, ready: str = "digits-predictor-00002",
               rolled_out: str = "digits-predictor-00001") -> dict[str, Any]:
    return {"components": {"predictor": {
        "latestCreatedRevision": "digits-predictor-00002", "latestReadyRevision": ready,
        "latestRolledoutRevision": rolled_out, "traffic": _traffic(latest_percent)}}}


FAILED = [{"type": "LatestDeploymentReady", "status": "False", "reason": "RevisionFailed",
           "message": "container exited"}]
READY = [{"type": "PredictorReady", "status": "True"}]

REPORTS = [
    # id, service as read, step state, CanaryReady (status, reason)
    pytest.param(knative(generation=2, observedGeneration=1, **_predictor(10)), "Canary",
                 ("Unknown", "AwaitingKServe"), id="knative-not-observed-yet"),
    pytest.param(knative(observedGeneration=1, **_predictor(0, ready="digits-predictor-00001")),
                 "Canary", ("Unknown", "RollingOut"), id="knative-revision-not-ready"),
    pytest.param(knative(observedGeneration=1, conditions=FAILED, **_predictor(0)), "Canary",
                 ("False", "RolloutFailed"), id="knative-revision-failed"),
    pytest.param(knative(observedGeneration=1, **_predictor(10)), "Canary",
                 ("True", "CanaryServing"), id="knative-canary-serving"),
    pytest.param(knative(observedGeneration=1, **_predictor(10)), "Promoted",
                 ("Unknown", "RollingOut"), id="knative-promote-not-yet-all-traffic"),
    pytest.param(knative(observedGeneration=1,
                         **_predictor(100, rolled_out="digits-predictor-00002")), "Promoted",
                 ("True", "CanaryPromoted"), id="knative-promoted"),
    pytest.param(knative(observedGeneration=1, **_predictor(10)), "RolledBack",
                 ("False", "CanaryRolledBack"), id="rolled-back"),
    pytest.param(standard([ENTRY], observedGeneration=1, canaryStatuses=[
        {"name": OURS, "ready": False, "trafficPercent": 0}]), "Canary",
                 ("Unknown", "RollingOut"), id="standard-canary-not-ready"),
    pytest.param(standard([ENTRY], observedGeneration=1, canaryStatuses=[
        {"name": OURS, "ready": True, "trafficPercent": 10}]), "Canary",
                 ("True", "CanaryServing"), id="standard-canary-serving"),
    pytest.param(standard([ENTRY], observedGeneration=1, conditions=[
        {"type": "CanaryPredictorReady", "status": "False", "reason": "ImagePullBackOff"}]),
                 "Canary", ("False", "RolloutFailed"), id="standard-canary-failed"),
    pytest.param(standard(observedGeneration=1, conditions=READY), "Promoted",
                 ("True", "CanaryPromoted"), id="standard-promoted"),
    pytest.param(standard(observedGeneration=1, conditions=READY, canaryStatuses=[
        {"name": OURS, "ready": True, "trafficPercent": 10}]), "Promoted",
                 ("Unknown", "RollingOut"), id="standard-promote-canary-still-listed"),
]


@pytest.mark.parametrize(("service", "state", "ready"), REPORTS)
def test_canary_ready_mirrors_what_kserve_reports(service: dict[str, Any], state: str,
                                                  ready: tuple[str, str]) -> None:
    rollout = observed_rollout(service, step(state), JOB, OLD)
    assert (rollout.ready, rollout.reason) == ready
    assert rollout.message  # says what it waits for, or what failed


# ------------------------------------------------------------------ the decisions

def _rollout(state: str, ready: str, reason: str) -> Rollout:
    return Rollout("digits", state, NEW, OLD, 10, ready, reason, "kserve says")  # type: ignore[arg-type]


@pytest.mark.parametrize(("state", "ready", "reason", "decision", "promoted"), [
    ("Canary", "Unknown", "AwaitingKServe", "Pending", ("Unknown", "AwaitingKServe")),
    ("Canary", "False", "RolloutFailed", "Pending", ("Unknown", "RolloutFailed")),
    ("Canary", "True", "CanaryServing", "Promoted", ("True", "Promoted")),
    ("Promoted", "True", "CanaryPromoted", "Promoted", ("True", "Promoted")),
    ("RolledBack", "False", "CanaryRolledBack", "Rejected", ("False", "CanaryRolledBack")),
])
def test_the_decision_follows_the_rollout(state: str, ready: str, reason: str, decision: str,
                                          promoted: tuple[str, str]) -> None:
    before = CompressionStatus(phase="Succeeded", promotion=PromotionStatus(
        decision="Pending", promoted_uri=NEW))
    after = rolled_out(before, _rollout(state, ready, reason), NOW)
    assert after.promotion is not None and after.promotion.decision == decision
    assert (after.promotion.canary_service, after.promotion.canary_state,
            after.promotion.stable_uri) == ("digits", state, OLD)
    canary_ready = find_condition(after, "CanaryReady")
    assert canary_ready is not None and (canary_ready.status, canary_ready.reason) == (
        ready, reason)
    condition = find_condition(after, "Promoted")
    assert condition is not None and (condition.status, condition.reason) == promoted


def test_the_spec_action_moves_a_rollout_already_started() -> None:
    current = PromotionStatus(decision="Promoted", canary_service="digits",
                              canary_state="Canary", canary_uri=NEW, stable_uri=OLD)
    edit = Promotion.model_validate({"target": NEW, "canary": {"action": "promote"}})
    moved = canary_step(current, edit, "digits", "s3://bucket/ml/digits/")
    assert moved == step("Promoted", stable=OLD)
    other_model = Promotion.model_validate({"target": "s3://bucket/ml/prod/v3"})
    assert canary_step(current, other_model, "digits", "s3://bucket/ml/digits/") is None


def test_the_first_step_takes_the_spec_percent_and_action() -> None:
    promote = Promote(output="s3://bucket/ml/digits/", target=None, inference_service="digits")
    first = first_step(promote, Canary(traffic_percent=25))
    assert (first.uri, first.state, first.percent) == ("s3://bucket/ml/digits/", "Canary", 25)
    assert first_step(promote, Canary(action="rollback")).state == "RolledBack"


# ------------------------------------------------------------------ the controller


@dataclass
class InferenceServices:
    """kubernetes.client.CustomObjectsApi over one InferenceService: merge patches applied,
    generation bumped on a spec change, as the API server does."""

    service: dict[str, Any]
    patches: list[dict[str, Any]] = field(default_factory=list)

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                     plural: str, name: str) -> dict[str, Any]:
        assert (group, plural, namespace, name) == ("serving.kserve.io", "inferenceservices",
                                                    "ml", "digits")
        return copy.deepcopy(self.service)

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                       plural: str, name: str, body: dict[str, Any]) -> None:
        self.patches.append(body)
        before = copy.deepcopy(self.service["spec"])
        self.service = _merged(self.service, body)
        if self.service["spec"] != before:
            self.service["metadata"]["generation"] += 1

    def report(self, **status: Any) -> None:
        """KServe's controller caught up with the current generation."""
        self.service["status"] = {"observedGeneration": self.service["metadata"]["generation"],
                                  **status}


def _merged(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merged(result.get(key), value)
    return result


@dataclass
class RecordedBackend(FakeBackend):
    """A backend whose succeeded run recorded the digests of real files."""

    recorded: dict[str, str] = field(default_factory=dict)

    def poll(self, run_id: str) -> RunState:
        return replace(super().poll(run_id), recorded=self.recorded)


def _published(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A target holding the promoted model, and the run's record of it."""
    target = tmp_path / "models" / "ml" / "prod"
    target.mkdir(parents=True)
    for name in ("model.onnx", "results.json"):
        (target / name).write_text(json.dumps({"file": name}))
    return target.as_uri(), {name: sha256_of(target / name)
                             for name in ("model.onnx", "results.json")}


def _controller(tmp_path: Path, services: InferenceServices,
                recorded: dict[str, str]) -> Controller:
    config = Config(default_output=(tmp_path / "out").as_uri() + "/{namespace}/{name}",
                    kserve_enabled=True,
                    namespace_prefixes=((tmp_path / "out").as_uri() + "/{namespace}/",
                                        (tmp_path / "models").as_uri() + "/{namespace}/"))
    backend = RecordedBackend(phase="Succeeded", recorded=recorded)
    return Controller(backend, config, OperatorMetrics(),
                      results_reader=lambda output: run_results(sha256=recorded["results.json"]),
                      copier=lambda output, target, digests: None, kserve_api=services,
                      clock=lambda: NOW)


def _job(target: str, canary: dict[str, Any] | None = None, generation: int = 1) -> JobView:
    promotion: dict[str, Any] = {"target": target}
    if canary is not None:
        promotion["canary"] = canary
    output = target.replace("/models/ml/prod", "/out/ml/digits")
    return JobView(namespace="ml", name="digits", uid="uid-1", generation=generation,
                   spec={**spec(**promotion), "output": output},
                   status=in_flight(artifacts={"output": output}),
                   annotations={"modelpress.io/inference-service": "digits"})


def _promotion(view: JobView) -> dict[str, Any]:
    assert view.status is not None
    return dict(view.status["promotion"])


def _condition(view: JobView, type_: str) -> tuple[str, str]:
    assert view.status is not None
    found = next(c for c in view.status["conditions"] if c["type"] == type_)
    return found["status"], found["reason"]


def test_a_promotion_rolls_out_as_a_canary_then_promotes_on_an_edit(tmp_path: Path) -> None:
    target, recorded = _published(tmp_path)
    services = InferenceServices(knative())
    services.service["metadata"]["labels"] = {"modelpress.io/promotion": "enabled"}
    controller = _controller(tmp_path, services, recorded)
    view = _job(target, {"trafficPercent": 20})
    view = apply(view, controller.sync(view, Events()))
    predictor = services.service["spec"]["predictor"]
    assert predictor == {"model": {**MODEL, "storageUri": target}, "canaryTrafficPercent": 20}
    assert services.service["metadata"]["annotations"]["modelpress.io/promotion"] == JOB
    assert _promotion(view)["decision"] == "Pending"
    assert _condition(view, "CanaryReady") == ("Unknown", "AwaitingKServe")

    services.report(**_predictor(20))  # KServe rolled the canary out
    view = apply(view, controller.sync(view, Events()))
    assert _promotion(view)["decision"] == "Promoted"
    assert _promotion(view)["stableUri"] == OLD
    assert _condition(view, "CanaryReady") == ("True", "CanaryServing")
    assert len(services.patches) == 1  # looking is not patching

    view = replace(view, generation=2, spec={**view.spec, "promotion": {
        **view.spec["promotion"], "canary": {"trafficPercent": 20, "action": "promote"}}})
    view = apply(view, controller.sync(view, Events()))
    assert "canaryTrafficPercent" not in services.service["spec"]["predictor"]
    assert _promotion(view)["decision"] == "Pending"
    services.report(**_predictor(100, rolled_out="digits-predictor-00002"))
    view = apply(view, controller.sync(view, Events()))
    assert _promotion(view)["decision"] == "Promoted"
    assert _condition(view, "CanaryReady") == ("True", "CanaryPromoted")


def test_a_rollback_edit_restores_the_previous_model(tmp_path: Path) -> None:
    target, recorded = _published(tmp_path)
    services = InferenceServices(standard())
    services.service["metadata"]["labels"] = {"modelpress.io/promotion": "enabled"}
    controller = _controller(tmp_path, services, recorded)
    view = _job(target)
    view = apply(view, controller.sync(view, Events()))
    [entry] = services.service["spec"]["canary"]
    assert entry["predictor"]["model"]["storageUri"] == target
    assert entry["trafficPercent"] == 10
    view = replace(view, generation=2, spec={**view.spec, "promotion": {
        **view.spec["promotion"], "canary": {"action": "rollback"}}})
    events = Events()
    view = apply(view, controller.sync(view, events))
    assert "canary" not in services.service["spec"]
    assert services.service["spec"]["predictor"]["model"]["storageUri"] == OLD
    assert _promotion(view)["decision"] == "Rejected"
    assert _condition(view, "Promoted") == ("False", "CanaryRolledBack")
    assert ("Warning", "CanaryRolledBack") in [(t, r) for t, r, _ in events.seen]


def test_tightened_gates_roll_a_live_canary_back(tmp_path: Path) -> None:
    target, recorded = _published(tmp_path)
    services = InferenceServices(knative())
    services.service["metadata"]["labels"] = {"modelpress.io/promotion": "enabled"}
    controller = _controller(tmp_path, services, recorded)
    view = _job(target)
    view = apply(view, controller.sync(view, Events()))
    view = replace(view, generation=2, spec={**view.spec, "promotion": {
        **view.spec["promotion"], "gates": {"minCompressionRatio": 50.0}}})
    view = apply(view, controller.sync(view, Events()))
    assert services.service["spec"]["predictor"] == {"model": dict(MODEL),
                                                     "canaryTrafficPercent": 0}
    assert _promotion(view)["decision"] == "Rejected"
    assert _condition(view, "Promoted") == ("False", "GatesFailed")
    assert _condition(view, "CanaryReady") == ("False", "CanaryRolledBack")


def test_a_forged_model_gets_no_more_traffic(tmp_path: Path) -> None:
    """Promoting re-reads the model at the canary's uri: bytes changed since the run are
    refused, and the service keeps its canary."""
    target, recorded = _published(tmp_path)
    services = InferenceServices(knative())
    services.service["metadata"]["labels"] = {"modelpress.io/promotion": "enabled"}
    controller = _controller(tmp_path, services, recorded)
    view = _job(target)
    view = apply(view, controller.sync(view, Events()))
    (Path(target.removeprefix("file://")) / "model.onnx").write_text("forged")
    view = replace(view, generation=2, spec={**view.spec, "promotion": {
        **view.spec["promotion"], "canary": {"action": "promote"}}})
    view = apply(view, controller.sync(view, Events()))
    assert services.service["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert _promotion(view)["decision"] == "Rejected"
    assert _condition(view, "Promoted") == ("False", "DigestMismatch")


def test_a_service_that_has_not_opted_in_gets_no_canary(tmp_path: Path) -> None:
    target, recorded = _published(tmp_path)
    services = InferenceServices(knative())  # no modelpress.io/promotion: enabled label
    controller = _controller(tmp_path, services, recorded)
    view = _job(target)
    view = apply(view, controller.sync(view, Events()))
    assert services.patches == []
    assert _promotion(view)["decision"] == "Pending"
    assert _condition(view, "Promoted") == ("False", "InferenceServiceRefused")
