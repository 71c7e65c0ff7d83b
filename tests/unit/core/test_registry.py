"""The registry's pure part: tags, identity, the order of calls (over an in-memory registry),
the namespace scope of registered models and the configuration check."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import pytest

from modelpress.api import Promotion, Registry, Results
from modelpress.lineage import Lineage, LineageArtifact, LineageInput, write_lineage
from modelpress.registry import (
    DECISION_TAG,
    JOB_KEY_TAG,
    MODEL_SHA256_TAG,
    Registration,
    VersionRef,
    figures,
    register,
    same_target,
    unconfigured,
    version_tags,
)
from modelpress.tenancy import DEFAULT_REGISTRY_MODELS, registered_model_refused

MODEL_SHA = hashlib.sha256(b"onnx").hexdigest()
RESULTS = Results.model_validate({
    "baseline": {"sizeBytes": 400_000, "parameters": 10, "metric": {"name": "accuracy",
                                                                   "value": 0.98},
                 "latencyMs": {"cpu": {"p50": 2.0, "p95": 3.0}}},
    "compressed": {"sizeBytes": 100_000, "parameters": 10, "metric": {"name": "accuracy",
                                                                      "value": 0.975},
                   "latencyMs": {"cpu": {"p50": 0.5, "p95": 1.0}}},
    "compressionRatio": 4.0, "accuracyDrop": 0.005, "speedup": {"cpu": 4.0}})


class MemoryRegistry:
    """A registry in memory, counting the versions it makes."""

    def __init__(self) -> None:
        self.versions: dict[str, dict[str, str]] = {}  # version -> tags
        self.aliases: dict[str, str] = {}

    def alias_holder(self, model: str, alias: str) -> str | None:
        return self.aliases.get(alias)

    def find_version(self, model: str, identity: Mapping[str, str]) -> VersionRef | None:
        found = [v for v, tags in self.versions.items() if identity.items() <= tags.items()]
        return VersionRef(found[0], f"run-{found[0]}") if found else None

    def create_version(self, model: str, registration: Registration,
                       tags: Mapping[str, str]) -> VersionRef:
        version = str(len(self.versions) + 1)
        self.versions[version] = dict(tags)
        return VersionRef(version, f"run-{version}")

    def version_tag(self, model: str, version: str, key: str) -> str | None:
        return self.versions[version].get(key)

    def set_version_tag(self, model: str, version: str, key: str, value: str) -> None:
        self.versions[version][key] = value

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self.aliases[alias] = version


def _registration(folder: Path, job_key: str = "uid-1", model: bytes = b"onnx") -> Registration:
    recorded = {"model.onnx": hashlib.sha256(model).hexdigest(), "results.json": "ab" * 32,
                "lineage.json": "cd" * 32}
    return Registration(job_key=job_key, namespace="ml", job_name="digits", files=folder,
                        recorded=recorded, results=RESULTS, recipe='{"steps":[]}')


TARGET = Registry(model="ml.fraud-detector")


def test_figures_carry_sizes_drop_ratio_speedup_and_latency_ratio() -> None:
    assert figures(RESULTS) == {
        "accuracy_drop": 0.005, "compression_ratio": 4.0, "size_bytes": 100_000,
        "baseline_size_bytes": 400_000, "metric.accuracy": 0.975,
        "baseline_metric.accuracy": 0.98, "speedup.cpu": 4.0, "latency_ratio.cpu": 0.25}


def test_version_tags_name_the_job_its_model_recipe_and_lineage(tmp_path: Path) -> None:
    write_lineage(Lineage(inputs={"model": LineageInput(uri="builtin://x", sha256="ef" * 32)},
                          artifacts={"model.onnx": LineageArtifact(
                              uri="file:///m", sha256=MODEL_SHA, size_bytes=4,
                              producer="quantize")}), tmp_path / "lineage.json")
    tags = version_tags(_registration(tmp_path))
    assert tags[JOB_KEY_TAG] == "uid-1" and tags[MODEL_SHA256_TAG] == MODEL_SHA
    assert tags[DECISION_TAG] == "promoted"
    assert tags["modelpress.compression_ratio"] == "4"
    assert tags["modelpress.size_bytes"] == "100000"
    assert tags["modelpress.accuracy_drop"] == "0.005"
    assert tags["modelpress.latency_ratio.cpu"] == "0.25"
    assert tags["modelpress.recipe_sha256"] == hashlib.sha256(b'{"steps":[]}').hexdigest()
    assert tags["modelpress.lineage_sha256"] == "cd" * 32
    assert tags["modelpress.results_sha256"] == "ab" * 32
    assert tags["modelpress.input.model.sha256"] == "ef" * 32


def test_a_first_version_takes_the_alias_and_records_no_previous_holder(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    version = register(registry, TARGET, _registration(tmp_path))
    assert (version.version, version.previous_version, version.alias) == ("1", None,
                                                                          "challenger")
    assert version.uri == "models:/ml.fraud-detector/1"
    assert registry.aliases == {"challenger": "1"}


def test_the_next_job_records_the_version_it_displaced(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    register(registry, TARGET, _registration(tmp_path, "uid-1"))
    second = register(registry, TARGET, _registration(tmp_path, "uid-2", b"other"))
    assert (second.version, second.previous_version) == ("2", "1")
    assert registry.aliases == {"challenger": "2"}


def test_a_retry_makes_no_second_version_and_still_reports_the_previous_holder(
        tmp_path: Path) -> None:
    registry = MemoryRegistry()
    register(registry, TARGET, _registration(tmp_path, "uid-1"))
    first = register(registry, TARGET, _registration(tmp_path, "uid-2", b"other"))
    again = register(registry, TARGET, _registration(tmp_path, "uid-2", b"other"))
    assert len(registry.versions) == 2
    assert again == first and again.previous_version == "1"


def test_another_alias_moves_to_the_same_version(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    register(registry, TARGET, _registration(tmp_path))
    champion = register(registry, Registry(model="ml.fraud-detector", alias="champion"),
                        _registration(tmp_path))
    assert len(registry.versions) == 1
    assert registry.aliases == {"challenger": "1", "champion": "1"}
    assert champion.previous_version is None


@pytest.mark.parametrize(("name", "allowed"), [
    ("ml.fraud-detector", True), ("ml.x.y", True), ("other.fraud", False),
    ("ml", False), ("ml-evil.fraud", False), ("fraud-detector", False)])
def test_a_namespace_may_register_only_its_own_models(name: str, allowed: bool) -> None:
    refused = registered_model_refused(name, "ml", DEFAULT_REGISTRY_MODELS)
    assert (refused is None) is allowed
    if refused:
        assert refused.startswith("spec.promotion.registry.model: ") and "ml.*" in refused


def test_templates_can_open_a_shared_model_to_one_namespace() -> None:
    templates = ("{namespace}.*", "shared-{namespace}")
    assert registered_model_refused("shared-ml", "ml", templates) is None
    assert registered_model_refused("shared-ml", "other", templates) is not None


def test_no_tracking_uri_is_one_line_naming_the_variable() -> None:
    problem = unconfigured({})
    assert problem and "MLFLOW_TRACKING_URI" in problem and "\n" not in problem
    assert unconfigured({"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) is None


def test_a_registered_version_is_settled_only_for_the_same_model_and_alias() -> None:
    version = register(MemoryRegistry(), TARGET, _registration(Path("/nonexistent")))
    assert same_target(version, TARGET)
    assert not same_target(version, Registry(model="ml.fraud-detector", alias="champion"))
    assert not same_target(None, TARGET) and same_target(None, None)


@pytest.mark.parametrize("alias", ["latest", "Latest", "v3", "V12", "a b", ""])
def test_reserved_or_odd_aliases_are_refused_by_the_spec(alias: str) -> None:
    with pytest.raises(ValueError, match="alias"):
        Promotion.model_validate({"registry": {"model": "ml.x", "alias": alias}})
