"""The operator's settings, from MODELPRESS_* environment variables (the chart sets them)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelpress.api import DEFAULT_PLATFORM_STORAGE_SECRET
from modelpress.operator.backends.local import DEFAULT_WORKER_NICENESS
from modelpress.settings import get_settings
from modelpress.tenancy import DEFAULT_PREFIXES, DEFAULT_REGISTRY_MODELS

# The operator's own process runs this many nice steps below its intake process.
DEFAULT_CONTROL_NICENESS = 10


def _default_workdir() -> Path:
    return get_settings().cache_dir / "operator-runs"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPRESS_", extra="ignore")

    default_output: str = Field(
        default="s3://modelpress/{namespace}/{name}/",
        description="Where a job without spec.output publishes; may name {namespace}, {name}.")
    max_runs_in_flight: int = Field(default=2, ge=1, le=10000,
                                    description="Jobs beyond this stay Pending (Queued).")
    max_runs_per_namespace: int = Field(
        default=2, ge=1, le=10000,
        description="Runs in flight per namespace; a namespace's jobs beyond it stay Pending "
                    "(Queued) while other namespaces' jobs may start.")
    namespace_prefixes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PREFIXES),
        description="Where a job's output, promotion target and s3:// / file:// inputs must "
                    "lie: s3:// or file:// templates naming {namespace}.")
    allowed_images: list[str] = Field(
        default_factory=list, description="Images spec.image may name; empty: only the "
                                          "step image (MODELPRESS_STEP_IMAGE).")
    max_deadline_seconds: int = Field(
        default=6 * 3600, ge=60, le=604800,
        description="The longest a run may take (spec.deadlineSeconds is capped by it, and a "
                    "job without one gets it); a run past it is terminated.")
    poll_interval_seconds: float = Field(
        default=5.0, gt=0.0, le=3600.0,
        description="How often runs in flight are polled (and slots freed elsewhere looked for).")
    sync_workers: int = Field(
        default=4, ge=1, le=64,
        description="Jobs synced at once (each sync polls a run: an HTTP call for KFP).")
    local_workdir: Path = Field(default_factory=_default_workdir,
                                description="Run folders of the local backend.")
    control_niceness: int = Field(
        default=DEFAULT_CONTROL_NICENESS, ge=0, le=19,
        description="How much lower than its intake process's the CPU priority of the "
                    "operator's own process (kopf's handlers, the ticker) is (nice steps; 0: "
                    "the same), so a burst of new jobs gets its first statuses first. Within "
                    "the pod only: its CPU cgroup is shared with nothing else.")
    worker_niceness: int = Field(
        default=DEFAULT_WORKER_NICENESS, ge=0, le=19,
        description="How much lower than the operator's the CPU priority of the local "
                    "backend's runs is (nice steps; 0: the same), so a pod's runs never "
                    "starve the operator that gives new jobs their status.")
    kfp_host: str = Field(default="http://ml-pipeline.kubeflow.svc.cluster.local:8888",
                          description="The Kubeflow Pipelines API.")
    kfp_experiment: str = "modelpress"
    kfp_namespace: str | None = Field(default=None, description="Multi-user KFP profile.")
    kfp_pipeline_root: str | None = Field(
        default=None, description="Default: <the job's output>/pipeline-root/.")
    kfp_timeout_seconds: float = Field(default=30.0, gt=0.0)
    kfp_attempts: int = Field(default=4, ge=1, le=20)
    kfp_token_path: Path | None = Field(
        default=None, description="A file holding the bearer token for the KFP API (a "
        "projected service account token for multi-user KFP); read again for every request.")
    registry_models: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REGISTRY_MODELS),
        description="The registered models a job's spec.promotion.registry may name: "
                    "patterns (* any characters) naming {namespace}.")
    kserve_enabled: bool = Field(default=False, description="Patch InferenceServices named by "
                                 "the modelpress.io/inference-service annotation.")
    metrics_address: str = "0.0.0.0"
    log_json: bool = Field(default=False, description="One JSON object per log line.")
    log_debug: bool = Field(default=False, description="kopf's debug log: every patch sent.")
    liveness_endpoint: str = "http://0.0.0.0:8081/healthz"
    verify_prefix: str = Field(
        default="s3://modelpress-platform/verify/",
        description="Kubeflow backend: where the operator stages a run's model and its "
                    "verification run publishes; only the platform may write there (refused "
                    "when it overlaps a namespace prefix).")
    verify_namespace: str | None = Field(
        default=None, description="Kubeflow backend: the platform namespace verification runs "
                                  "execute in; default MODELPRESS_KFP_NAMESPACE.")
    verify_secret_name: str = Field(
        default=DEFAULT_PLATFORM_STORAGE_SECRET,
        description="The Secret in the verification namespace with the platform's storage "
                    "credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).")
