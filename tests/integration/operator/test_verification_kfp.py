"""Verification with the Kubeflow backend: the KFP stand-in and a real S3 server.

A job's Kubeflow run writes with its tenant's credentials, so the tenant can rewrite
anything it wrote. The operator stages the run's model where only the platform writes,
has it measured again by a run in the platform's namespace (with the platform's Secret),
judges the verified figures and promotes the staged bytes: what the tenant changes in its
output after staging changes nothing that is promoted.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp_standin import KfpStandIn

from modelpress.api import Results
from modelpress.operator.backends.kfp import KfpBackend
from modelpress.operator.controller import Controller, view_of
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.reconcile import FINALIZER, Config, JobView
from modelpress.operator.scheduling import merged
from modelpress.records import Artifacts, PromotionVerdict, ResultsDocument

ROOT = Path(__file__).resolve().parents[3]
MODEL_BYTES = b"the model the run produced"
PLANTED = b"a model the tenant planted after staging"
PLATFORM_NAMESPACE = "modelpress-platform"


@pytest.fixture()
def kfp_api() -> Iterator[KfpStandIn]:
    server = KfpStandIn().start()
    yield server
    server.stop()


@pytest.fixture()
def buckets(s3_env: Any) -> tuple[str, str]:
    """The tenants' bucket and the platform's, fresh for each test."""
    suffix = uuid.uuid4().hex[:10]
    return f"mp-tenants-{suffix}", f"mp-platform-{suffix}"


def _controller(kfp_api: KfpStandIn, tenants: str, platform: str) -> Controller:
    config = Config(default_output=f"s3://{tenants}/{{namespace}}/{{name}}/",
                    namespace_prefixes=(f"s3://{tenants}/{{namespace}}/",),
                    verify_prefix=f"s3://{platform}/verify/", job_secrets=True)
    backend = KfpBackend(kfp_api.url, namespace="kubeflow", timeout_seconds=5.0, attempts=2,
                         backoff_seconds=0.01, verify_namespace=PLATFORM_NAMESPACE)
    return Controller(backend, config, OperatorMetrics(), verifier=backend)


def _job(tenants: str, target: str) -> JobView:
    document = yaml.safe_load((ROOT / "examples" / "digits-prune-quantize.yaml").read_text())
    document["metadata"].update(name="digits", namespace="team-a", uid="uid-1", generation=1,
                                finalizers=[FINALIZER])
    document["spec"]["promotion"] = {"gates": {"minCompressionRatio": 3.5}, "target": target}
    return view_of(document)


def _events(type_: str, reason: str, message: str) -> None:
    """Events are not what these tests look at."""


def _synced(controller: Controller, view: JobView) -> JobView:
    """The job after a sync, as the API server holds it once the status patch is merged."""
    return replace(view, status=merged(view.status, controller.sync(view, _events)),
                   resource_version=str(int(view.resource_version or 0) + 1))


def _put(client: Any, bucket: str, key: str, data: bytes) -> None:
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    client.put_object(bucket, key, io.BytesIO(data), len(data))


def _results_json(location: str, ratio: float) -> bytes:
    figures = {"parameters": 1000, "metric": {"name": "accuracy", "value": 0.98}}
    results = Results.model_validate({
        "baseline": {**figures, "sizeBytes": 400_000},
        "compressed": {**figures, "sizeBytes": int(400_000 / ratio)},
        "compressionRatio": ratio, "accuracyDrop": 0.002, "speedup": {"cpu": 1.8}})
    artifacts = Artifacts(model=f"{location}model.onnx", baseline=f"{location}baseline.onnx",
                          report=f"{location}report.html", results=f"{location}results.json",
                          lineage=f"{location}lineage.json")
    document = ResultsDocument(results=results, artifacts=artifacts, steps=[],
                               promotion=PromotionVerdict(decision="Promoted", reasons=[]))
    return document.model_dump_json(by_alias=True, exclude_none=True).encode()


def _tenant_run_succeeds(controller: Controller, kfp_api: KfpStandIn, client: Any,
                         tenants: str, view: JobView) -> JobView:
    """Admit the job, publish what its run would (with the tenant's access), end the run."""
    view = _synced(controller, view)
    run_id = (view.status or {})["runId"]
    _put(client, tenants, "team-a/digits/model.onnx", MODEL_BYTES)
    _put(client, tenants, "team-a/digits/results.json",
         _results_json(f"s3://{tenants}/team-a/digits/", ratio=4.0))
    kfp_api.set_run(run_id, "SUCCEEDED")
    return _synced(controller, view)  # judged on its own figures: the model is staged


def _experiment_namespace(kfp_api: KfpStandIn, run: dict[str, Any]) -> Any:
    return kfp_api.state.experiments[run["experiment_id"]].get("namespace")


def _secrets(run: dict[str, Any]) -> set[str]:
    executors = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    return {secret["secretName"] for executor in executors.values()
            for secret in executor.get("secretAsEnv", [])}


def test_the_staged_model_is_verified_in_the_platform_namespace_and_promoted(
        kfp_api: KfpStandIn, s3_env: Any, buckets: tuple[str, str]) -> None:
    tenants, platform = buckets
    client = s3_env.client()
    controller = _controller(kfp_api, tenants, platform)
    target = f"s3://{tenants}/team-a/production/"
    view = _tenant_run_succeeds(controller, kfp_api, client, tenants, _job(tenants, target))
    verification = (view.status or {})["verification"]
    assert verification["phase"] == "Staged"
    staged_digest = hashlib.sha256(MODEL_BYTES).hexdigest()
    assert verification["candidate"]["sha256"] == {"model.onnx": staged_digest}

    # After staging, the tenant replaces the model and forges its figures.
    _put(client, tenants, "team-a/digits/model.onnx", PLANTED)
    _put(client, tenants, "team-a/digits/results.json",
         _results_json(f"s3://{tenants}/team-a/digits/", ratio=40.0))

    view = _synced(controller, view)  # the verification run is submitted
    run_id = (view.status or {})["verification"]["runId"]
    verifying = kfp_api.state.runs[run_id]
    tenant_run = kfp_api.state.runs[(view.status or {})["runId"]]
    assert _experiment_namespace(kfp_api, verifying) == PLATFORM_NAMESPACE
    assert _experiment_namespace(kfp_api, tenant_run) == "team-a"
    assert _secrets(verifying) == {"modelpress-platform-storage"}
    assert _secrets(tenant_run) == {"modelpress-storage"}
    assert staged_digest in json.dumps(verifying["pipeline_spec"])
    promoted = next(c for c in view.status["conditions"] if c["type"] == "Promoted")
    assert promoted["reason"] == "Verifying"

    # What the verification run publishes (only the platform writes under its prefix).
    verified = f"s3://{platform}/verify/team-a/uid-1/verified/"
    _put(client, platform, "verify/team-a/uid-1/verified/results.json",
         _results_json(verified, ratio=3.9))
    kfp_api.set_run(run_id, "SUCCEEDED")
    view = _synced(controller, view)

    status = view.status or {}
    assert status["promotion"]["decision"] == "Promoted", status
    assert status["results"]["compressionRatio"] == 3.9
    assert status["verification"]["reported"]["compressionRatio"] == 4.0  # the run's own
    assert any("the platform measured 3.9" in reason for reason in status["promotion"]["reasons"])
    assert status["promotion"]["modelSha256"] == staged_digest
    copied = client.get_object(tenants, "team-a/production/model.onnx").read()
    assert copied == MODEL_BYTES


def test_a_failed_verification_promotes_nothing(kfp_api: KfpStandIn, s3_env: Any,
                                                 buckets: tuple[str, str]) -> None:
    tenants, platform = buckets
    client = s3_env.client()
    controller = _controller(kfp_api, tenants, platform)
    view = _tenant_run_succeeds(controller, kfp_api, client, tenants,
                                _job(tenants, f"s3://{tenants}/team-a/production/"))
    view = _synced(controller, view)
    run_id = (view.status or {})["verification"]["runId"]
    kfp_api.set_run(run_id, "FAILED", error="candidate: sha256 does not match")
    status = _synced(controller, view).status or {}
    assert status["promotion"]["decision"] == "Rejected"
    promoted = next(c for c in status["conditions"] if c["type"] == "Promoted")
    assert promoted["reason"] == "VerificationFailed"
    assert "sha256 does not match" in promoted["message"]
    assert not list(client.list_objects(tenants, prefix="team-a/production/", recursive=True))


def test_deleting_the_job_terminates_its_verification_run(kfp_api: KfpStandIn, s3_env: Any,
                                                          buckets: tuple[str, str]) -> None:
    tenants, platform = buckets
    controller = _controller(kfp_api, tenants, platform)
    view = _tenant_run_succeeds(controller, kfp_api, s3_env.client(), tenants,
                                _job(tenants, f"s3://{tenants}/team-a/production/"))
    view = _synced(controller, view)
    run_id = (view.status or {})["verification"]["runId"]
    controller.delete(view, _events)
    assert kfp_api.state.runs[run_id]["state"] == "CANCELED"


def test_a_target_outside_the_namespace_is_still_refused(kfp_api: KfpStandIn, s3_env: Any,
                                                         buckets: tuple[str, str]) -> None:
    tenants, platform = buckets
    controller = _controller(kfp_api, tenants, platform)
    status = _synced(controller, _job(tenants, f"s3://{tenants}/team-b/production/")).status
    assert (status or {})["phase"] == "Failed"
    succeeded = next(c for c in (status or {})["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "InvalidSpec" and "spec.promotion.target" in succeeded["message"]
    assert kfp_api.state.runs == {}
