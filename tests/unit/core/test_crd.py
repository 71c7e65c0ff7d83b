"""The CompressionJob CRD: committed as generated, structural, accepted by Kubernetes' own
schemas, and in agreement with the models about which job files are valid."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from modelpress.api import CompressionStatus
from modelpress.crd import build_crd, render_crd

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "charts" / "modelpress" / "crds" / "compressionjobs.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]

# Keys a structural schema node may hold that say nothing about the shape of the value.
_JUNCTORS = ("anyOf", "allOf", "oneOf", "not")
# Inside a junctor, Kubernetes forbids these (structural schema rules).
_FORBIDDEN_IN_JUNCTORS = {"type", "description", "default", "additionalProperties", "nullable",
                          "x-kubernetes-preserve-unknown-fields",
                          "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string"}


def _schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _nodes(node: dict[str, Any], path: str = "openAPIV3Schema"
           ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under `node` (itself included), with a readable path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.properties.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}.items")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}.additionalProperties")
    for junctor in _JUNCTORS[:3]:
        for index, branch in enumerate(node.get(junctor, [])):
            yield from _nodes(branch, f"{path}.{junctor}[{index}]")


def _junctor_branches(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for junctor in _JUNCTORS[:3]:
        yield from node.get(junctor, [])
    if isinstance(node.get("not"), dict):
        yield node["not"]


def _below(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`node` and every schema inside it, junctor branches included."""
    yield node
    for child in node.get("properties", {}).values():
        yield from _below(child)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            yield from _below(node[key])
    for junctor in _JUNCTORS[:3]:
        for branch in node.get(junctor, []):
            yield from _below(branch)


# ----------------------------------------------------------------------------- (a) drift


def test_committed_crd_is_generated() -> None:
    assert COMMITTED.read_text() == render_crd(), (
        "the committed CRD drifted from modelpress/api.py; regenerate it with "
        "`modelpress crd > charts/modelpress/crds/compressionjobs.yaml`")


def test_cli_prints_the_crd() -> None:
    printed = subprocess.run([sys.executable, "-m", "modelpress.cli", "crd"], check=True,
                             capture_output=True, text=True).stdout
    assert printed == render_crd()


# ----------------------------------------------------------------------------- (b) structure


def test_every_node_is_typed() -> None:
    untyped = [path for path, node in _nodes(_schema())
               if "type" not in node
               and node.get("x-kubernetes-preserve-unknown-fields") is not True
               and node.get("x-kubernetes-int-or-string") is not True]
    assert not untyped, f"schema nodes without a type: {untyped}"


def test_no_refs_or_definitions() -> None:
    text = json.dumps(_schema())
    for key in ('"$ref"', '"$defs"', '"definitions"', '"title"', '"const"'):
        assert key not in text, f"{key} in the CRD schema"


def test_junctors_only_as_pure_value_validations() -> None:
    for path, node in _nodes(_schema()):
        for branch in _junctor_branches(node):
            for inner in _below(branch):
                clash = _FORBIDDEN_IN_JUNCTORS & inner.keys()
                assert not clash, f"{path}: {sorted(clash)} inside anyOf/allOf/oneOf/not"


def test_no_closed_objects() -> None:
    for path, node in _nodes(_schema()):
        assert node.get("additionalProperties") is not False, f"{path}: additionalProperties"
        assert not ("properties" in node and "additionalProperties" in node), \
            f"{path}: properties and additionalProperties are mutually exclusive"


def test_object_nodes_say_object() -> None:
    for path, node in _nodes(_schema()):
        if "properties" in node or "additionalProperties" in node:
            assert node.get("type") == "object", path
        if "items" in node:
            assert node.get("type") == "array", path


def test_defaults_are_valid_for_their_node() -> None:
    for path, node in _nodes(_schema()):
        if "default" in node:
            plain = _to_json_schema({k: v for k, v in node.items() if k != "default"})
            errors = list(jsonschema.Draft7Validator(plain).iter_errors(node["default"]))
            assert not errors, f"{path}: default {node['default']!r}: {errors[0].message}"


def test_names_and_scope() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == "compressionjobs.modelpress.io"
    assert names["kind"] == "CompressionJob"
    assert names["plural"] == "compressionjobs"
    assert names["shortNames"] == ["cjob"]
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    version = build_crd()["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Phase", "Ratio", "Speedup", "Drop", "Promotion",
                                           "Age"]
    assert columns[-1] == {"name": "Age", "type": "date",
                           "jsonPath": ".metadata.creationTimestamp"}
    schema = version["schema"]["openAPIV3Schema"]
    for column in columns[:-1]:
        node = schema
        for part in column["jsonPath"].lstrip(".").split("."):
            if "properties" in node:
                assert part in node["properties"], f"{column['jsonPath']}: no field {part!r}"
                node = node["properties"][part]
            else:  # a map, e.g. speedup.<pool>
                node = node["additionalProperties"]
        expected = {"number": {"number", "integer"}, "string": {"string"}}[column["type"]]
        assert node["type"] in expected, column


def test_only_promotion_may_change() -> None:
    spec = _schema()["properties"]["spec"]
    assert {"model", "data", "steps", "benchmark", "promotion"} <= spec["properties"].keys()
    for name, node in spec["properties"].items():
        rules = [v["rule"] for v in node.get("x-kubernetes-validations", [])]
        if name == "promotion":
            assert "self == oldSelf" not in rules
        else:
            assert "self == oldSelf" in rules, f"spec.{name} is not immutable"


def test_spec_is_required() -> None:
    schema = _schema()
    assert "spec" in schema["required"]
    spec = schema["properties"]["spec"]
    assert {"model", "data", "steps"} <= set(spec["required"])


# ----------------------------------------------------------------------------- (c) kubernetes


@cache
def _printed_crd() -> dict[str, Any]:
    printed = subprocess.run([sys.executable, "-m", "modelpress.cli", "crd"], check=True,
                             capture_output=True, text=True).stdout
    return yaml.safe_load(printed)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_validate_strict(version: str) -> None:
    kubernetes_validate.validate(_printed_crd(), version, strict=True)


@cache
def _json_schema_props(version: str) -> dict[str, Any]:
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    document = resources.files("kubernetes_validate").joinpath(
        folder, "jsonschemaprops-apiextensions-v1.json").read_text()
    return json.loads(document)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_schema_node_is_a_json_schema_props(version: str) -> None:
    """kubernetes-validate only looks a couple of levels into openAPIV3Schema; the API server
    decodes every node into JSONSchemaProps, so check each one's keys and scalar types."""
    props = _json_schema_props(version)["properties"]
    for path, node in _nodes(_printed_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
        unknown = set(node) - set(props)
        assert not unknown, f"{path}: keys JSONSchemaProps does not have: {sorted(unknown)}"
        for key, value in node.items():
            declared = props[key]
            if "type" in declared and "$ref" not in declared:
                scalar = {k: v for k, v in declared.items() if k in ("type", "enum")}
                errors = list(jsonschema.Draft7Validator(scalar).iter_errors(value))
                assert not errors, f"{path}.{key} = {value!r}: {errors[0].message}"


# ----------------------------------------------------------------------------- (d) examples


def _to_json_schema(node: Any) -> Any:
    """The CRD's OpenAPI schema as plain JSON Schema, unknown fields refused (as the API
    server does under strict field validation); x-kubernetes-* keys dropped."""
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _to_json_schema(value) for key, value in node.items()
           if not key.startswith("x-kubernetes-") and key != "nullable"}
    for bound, exclusive in (("maximum", "exclusiveMaximum"), ("minimum", "exclusiveMinimum")):
        if out.get(exclusive) is True:  # OpenAPI 3.0's boolean form
            out[exclusive] = out.pop(bound)
        elif out.get(exclusive) is False:
            del out[exclusive]
    if "properties" in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


@cache
def _validator() -> jsonschema.Draft7Validator:
    schema = _to_json_schema(_schema())
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _problems(document: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in _validator().iter_errors(document)]


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_example_validates_against_the_crd(example: Path) -> None:
    assert _problems(yaml.safe_load(example.read_text())) == []


def test_a_status_validates_against_the_crd() -> None:
    status = CompressionStatus.model_validate({
        "phase": "Succeeded", "observedGeneration": 2, "backend": "local", "runId": "r1",
        "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:02:00Z",
        "steps": [{"name": "prune", "phase": "Succeeded", "durationSeconds": 1.5}],
        "results": {
            "baseline": {"sizeBytes": 400, "parameters": 100,
                         "metric": {"name": "accuracy", "value": 0.99},
                         "latencyMs": {"cpu": {"p50": 2.0, "p95": 3.0}}},
            "compressed": {"sizeBytes": 100, "parameters": 100, "nonzeroParameters": 50,
                           "metric": {"name": "accuracy", "value": 0.98},
                           "latencyMs": {"cpu": {"p50": 1.0, "p95": 1.5}}},
            "compressionRatio": 4.0, "accuracyDrop": 0.01, "speedup": {"cpu": 2.0},
            "benchmarks": [{"pool": "cpu", "device": "cpu", "available": True,
                            "batches": {"1": {"baseline": {"p50": 2.0, "p95": 3.0},
                                              "compressed": {"p50": 1.0, "p95": 1.5}}},
                            "speedup": {"1": 2.0}},
                           {"pool": "gpu", "device": "cuda", "available": False,
                            "reason": "no CUDA"}]},
        "promotion": {"decision": "Rejected", "reasons": ["speedup 2.0 < 3.0"]},
        "artifacts": {"model": "s3://b/model.onnx"},
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed",
                        "lastTransitionTime": "2026-01-01T00:02:00Z"}],
    })
    document = yaml.safe_load(EXAMPLES[0].read_text())
    document["status"] = status.to_wire()
    assert _problems(document) == []


def _mutated(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(yaml.safe_load(
        (ROOT / "examples" / "digits-prune-quantize.yaml").read_text()))
    *parents, last = path.split(".")
    node: Any = document
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return document


@pytest.mark.parametrize(("path", "value"), [
    ("spec.steps.0.prune.sparsity", 1.5),
    ("spec.steps.0.prune.sparsity", 1.0),
    ("spec.steps.0.prune.sparsity", "half"),
    ("spec.steps", []),
    ("spec.steps.0", {}),
    ("spec.steps.0", {"prune": {}, "distill": {}}),
    ("spec.model.uri", "ftp://example.com/model.onnx"),
    ("spec.model.colour", "red"),
    ("spec.model.format", "tensorflow"),
    ("spec.benchmark.batchSizes", [0]),
    ("spec.benchmark.pools", [{"name": "GPU"}]),
    ("spec.steps.1.quantize.weightType", "int4"),
], ids=["sparsity-1.5", "sparsity-1.0", "sparsity-string", "no-steps", "empty-step",
        "two-kinds", "ftp-uri", "unknown-field", "bad-format", "batch-0", "pool-name-upper",
        "weight-type"])
def test_a_broken_example_does_not_validate(path: str, value: Any) -> None:
    assert _problems(_mutated(path, value)), f"{path} = {value!r} passed the CRD schema"
