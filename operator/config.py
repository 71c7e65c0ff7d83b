"""The operator's settings, from MODELPRESS_* environment variables (the chart sets them)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelpress.settings import get_settings


def _default_workdir() -> Path:
    return get_settings().cache_dir / "operator-runs"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPRESS_", extra="ignore")

    default_output: str = Field(
        default="s3://modelpress/{namespace}/{name}/",
        description="Where a job without spec.output publishes; may name {namespace}, {name}.")
    max_runs_in_flight: int = Field(default=2, ge=1, le=10000,
                                    description="Jobs beyond this stay Pending (Queued).")
    poll_interval_seconds: float = Field(default=5.0, gt=0.0, le=3600.0)
    local_workdir: Path = Field(default_factory=_default_workdir,
                                description="Run folders of the local backend.")
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
    kserve_enabled: bool = Field(default=False, description="Patch InferenceServices named by "
                                 "the modelpress.io/inference-service annotation.")
    metrics_address: str = "0.0.0.0"
    log_json: bool = Field(default=False, description="One JSON object per log line.")
    log_debug: bool = Field(default=False, description="kopf's debug log: every patch sent.")
    liveness_endpoint: str = "http://0.0.0.0:8081/healthz"
