"""The promotion decision on a finished job, and its actions: copy the model to
`promotion.target`, roll it out to a KServe InferenceService as a canary.

Deciding is pure and works on stored results, so editing `spec.promotion` re-judges a
finished job without re-running it. The gates themselves are judged in `modelpress.gates`,
the same code the report step and `modelpress run` use. The actions are the only side
effects, kept in two functions the controller calls.

What is promoted is the model the run produced, not whatever the job's output holds now:
the output is a place the job's tenant can write, so every file is copied only when the
bytes read have the sha256 the run recorded (`RunState.recorded`, kept where the tenant
cannot write), and a job whose run left no such record is not promoted at all.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from modelpress import gates, registry
from modelpress.api import (
    Canary,
    CompressionStatus,
    Promotion,
    PromotionStatus,
    RegisteredVersion,
)
from modelpress.operator.status import (
    AWAITING_KSERVE,
    CANARY_PROMOTED,
    CANARY_ROLLED_BACK,
    CANARY_SERVING,
    GATES_FAILED,
    GATES_PASSED,
    NO_RUN_RECORD,
    PROMOTED,
    REGISTRY_UNAVAILABLE,
    ROLLING_OUT,
    ROLLOUT_FAILED,
    SERVICE_REFUSED,
    ConditionStatus,
    Rollout,
    RolloutState,
    find_condition,
    with_condition,
)
from modelpress.store import Store, open_store, sha256_of

# What a promoted model consists of: every file the run published (the model, its external
# data and preprocessing files, and the evidence that it passed) but the fp32 baseline, which
# stays with the job.
MODEL = "model.onnx"
BASELINE_FILES = ("baseline.onnx", "baseline.onnx.data")
BASELINE_FOLDER = "baseline/"  # a language model's fp32 onnxruntime-genai folder
KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
# A job's annotation naming the InferenceService ("name", or "namespace/name" with the
# job's own namespace) to point at the promoted model.
INFERENCE_SERVICE_ANNOTATION = "modelpress.io/inference-service"
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


class DigestMismatch(Exception):
    """A file to promote is not what the run recorded (changed, or never recorded)."""


@dataclass(frozen=True)
class Promote:
    """Copy the output to `target` (when set), then point `inference_service` (a name in
    the job's namespace) at it."""

    output: str
    target: str | None
    inference_service: str | None = None


def decide(status: CompressionStatus, promotion: Promotion, annotations: Mapping[str, str],
           kserve_enabled: bool, output: str, namespace: str, now: datetime,
           recorded: Mapping[str, str]) -> tuple[CompressionStatus, list[Promote]]:
    """Judge a succeeded job (in `namespace`) on its results: rejected with every failed
    gate, for an InferenceService in another namespace, or when there is something to
    promote but the run recorded no digest of its model (`recorded`); promoted at once when
    there is nothing to do, else Pending with the Promote action that finishes it."""
    assert status.results is not None
    verdict = gates.judge(status.results, promotion)
    if verdict.decision == "Rejected":
        return withdrawn(rejected(status, GATES_FAILED, verdict.reasons, now), status.promotion,
                         output)
    reasons = list(verdict.reasons)
    service, refusal = _service(annotations, kserve_enabled, namespace, reasons)
    if refusal:
        return rejected(status, SERVICE_REFUSED, [*reasons, refusal], now), []
    step = canary_step(status.promotion, promotion, service, output)
    if step is not None:  # a rollout this job started: move it as spec.promotion.canary says
        return with_reasons(status, reasons), [step]
    if promotion.target is None and service is None and promotion.registry is None:
        status = status.model_copy(update={"promotion": PromotionStatus(
            decision="Promoted", reasons=[*reasons, "no promotion.target: nothing copied"])})
        return with_condition(status, PROMOTED, "True", GATES_PASSED,
                              "every gate passed; no promotion.target is set", now), []
    current = status.promotion
    if current and current.decision == "Promoted" and current.promoted_uri == promotion.target \
            and registry.same_target(current.registry, promotion.registry):
        return status.model_copy(update={"promotion": current.model_copy(
            update={"reasons": reasons})}), []
    if MODEL not in recorded:
        return rejected(status, NO_RUN_RECORD, [*reasons, (
            "the run left no record of its model's sha256, so what its output holds cannot "
            "be verified: nothing was promoted")], now), []
    status = status.model_copy(update={"promotion": PromotionStatus(
        decision="Pending", reasons=reasons)})
    return status, [Promote(output=output, target=promotion.target, inference_service=service)]


def _service(annotations: Mapping[str, str], kserve_enabled: bool, namespace: str,
             reasons: list[str]) -> tuple[str | None, str | None]:
    """The name of the InferenceService to patch (in `namespace`) or None, and why the
    promotion is refused when the annotation names another namespace. A note joins
    `reasons` when the annotation is ignored."""
    named = annotations.get(INFERENCE_SERVICE_ANNOTATION)
    if not named:
        return None, None
    if not kserve_enabled:
        reasons.append(f"annotation {INFERENCE_SERVICE_ANNOTATION} ignored: KServe patching "
                       "is not enabled in the operator")
        return None, None
    service_namespace, _, name = named.rpartition("/")
    if service_namespace not in ("", namespace):
        return None, (f"annotation {INFERENCE_SERVICE_ANNOTATION} names an InferenceService "
                      f"in namespace {service_namespace}; a job may only promote to one in "
                      f"its own namespace ({namespace}): nothing was promoted")
    return name or None, None


def rejected(status: CompressionStatus, reason: str, reasons: list[str],
             now: datetime) -> CompressionStatus:
    """Rejected for `reason`; the digests the run recorded stay in the status."""
    current = status.promotion or PromotionStatus(decision="Pending")
    status = status.model_copy(update={"promotion": PromotionStatus(
        decision="Rejected", reasons=reasons, sha256=current.sha256,
        model_sha256=current.model_sha256)})
    return with_condition(status, PROMOTED, "False", reason, "; ".join(reasons), now)


def copy_to_target(output: str, target: str, recorded: Mapping[str, str],
                   opener: Callable[[str], Store] = open_store) -> None:
    """Copy the promoted files the run recorded (`recorded`: sha256 by file name) from the
    job's output to `target`. Every file is read and hashed before any is written, and the
    bytes written are the bytes hashed: DigestMismatch, with the target untouched, when one
    differs from the record (StoreError when one cannot be read or written)."""
    source, destination = opener(output), opener(target)
    with tempfile.TemporaryDirectory(prefix="modelpress-promote-") as scratch:
        staged = {key: verified(source, key, recorded, Path(scratch))
                  for key in promoted_files(recorded)}
        for key, local in staged.items():
            destination.put_file(local, key)


def promoted_files(recorded: Mapping[str, str]) -> list[str]:
    """The files a promotion copies, the model first: every file the run recorded but the
    baseline."""
    return [MODEL, *sorted(key for key in recorded if key != MODEL and key not in BASELINE_FILES
                           and not key.startswith(BASELINE_FOLDER))]


def check_model(output: str, recorded: Mapping[str, str],
                opener: Callable[[str], Store] = open_store) -> None:
    """DigestMismatch unless the model in `output` is the one the run recorded (before an
    InferenceService is pointed at the output itself)."""
    with tempfile.TemporaryDirectory(prefix="modelpress-promote-") as scratch:
        verified(opener(output), MODEL, recorded, Path(scratch))


def verified(source: Store, key: str, recorded: Mapping[str, str], folder: Path) -> Path:
    """`key` read from `source` into `folder`, when its sha256 is the one the run recorded."""
    expected = recorded.get(key)
    if expected is None:
        raise DigestMismatch(f"the run recorded no sha256 for {key}: nothing was promoted")
    local = source.get_file(key, folder / key)
    actual = sha256_of(local)
    if actual != expected:
        raise DigestMismatch(
            f"{source.uri(key)} has sha256 {actual} but the run recorded {expected}: it was "
            "changed after the run wrote it, so nothing was promoted")
    return local


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


# ------------------------------------------------------------------ KServe rollout
# A promoted model reaches an InferenceService as a canary first (docs/kserve-canary.md).
# What to set is decided here from the service as read; the controller reads and patches.


@dataclass(frozen=True)
class CanaryStep(Promote):
    """Bring `inference_service` to `state` for the model at `uri`: a canary with `percent`
    of the traffic, all traffic (Promoted), or its previous model, `stable_uri`, back
    (RolledBack). The copy (if any) is done: a step only changes the service."""

    uri: str = ""
    state: RolloutState = "Canary"
    percent: int = 10
    stable_uri: str | None = None


@dataclass(frozen=True)
class RolloutChange:
    """The merge patch that brings a service to a step (None: it is there already), and the
    storageUri it served before the rollout."""

    patch: dict[str, Any] | None
    stable_uri: str | None


def rollout_state(canary: Canary | None) -> RolloutState:
    """What spec.promotion.canary asks of the service: its action, else a canary."""
    action = canary.action if canary else None
    if action == "promote":
        return "Promoted"
    return "RolledBack" if action == "rollback" else "Canary"


def first_step(action: Promote, canary: Canary | None) -> CanaryStep:
    """The rollout that follows a Promote naming an InferenceService (after its copy)."""
    assert action.inference_service is not None
    return CanaryStep(output=action.output, target=action.target,
                      inference_service=action.inference_service,
                      uri=action.target or action.output, state=rollout_state(canary),
                      percent=(canary or Canary()).traffic_percent)


def canary_step(current: PromotionStatus | None, promotion: Promotion, service: str | None,
                output: str) -> CanaryStep | None:
    """The step that moves the rollout this job started on `service` for the same model
    (the same uri), or None when there is none yet (a Promote starts it)."""
    uri = promotion.target or output
    if current is None or service is None or current.canary_service != service \
            or current.canary_uri != uri:
        return None
    return CanaryStep(output=output, target=promotion.target, inference_service=service,
                      uri=uri, state=rollout_state(promotion.canary),
                      percent=(promotion.canary or Canary()).traffic_percent,
                      stable_uri=current.stable_uri)


def withdrawn(status: CompressionStatus, before: PromotionStatus | None,
              output: str) -> tuple[CompressionStatus, list[Promote]]:
    """A rejected status that keeps the record of the rollout `before` it, and the step that
    rolls the service back when the rejected model still serves traffic there."""
    if before is None or before.canary_service is None or before.canary_uri is None:
        return status, []
    assert status.promotion is not None
    status = status.model_copy(update={"promotion": status.promotion.model_copy(update={
        key: getattr(before, key) for key in ("canary_service", "canary_state", "canary_uri",
                                              "canary_traffic_percent", "stable_uri")})})
    if before.canary_state == "RolledBack":
        return status, []
    return status, [CanaryStep(output=output, target=None,
                               inference_service=before.canary_service, uri=before.canary_uri,
                               state="RolledBack", percent=before.canary_traffic_percent or 0,
                               stable_uri=before.stable_uri)]


def with_reasons(status: CompressionStatus, reasons: list[str]) -> CompressionStatus:
    assert status.promotion is not None
    return status.model_copy(update={"promotion": status.promotion.model_copy(
        update={"reasons": reasons})})


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


# ------------------------------------------------------------------ model registry


def stage_verified(output: str, recorded: Mapping[str, str], folder: Path,
                   opener: Callable[[str], Store] = open_store) -> Path:
    """`folder` holding the promoted files read from `output`, each only when its sha256 is
    the one the run recorded (DigestMismatch otherwise): what a registry version is made of,
    never the output itself, which the job's tenant can write."""
    source = opener(output)
    for key in promoted_files(recorded):
        verified(source, key, recorded, folder)
    return folder


def with_registered(status: CompressionStatus, version: RegisteredVersion | None,
                    now: datetime) -> CompressionStatus:
    """A promoted status with the registry version it made and where its alias moved."""
    if version is None:
        return status
    assert status.promotion is not None
    status = status.model_copy(update={"promotion": status.promotion.model_copy(
        update={"registry": version})})
    moved = (f"version {version.version} of registered model {version.model} is "
             f"@{version.alias} (before: {version.previous_version or 'unset'})")
    condition = find_condition(status, PROMOTED)
    assert condition is not None  # set by status.promoted
    message = "; ".join(filter(None, [condition.message, moved]))
    return with_condition(status, PROMOTED, "True", condition.reason, message, now)


def registry_unavailable(status: CompressionStatus, problem: str,
                         now: datetime) -> CompressionStatus:
    """The gates passed but the registry failed: nothing else was promoted, the decision
    stays Pending and the next poll tries again (finding any version made meanwhile)."""
    return with_condition(status, PROMOTED, "False", REGISTRY_UNAVAILABLE,
                          f"every gate passed but the registry failed (will retry): {problem}",
                          now)
