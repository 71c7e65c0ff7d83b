"""KServe: reading and changing the InferenceService a promoted model rolls out to.

The promotion decides what a service should serve (a `CanaryStep`, modelpress.operator.
promotion); this module works out, from the service as read, the merge patch that gets it
there — a Knative canary (`canaryTrafficPercent`) or KServe 0.20's `spec.canary` for
Standard deployments — and reads KServe's status back into the job's CanaryReady
condition (docs/kserve-canary.md). The controller does the reads and the patches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelpress.operator.promotion import CanaryStep
from modelpress.operator.status import (
    AWAITING_KSERVE,
    CANARY_PROMOTED,
    CANARY_ROLLED_BACK,
    CANARY_SERVING,
    ROLLING_OUT,
    ROLLOUT_FAILED,
    ConditionStatus,
    Rollout,
)

KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
# The label by which an InferenceService lets modelpress patch it ("enabled").
PROMOTION_LABEL = "modelpress.io/promotion"
# The annotation modelpress puts on an InferenceService it rolls a model out to, naming the
# job ("namespace/name"): who changed the service, for its owners.
ROLLOUT_ANNOTATION = "modelpress.io/promotion"
# KServe's deployment mode; 0.20 normalises the legacy RawDeployment to Standard, the mode
# whose canaries are entries of spec.canary (Knative's is canaryTrafficPercent).
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
STANDARD_MODES = ("Standard", "RawDeployment")
# KServe conditions whose False means the new revision or canary failed to roll out.
ROLLOUT_CONDITIONS = ("PredictorReady", "LatestDeploymentReady", "CanaryPredictorReady")


class PromotionRefused(Exception):
    """The InferenceService has not opted in to promotion by modelpress."""


def opted_in_service(api: Any, namespace: str, name: str) -> dict[str, Any]:
    """The InferenceService `namespace/name`; PromotionRefused unless it carries the label
    `modelpress.io/promotion: enabled` (a service's owners opt in, not a job's author).

    `api` is a kubernetes.client.CustomObjectsApi.
    """
    service: dict[str, Any] = api.get_namespaced_custom_object(
        KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL, name)
    labels = (service.get("metadata") or {}).get("labels") or {}
    if labels.get(PROMOTION_LABEL) != "enabled":
        raise PromotionRefused(f"InferenceService {namespace}/{name} has not opted in to "
                               f"promotion: it needs the label {PROMOTION_LABEL}: enabled")
    return service


@dataclass(frozen=True)
class RolloutChange:
    """The merge patch that brings a service to a step (None: it is there already), and the
    storageUri it served before the rollout."""

    patch: dict[str, Any] | None
    stable_uri: str | None


def is_standard(service: Mapping[str, Any]) -> bool:
    """Whether KServe runs `service` as a Standard (raw) deployment, whose canaries are
    entries of spec.canary (KServe 0.20), rather than on Knative, whose canary is the
    predictor's canaryTrafficPercent: a spec.canary already there, else the deployment mode
    its annotation or (for a service whose annotation KServe defaulted) its status names."""
    if "canary" in (service.get("spec") or {}):
        return True
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    mode = annotations.get(DEPLOYMENT_MODE_ANNOTATION) \
        or (service.get("status") or {}).get("deploymentMode") or ""
    return mode in STANDARD_MODES


def canary_name(job: str, uri: str) -> str:
    """The name of a Standard deployment's canary predictor for `job`'s model at `uri` (its
    Deployment is {service}-{name}-predictor)."""
    return "mp-" + hashlib.sha256(f"{job}\n{uri}".encode()).hexdigest()[:10]


def rollout_change(service: Mapping[str, Any], step: CanaryStep, job: str) -> RolloutChange:
    """What to patch on `service` (read just before) so that it is where `step` asks, with
    the annotation naming `job` ("namespace/name")."""
    predictor = (service.get("spec") or {}).get("predictor") or {}
    block = _model_block(predictor)
    current_uri = (predictor.get(block) or {}).get("storageUri")
    stable = step.stable_uri or (current_uri if current_uri != step.uri else None)
    spec = _standard_spec(service, step, job, block, stable) if is_standard(service) \
        else _serverless_spec(predictor, step, block, stable)
    if not spec:
        return RolloutChange(None, stable)
    return RolloutChange({"metadata": {"annotations": {ROLLOUT_ANNOTATION: job}},
                          "spec": spec}, stable)


def _model_block(predictor: Mapping[str, Any]) -> str:
    """The predictor's block holding storageUri: `model` (the current KServe form), else the
    framework block an older service names (`onnx`, `sklearn`, ...)."""
    frameworks = [key for key, value in predictor.items()
                  if isinstance(value, dict) and "storageUri" in value]
    return "model" if "model" in predictor or not frameworks else frameworks[0]


def _serverless_spec(predictor: Mapping[str, Any], step: CanaryStep, block: str,
                     stable: str | None) -> dict[str, Any]:
    """The spec patch on Knative: the new storageUri with canaryTrafficPercent (KServe keeps
    the last revision rolled out with all traffic as the stable one); promoting removes the
    percent, so the latest revision takes all traffic; a rollback puts the previous
    storageUri back with 0%, which pins traffic to the stable revision at once."""
    current_uri = (predictor.get(block) or {}).get("storageUri")
    uri, percent = {"Canary": (step.uri, step.percent), "Promoted": (step.uri, None),
                    "RolledBack": (stable or step.uri, 0)}[step.state]
    if step.state == "RolledBack" and current_uri != step.uri:
        return {}  # it does not serve this model (any more): nothing to take back
    wanted: dict[str, Any] = {}
    if uri != current_uri:
        wanted[block] = {"storageUri": uri}
    if percent != predictor.get("canaryTrafficPercent"):
        wanted["canaryTrafficPercent"] = percent  # None removes it (a merge patch)
    return {"predictor": wanted} if wanted else {}


def _standard_spec(service: Mapping[str, Any], step: CanaryStep, job: str, block: str,
                   stable: str | None) -> dict[str, Any]:
    """The spec patch of a Standard deployment (KServe 0.20): a spec.canary entry named for
    the job and model, a copy of the stable predictor's model with the new storageUri;
    promoting names the stable predictor after it with the new storageUri and removes the
    entry (KServe promotes without a restart); a rollback removes the entry (and, after a
    promotion, puts the previous storageUri back)."""
    spec = service.get("spec") or {}
    predictor = spec.get("predictor") or {}
    model = dict(predictor.get(block) or {})
    name = canary_name(job, step.uri)
    canaries = list(spec.get("canary") or [])
    others = [entry for entry in canaries if (entry.get("predictor") or {}).get("name") != name]
    wanted: dict[str, Any] = {}
    if step.state == "Canary":
        entry = {"predictor": {"name": name, block: {**model, "storageUri": step.uri}},
                 "trafficPercent": step.percent}
        if entry not in canaries:
            wanted["canary"] = [*others, entry]
        return wanted
    if others != canaries:
        wanted["canary"] = others or None
    if step.state == "Promoted" and (model.get("storageUri"), predictor.get("name")) \
            != (step.uri, name):
        wanted["predictor"] = {"name": name, block: {"storageUri": step.uri}}
    elif step.state == "RolledBack" and model.get("storageUri") == step.uri and stable:
        wanted["predictor"] = {block: {"storageUri": stable}}
    return wanted


def applied_rollout(step: CanaryStep, stable_uri: str | None) -> Rollout:
    """The rollout just patched: KServe has not looked at it yet."""
    assert step.inference_service is not None
    if step.state == "RolledBack":
        ready, reason, message = _rolled_back(step.inference_service)
    else:
        ready, reason, message = "Unknown", AWAITING_KSERVE, (
            f"InferenceService {step.inference_service} was updated; waiting for KServe to "
            "roll it out")
    return Rollout(step.inference_service, step.state, step.uri, stable_uri, step.percent,
                   ready, reason, message)


def observed_rollout(service: Mapping[str, Any], step: CanaryStep, job: str,
                     stable_uri: str | None) -> Rollout:
    """The rollout as KServe reports it in the status of `service` (read, not patched)."""
    assert step.inference_service is not None
    ready, reason, message = _rolled_back(step.inference_service) \
        if step.state == "RolledBack" else _progress(service, step, job)
    return Rollout(step.inference_service, step.state, step.uri, stable_uri, step.percent,
                   ready, reason, message)


Progress = tuple[ConditionStatus, str, str]  # a CanaryReady condition: status, reason, message


def _rolled_back(service: str) -> Progress:
    return "False", CANARY_ROLLED_BACK, f"InferenceService {service} serves its previous model"


def _progress(service: Mapping[str, Any], step: CanaryStep, job: str) -> Progress:
    """CanaryReady from what KServe reports: nothing until its status is of the service's
    current generation; False when a rollout condition is False; else how far it got."""
    metadata, status = service.get("metadata") or {}, service.get("status") or {}
    name, generation = metadata.get("name", ""), metadata.get("generation")
    if status.get("observedGeneration") != generation:
        return "Unknown", AWAITING_KSERVE, (f"KServe has not yet reported on generation "
                                            f"{generation} of InferenceService {name}")
    for condition in status.get("conditions") or []:
        if condition.get("type") in ROLLOUT_CONDITIONS and condition.get("status") == "False":
            return "False", ROLLOUT_FAILED, (
                f"InferenceService {name}: {condition.get('type')} is False "
                f"({condition.get('reason', '')}): {condition.get('message', '')}")
    if is_standard(service):
        return _standard_progress(status, step, canary_name(job, step.uri), name)
    return _serverless_progress(status, step, name)


def _serverless_progress(status: Mapping[str, Any], step: CanaryStep, name: str) -> Progress:
    """From status.components.predictor: the latest revision ready, its traffic share (the
    entries marked latestRevision), and after a promotion the latest rolled-out revision."""
    predictor = (status.get("components") or {}).get("predictor") or {}
    created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    if not ready or (created and created != ready):
        return "Unknown", ROLLING_OUT, (f"revision {created or '(new)'} of InferenceService "
                                        f"{name} is not ready yet")
    share = sum(int(target.get("percent") or 0) for target in predictor.get("traffic") or []
                if target.get("latestRevision"))
    wanted = 100 if step.state == "Promoted" else step.percent
    if share != wanted:
        return "Unknown", ROLLING_OUT, (f"revision {ready} of InferenceService {name} has "
                                        f"{share}% of traffic; waiting for {wanted}%")
    stable = predictor.get("latestRolledoutRevision")
    if step.state == "Promoted":
        if stable != ready:
            return "Unknown", ROLLING_OUT, f"revision {ready} is not yet rolled out"
        return "True", CANARY_PROMOTED, f"revision {ready} of {name} serves all traffic"
    return "True", CANARY_SERVING, (f"revision {ready} of {name} serves {wanted}% of traffic, "
                                    f"revision {stable} the rest")


def _standard_progress(status: Mapping[str, Any], step: CanaryStep, canary: str,
                       name: str) -> Progress:
    """From status.canaryStatuses (KServe 0.20): the job's canary ready with its share; after
    a promotion, the entry gone and the predictor ready."""
    entry = next((item for item in status.get("canaryStatuses") or []
                  if item.get("name") == canary), None)
    if step.state == "Promoted":
        predictor_ready = any(c.get("type") == "PredictorReady" and c.get("status") == "True"
                              for c in status.get("conditions") or [])
        if entry is not None or not predictor_ready:
            return "Unknown", ROLLING_OUT, (f"predictor {canary} of InferenceService {name} "
                                            "is not yet the only one serving")
        return "True", CANARY_PROMOTED, f"predictor {canary} of {name} serves all traffic"
    if entry is None or not entry.get("ready"):
        return "Unknown", ROLLING_OUT, f"canary {canary} of InferenceService {name} is not ready"
    share = int(entry.get("trafficPercent") or 0)
    if share != step.percent:
        return "Unknown", ROLLING_OUT, (f"canary {canary} of InferenceService {name} has "
                                        f"{share}% of traffic; waiting for {step.percent}%")
    return "True", CANARY_SERVING, f"canary {canary} of {name} serves {share}% of traffic"
