"""The promotion decision on a finished job, and its actions: copy the model to
`promotion.target`, point a KServe InferenceService at it.

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

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from modelpress import gates
from modelpress.api import CompressionStatus, Promotion, PromotionStatus
from modelpress.operator.status import (
    GATES_FAILED,
    GATES_PASSED,
    NO_RUN_RECORD,
    PROMOTED,
    SERVICE_REFUSED,
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
        return rejected(status, GATES_FAILED, verdict.reasons, now), []
    reasons = list(verdict.reasons)
    service, refusal = _service(annotations, kserve_enabled, namespace, reasons)
    if refusal:
        return rejected(status, SERVICE_REFUSED, [*reasons, refusal], now), []
    if promotion.target is None and service is None:
        status = status.model_copy(update={"promotion": PromotionStatus(
            decision="Promoted", reasons=[*reasons, "no promotion.target: nothing copied"])})
        return with_condition(status, PROMOTED, "True", GATES_PASSED,
                              "every gate passed; no promotion.target is set", now), []
    current = status.promotion
    if current and current.decision == "Promoted" and current.promoted_uri == promotion.target:
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


def patch_inference_service(api: Any, namespace: str, name: str, storage_uri: str) -> None:
    """Point a KServe InferenceService that opted in (`opted_in_service`) at `storage_uri`.

    The predictor's `model` block is the current KServe form; older services name a
    framework block (`onnx`, `sklearn`, …) that holds `storageUri`, and that one is
    patched instead.
    """
    service = opted_in_service(api, namespace, name)
    predictor = service.get("spec", {}).get("predictor", {})
    frameworks = [key for key, value in predictor.items()
                  if isinstance(value, dict) and "storageUri" in value]
    block = "model" if "model" in predictor or not frameworks else frameworks[0]
    body = {"spec": {"predictor": {block: {"storageUri": storage_uri}}}}
    api.patch_namespaced_custom_object(KSERVE_GROUP, KSERVE_VERSION, namespace, KSERVE_PLURAL,
                                       name, body)
