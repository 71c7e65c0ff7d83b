"""Promotion through a model registry: the promoted model becomes a new version of a
registered model, carrying the job's figures, recipe and lineage digests as tags, and an
alias (`challenger` by default) moves to it. `modelpress run` and the operator both promote
through `register` here (docs/registry.md).

What is pure is kept apart from the client: the tags a version carries, how the version of
one job's model is recognised (`identity_tags`: a retry after an outage finds the version it
made before instead of making a second), and the order of the calls (`register`, over the
`ModelRegistry` protocol, which tests replace). `MlflowRegistry` is the one implementation;
the server comes from MLflow's own MLFLOW_TRACKING_URI (and its credential variables), and
mlflow is imported only when a registry is opened.

Only versions of models that passed their gates are made: a rejected job leaves nothing in
the registry, and an alias is only ever moved to a version that passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from modelpress.api import CompressionJob, CompressionSpec, RegisteredVersion, Registry, Results
from modelpress.errors import InvalidInput, ModelpressError, one_line
from modelpress.lineage import LINEAGE, Lineage

TRACKING_URI = "MLFLOW_TRACKING_URI"
TAG_PREFIX = "modelpress."
JOB_KEY_TAG = "modelpress.job_key"
MODEL_SHA256_TAG = "modelpress.model_sha256"
DECISION_TAG = "modelpress.decision"
# On a version: which version held an alias before modelpress moved it there ("none").
PREVIOUS_HOLDER_TAG = "modelpress.previous.{alias}"
NO_HOLDER = "none"
# Where in its registry run a version's files lie (the version's source: runs:/ID/model).
ARTIFACT_PATH = "model"
RECIPE_FILE = "recipe.json"
MODEL_FILE = "model.onnx"
RESULTS_FILE = "results.json"
# What of a spec is not its recipe: where things go and how they are judged.
_NOT_RECIPE = {"promotion", "output", "storage", "deadline_seconds"}


class RegistryUnavailable(ModelpressError):
    """The registry did not answer or failed a request: worth retrying later."""


@dataclass(frozen=True)
class Registration:
    """What a promotion registers: the job's verified files (`files`, a folder holding only
    the bytes whose digests the run recorded) and what is known of them."""

    job_key: str  # the job's uid (operator), or namespace/name (modelpress run)
    namespace: str
    job_name: str
    files: Path
    recorded: Mapping[str, str]  # sha256 by file name, as the run recorded them
    results: Results
    recipe: str  # the spec's compression recipe as canonical JSON

    @property
    def model_sha256(self) -> str:
        return self.recorded[MODEL_FILE]


@dataclass(frozen=True)
class VersionRef:
    version: str
    run_id: str | None


class ModelRegistry(Protocol):
    """The calls a promotion makes; each raises RegistryUnavailable when it cannot answer."""

    def alias_holder(self, model: str, alias: str) -> str | None:
        """The version `alias` names, or None (no such alias or model)."""
        ...

    def find_version(self, model: str, identity: Mapping[str, str]) -> VersionRef | None:
        """A version of `model` carrying every tag of `identity`, or None."""
        ...

    def create_version(self, model: str, registration: Registration,
                       tags: Mapping[str, str]) -> VersionRef:
        """A new version of `model` (created when absent) holding the registration's files."""
        ...

    def version_tag(self, model: str, version: str, key: str) -> str | None: ...

    def set_version_tag(self, model: str, version: str, key: str, value: str) -> None: ...

    def set_alias(self, model: str, alias: str, version: str) -> None: ...


# ------------------------------------------------------------------------------- pure


def unconfigured(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why no registry can be reached from here (MLFLOW_TRACKING_URI unset), or None."""
    if environ.get(TRACKING_URI, "").strip():
        return None
    return (f"spec.promotion.registry is set but {TRACKING_URI} is not: set it to the MLflow "
            "tracking server (credentials in MLFLOW_TRACKING_USERNAME/PASSWORD or TOKEN)")


def recipe_of(spec: CompressionSpec) -> str:
    """The spec's recipe (model, data, steps, search, benchmark) as canonical JSON."""
    recipe = spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=_NOT_RECIPE)
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


def registration_of(job: CompressionJob, job_key: str, files: Path,
                    recorded: Mapping[str, str], results: Results) -> Registration:
    return Registration(job_key=job_key, namespace=job.metadata.namespace,
                        job_name=job.metadata.name, files=files, recorded=dict(recorded),
                        results=results, recipe=recipe_of(job.spec))


def figures(results: Results) -> dict[str, float]:
    """The figures a version carries: sizes, metric, drop, ratio, speedup and latency ratio
    (compressed p50 / baseline p50) per pool."""
    baseline, compressed = results.baseline, results.compressed
    found: dict[str, float] = {
        "accuracy_drop": results.accuracy_drop,
        "compression_ratio": results.compression_ratio,
        "size_bytes": compressed.size_bytes,
        "baseline_size_bytes": baseline.size_bytes,
        f"metric.{compressed.metric.name}": compressed.metric.value,
        f"baseline_metric.{baseline.metric.name}": baseline.metric.value,
    }
    if results.perplexity_increase is not None:
        found["perplexity_increase"] = results.perplexity_increase
    found |= {f"speedup.{pool}": value for pool, value in results.speedup.items()}
    for pool, latency in compressed.latency_ms.items():
        before = baseline.latency_ms.get(pool)
        if before is not None and before.p50 > 0:
            found[f"latency_ratio.{pool}"] = latency.p50 / before.p50
    return found


def identity_tags(registration: Registration) -> dict[str, str]:
    """The tags that make a version this job's model: a retry finds it by them."""
    return {JOB_KEY_TAG: registration.job_key, MODEL_SHA256_TAG: registration.model_sha256}


def version_tags(registration: Registration) -> dict[str, str]:
    """Every tag a new version gets: identity, decision, figures, recipe and lineage."""
    tags = {**identity_tags(registration), DECISION_TAG: "promoted",
            f"{TAG_PREFIX}namespace": registration.namespace,
            f"{TAG_PREFIX}job": registration.job_name,
            f"{TAG_PREFIX}recipe_sha256": _sha256(registration.recipe)}
    tags |= {f"{TAG_PREFIX}{name}": _shown(value)
             for name, value in figures(registration.results).items()}
    return tags | lineage_tags(registration)


def lineage_tags(registration: Registration) -> dict[str, str]:
    """The digests of results.json and lineage.json as the run recorded them, and of each
    input lineage.json names (the verified copy among the registration's files)."""
    tags = {f"{TAG_PREFIX}{name.removesuffix('.json')}_sha256": registration.recorded[name]
            for name in (RESULTS_FILE, LINEAGE) if name in registration.recorded}
    lineage = _lineage(registration.files / LINEAGE)
    if lineage is not None:
        tags |= {f"{TAG_PREFIX}input.{name}.sha256": source.sha256
                 for name, source in lineage.inputs.items()}
    return tags


def _lineage(path: Path) -> Lineage | None:
    if not path.is_file():
        return None
    try:
        return Lineage.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError:
        return None  # the digest tag still names the file; its inputs are not told


def _shown(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def register(registry: ModelRegistry, target: Registry,
             registration: Registration) -> RegisteredVersion:
    """This job's version of `target.model` (made unless a version with its identity
    exists) with `target.alias` moved to it; the version the alias named before is
    recorded on the version first, so a retry after the alias moved still reports it."""
    model, alias = target.model, target.alias
    holder = registry.alias_holder(model, alias)
    found = registry.find_version(model, identity_tags(registration))
    ref = found or registry.create_version(model, registration, version_tags(registration))
    previous_tag = PREVIOUS_HOLDER_TAG.format(alias=alias)
    if holder == ref.version:
        recorded = registry.version_tag(model, ref.version, previous_tag)
        previous = None if recorded in (None, NO_HOLDER) else recorded
    else:
        registry.set_version_tag(model, ref.version, previous_tag, holder or NO_HOLDER)
        registry.set_alias(model, alias, ref.version)
        previous = holder
    return RegisteredVersion(kind=target.kind, model=model, version=ref.version, alias=alias,
                             previous_version=previous, uri=f"models:/{model}/{ref.version}",
                             run_id=ref.run_id)


def same_target(registered: RegisteredVersion | None, target: Registry | None) -> bool:
    """Whether `registered` already is `target`'s promotion (nothing left to do)."""
    if registered is None or target is None:
        return registered is None and target is None
    return (registered.kind, registered.model, registered.alias) == (
        target.kind, target.model, target.alias)


# ----------------------------------------------------------------------------- client


def open_registry(environ: Mapping[str, str] = os.environ) -> ModelRegistry:
    """The MLflow registry (the one kind) at the server the environment names.
    InvalidInput when none is configured or its client is not installed."""
    preflight(environ)
    return MlflowRegistry(_mlflow_client(environ[TRACKING_URI]))


def preflight(environ: Mapping[str, str] = os.environ) -> None:
    """InvalidInput unless a registry is configured and its client can be imported: what
    `modelpress run` checks before running anything."""
    problem = unconfigured(environ)
    if problem:
        raise InvalidInput(TRACKING_URI, problem)
    _mlflow_module()


def _mlflow_module() -> Any:
    try:
        import mlflow
    except ImportError:
        raise InvalidInput("spec.promotion.registry", "the mlflow client is not installed: "
                           "pip install 'modelpress[registry]'") from None
    return mlflow


def _mlflow_client(tracking_uri: str) -> Any:
    return _mlflow_module().MlflowClient(tracking_uri=tracking_uri)


@contextmanager
def _answered(what: str) -> Iterator[None]:
    """Any failure of a registry request as RegistryUnavailable, in one line."""
    try:
        yield
    except RegistryUnavailable:
        raise
    except Exception as error:  # MlflowException, requests' and OS errors alike
        raise RegistryUnavailable(f"the registry failed to {what}: "
                                  f"{one_line(str(error))[:300]}") from error


def _missing(error: Exception) -> bool:
    return getattr(error, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST",
                                                  "INVALID_PARAMETER_VALUE")


class MlflowRegistry:
    """The MLflow model registry. A version's files are logged as the artifacts of an
    MLflow run (experiment `modelpress/<namespace>`) and the version's source is
    `runs:/<run id>/model`: a server accepts that whatever its artifact store, where a
    local path is refused unless it lies in a run's artifacts."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def alias_holder(self, model: str, alias: str) -> str | None:
        with _answered(f"read alias {alias} of {model}"):
            try:
                return str(self._client.get_model_version_by_alias(model, alias).version)
            except Exception as error:
                if _missing(error):
                    return None
                raise

    def find_version(self, model: str, identity: Mapping[str, str]) -> VersionRef | None:
        clauses = [f"name = '{model}'", *(f"tags.`{key}` = '{value}'"
                                          for key, value in identity.items())]
        with _answered(f"search versions of {model}"):
            found = self._client.search_model_versions(" and ".join(clauses))
        if not found:
            return None
        first = min(found, key=lambda version: int(version.version))
        return VersionRef(str(first.version), first.run_id)

    def create_version(self, model: str, registration: Registration,
                       tags: Mapping[str, str]) -> VersionRef:
        with _answered(f"create a version of {model}"):
            self._ensure_model(model, registration.namespace)
            run_id = self._run_with_files(registration)
            version = self._client.create_model_version(
                model, f"runs:/{run_id}/{ARTIFACT_PATH}", run_id=run_id, tags=dict(tags))
        return VersionRef(str(version.version), run_id)

    def version_tag(self, model: str, version: str, key: str) -> str | None:
        with _answered(f"read version {version} of {model}"):
            tags: dict[str, str] = self._client.get_model_version(model, version).tags
        return tags.get(key)

    def set_version_tag(self, model: str, version: str, key: str, value: str) -> None:
        with _answered(f"tag version {version} of {model}"):
            self._client.set_model_version_tag(model, version, key, value)

    def set_alias(self, model: str, alias: str, version: str) -> None:
        with _answered(f"move alias {alias} of {model}"):
            self._client.set_registered_model_alias(model, alias, version)

    def _ensure_model(self, model: str, namespace: str) -> None:
        try:
            self._client.get_registered_model(model)
        except Exception as error:
            if not _missing(error):
                raise
        else:
            return
        try:
            self._client.create_registered_model(model, tags={f"{TAG_PREFIX}namespace":
                                                              namespace})
        except Exception as error:  # made meanwhile by another promotion: as good
            if getattr(error, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                raise

    def _run_with_files(self, registration: Registration) -> str:
        """A finished run holding the registration's files: one a former attempt finished,
        else a new one (a run left unfinished by an outage is not reused)."""
        experiment = self._experiment(f"modelpress/{registration.namespace}")
        identity = " and ".join(f"tags.`{key}` = '{value}'"
                                for key, value in identity_tags(registration).items())
        finished = self._client.search_runs(
            [experiment], f"{identity} and attributes.status = 'FINISHED'", max_results=1)
        if finished:
            return str(finished[0].info.run_id)
        run = self._client.create_run(experiment, run_name=registration.job_name,
                                      tags=identity_tags(registration))
        run_id = str(run.info.run_id)
        self._client.log_artifacts(run_id, str(registration.files), ARTIFACT_PATH)
        self._client.log_text(run_id, registration.recipe, RECIPE_FILE)
        self._log_figures(run_id, registration)
        with redirect_stdout(sys.stderr):  # it prints the run's address: stdout is the CLI's
            self._client.set_terminated(run_id, "FINISHED")
        return run_id

    def _log_figures(self, run_id: str, registration: Registration) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, 0)
                   for name, value in figures(registration.results).items()]
        params = [Param("job", registration.job_name), Param("namespace", registration.namespace),
                  Param("recipe_sha256", _sha256(registration.recipe))]
        self._client.log_batch(run_id, metrics=metrics, params=params)

    def _experiment(self, name: str) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        return str(self._client.create_experiment(name))
