"""Process-wide settings from MODELPRESS_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelpress.api import DEFAULT_STORAGE_SECRET, SECRET_NAME_PATTERN


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELPRESS_", extra="ignore")

    cache_dir: Path = Field(default=Path.home() / ".cache" / "modelpress")
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_create_buckets: bool = True
    step_image: str = Field(default="ghcr.io/modelpress/step:0.1.0",
                            description="Image of pipeline steps when a job names none.")
    storage_secret_name: str = Field(
        default=DEFAULT_STORAGE_SECRET, pattern=SECRET_NAME_PATTERN, max_length=253,
        description="On a cluster: the Secret in a job's own namespace whose "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY that job's pipeline steps "
                    "read, unless the job names another (spec.storage.secretName). Steps "
                    "never receive the platform's own credentials.")
    allowed_file_roots: list[Path] = Field(
        default_factory=list, description="When set, file:// uris must lie under one of these."
    )
    trust_model_code: bool = Field(
        default=False, description="The operator: accept model formats that are programs "
        "(.pt2, TorchScript, python:// architectures and students), which run code when "
        "loaded (modelpress.trust). The CLI takes --trust-model-code instead.")
    allow_local_all_namespaces: bool = Field(
        default=False, description="The operator: allow --backend local with --all-namespaces. "
        "The local backend runs every job inside the operator pod with its credentials, so it "
        "is for single-tenant installations.")
    # Untrusted specs: bounded work.
    cel_budget_seconds: float = Field(
        default=1.0, gt=0.0, le=60.0,
        description="Wall time one promotion condition may take to compile and evaluate.")
    allow_private_http: bool = Field(
        default=False, description="Let http(s) inputs reach private, loopback and link-local "
                                   "addresses (refused by default).")
    http_max_bytes: int = Field(default=2 * 1024**3, ge=1,
                                description="Most bytes one http(s) input may download.")
    http_timeout_seconds: float = Field(default=300.0, gt=0.0,
                                        description="Most wall time one http(s) download takes.")
    http_read_timeout_seconds: float = Field(
        default=60.0, gt=0.0, description="Most time an http(s) server may stay silent.")


def get_settings() -> Settings:
    return Settings()


def within_allowed_roots(path: Path, roots: list[Path] | None = None) -> bool:
    """Whether `path` lies under one of `roots` (default: MODELPRESS_ALLOWED_FILE_ROOTS)
    once `..` and symlinks are resolved; with no roots set, every path does."""
    chosen = get_settings().allowed_file_roots if roots is None else roots
    if not chosen:
        return True
    resolved, allowed = path.resolve(), [root.resolve() for root in chosen]
    return any(resolved == root or root in resolved.parents for root in allowed)
