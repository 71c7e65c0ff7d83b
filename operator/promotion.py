"""The promotion decision on a finished job, and its actions: copy the model to
`promotion.target`, roll it out to a KServe InferenceService as a canary.

Deciding is pure and works on stored results, so editing `spec.promotion` re-judges a
finished job without re-running it. The gates themselves are judged in `modelpress.gates`,
the same code the report step and `modelpress run` use. The actions are the only side
effects, kept in two functions the controller calls; the InferenceService's side of a
rollout is modelpress.operator.kserve.

What is promoted is the model the run produced, not whatever the job's output holds now:
the output is a place the job's tenant can write, so every file is copied only when the
bytes read have the sha256 the run recorded (`RunState.recorded`, kept where the tenant
cannot write), and a job whose run left no such record is not promoted at all.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from modelpress import gates, registry
from modelpress.api import (
    Canary,
    CompressionStatus,
    Promotion,
    PromotionStatus,
    RegisteredVersion,
)
from modelpress.operator.status import (
    GATES_FAILED,
    GATES_PASSED,
    NO_RUN_RECORD,
    PROMOTED,
    REGISTRY_UNAVAILABLE,
    SERVICE_REFUSED,
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
# A job's annotation naming the InferenceService ("name", or "namespace/name" with the
# job's own namespace) to point at the promoted model.
INFERENCE_SERVICE_ANNOTATION = "modelpress.io/inference-service"


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


# ------------------------------------------------------------------ KServe rollout
# A promoted model reaches an InferenceService as a canary first (docs/kserve-canary.md).
# Which step a job's rollout is at is decided here; what to patch on the service as read,
# and what KServe reports back, in modelpress.operator.kserve.


@dataclass(frozen=True)
class CanaryStep(Promote):
    """Bring `inference_service` to `state` for the model at `uri`: a canary with `percent`
    of the traffic, all traffic (Promoted), or its previous model, `stable_uri`, back
    (RolledBack). The copy (if any) is done: a step only changes the service."""

    uri: str = ""
    state: RolloutState = "Canary"
    percent: int = 10
    stable_uri: str | None = None


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
