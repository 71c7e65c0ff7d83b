"""The resource models: what parses, what is refused, the camelCase wire form, and the
one-line errors jobfile makes of a ValidationError."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from modelpress.api import (
    Benchmark,
    CompressionJob,
    CompressionSpec,
    CompressionStatus,
    ModelSource,
    Pool,
    PruneStep,
    Search,
    Step,
)
from modelpress.errors import InvalidInput
from modelpress.jobfile import describe, field_path, load_job, parse_job

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "apiVersion": "modelpress.io/v1alpha1",
    "kind": "CompressionJob",
    "metadata": {"name": "minimal"},
    "spec": {
        "model": {"uri": "builtin://digits-cnn"},
        "data": {"eval": "builtin://digits"},
        "steps": [{"prune": {}}],
    },
}

# DESIGN.md §1, without its comments and its status placeholders.
DESIGN_EXAMPLE: dict[str, Any] = {
    "apiVersion": "modelpress.io/v1alpha1",
    "kind": "CompressionJob",
    "metadata": {"name": "minilm-int8", "namespace": "ml-team"},
    "spec": {
        "model": {"uri": "builtin://minilm-l6", "format": "torch", "task": "embedding"},
        "image": "",
        "data": {"eval": "builtin://sentences", "calibration": "builtin://sentences",
                 "train": "builtin://sentences"},
        "steps": [
            {"prune": {"method": "magnitude", "structured": False, "sparsity": 0.5,
                       "scope": "global"}},
            {"distill": {"temperature": 4.0, "alpha": 0.7, "epochs": 3}},
            {"quantize": {"mode": "dynamic", "weightType": "int8", "perChannel": True}},
        ],
        "search": {"parameter": "steps[0].prune.sparsity", "values": [0.3, 0.5, 0.7, 0.9],
                   "maxAccuracyDrop": 0.01},
        "benchmark": {
            "batchSizes": [1, 32],
            "pools": [
                {"name": "cpu", "device": "cpu", "nodeSelector": {"modelpress.io/pool": "cpu"}},
                {"name": "gpu", "device": "cuda",
                 "accelerator": {"type": "nvidia.com/gpu", "count": 1},
                 "nodeSelector": {"modelpress.io/pool": "gpu"},
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                  "effect": "NoSchedule"}]},
            ],
        },
        "promotion": {
            "gates": {"minCompressionRatio": 3.0, "maxAccuracyDrop": 0.01,
                      "minSpeedup": {"cpu": 1.5}},
            "condition": "results.speedup.cpu >= 1.5 || results.compressionRatio >= 6.0",
            "target": "s3://models/minilm/production/",
        },
        "output": "s3://modelpress/ml-team/minilm-int8/",
    },
}

STATUS_WIRE: dict[str, Any] = {
    "phase": "Succeeded",
    "observedGeneration": 1,
    "backend": "local",
    "runId": "3f2c",
    "startedAt": "2026-01-01T00:00:00Z",
    "finishedAt": "2026-01-01T00:01:00Z",
    "steps": [{"name": "prune", "phase": "Succeeded", "durationSeconds": 1.5,
               "message": "50% zero"}],
    "results": {
        "baseline": {"sizeBytes": 400, "parameters": 100, "metric": {"name": "cosine",
                                                                    "value": 1.0},
                     "extraMetrics": {}, "latencyMs": {"cpu": {"p50": 2.0, "p95": 3.0}}},
        "compressed": {"sizeBytes": 100, "parameters": 100, "nonzeroParameters": 50,
                       "metric": {"name": "cosine", "value": 0.99}, "extraMetrics": {},
                       "latencyMs": {"cpu": {"p50": 1.0, "p95": 1.5}}},
        "compressionRatio": 4.0,
        "accuracyDrop": 0.01,
        "speedup": {"cpu": 2.0},
    },
    "promotion": {"decision": "Promoted", "reasons": ["all gates pass"],
                  "promotedUri": "s3://models/x/"},
    "artifacts": {"model": "s3://modelpress/x/model.onnx"},
    "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed",
                    "message": "", "lastTransitionTime": "2026-01-01T00:01:00Z"}],
}

# Keys under these are user data (label keys, pool names), not field names.
_FREE_FORM_KEYS = {"nodeSelector", "labels", "annotations", "minSpeedup", "speedup", "latencyMs",
                   "extraMetrics", "artifacts", "batches"}


def _with(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `document` with the dotted `path` set (digits index lists)."""
    changed = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = changed
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return changed


def _field_names(node: Any) -> list[str]:
    if isinstance(node, list):
        return [name for item in node for name in _field_names(item)]
    if not isinstance(node, dict):
        return []
    names = []
    for key, value in node.items():
        names.append(key)
        if key not in _FREE_FORM_KEYS:
            names += _field_names(value)
    return names


def _error(model: type[BaseModel], data: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return caught.value


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_examples_parse(example: Path) -> None:
    job = load_job(example)
    assert job.kind == "CompressionJob"
    assert job.spec.steps


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("document", [MINIMAL, DESIGN_EXAMPLE], ids=["minimal", "design-doc"])
def test_documents_parse(document: dict[str, Any]) -> None:
    job = parse_job(copy.deepcopy(document), "job.yaml")
    assert job.metadata.name == document["metadata"]["name"]


def test_defaults_fill_a_minimal_job() -> None:
    job = CompressionJob.model_validate(MINIMAL)
    assert job.metadata.namespace == "default"
    assert job.spec.model.task == "classification"
    assert job.spec.model.format is None
    assert [pool.name for pool in job.spec.benchmark.pools] == ["cpu"]
    assert job.spec.benchmark.batch_sizes == [1, 32]
    prune = job.spec.steps[0].prune
    assert prune is not None and prune.sparsity == 0.5 and prune.scope == "global"
    assert job.spec.steps[0].kind == "prune"
    assert job.spec.steps[0].options is prune


# ----------------------------------------------------------------------------- wire form


@pytest.mark.parametrize("document", [MINIMAL, DESIGN_EXAMPLE] + [
    yaml.safe_load(path.read_text()) for path in EXAMPLES
], ids=["minimal", "design-doc"] + [path.stem for path in EXAMPLES])
def test_wire_round_trip(document: dict[str, Any]) -> None:
    job = CompressionJob.model_validate(document)
    wire = job.to_wire()
    assert CompressionJob.model_validate(wire) == job
    assert CompressionJob.model_validate(wire).to_wire() == wire
    snake = [name for name in _field_names(wire) if "_" in name]
    assert not snake, f"snake_case on the wire: {snake}"


def test_wire_form_is_camel_case_and_omits_unset_fields() -> None:
    wire = CompressionJob.model_validate(DESIGN_EXAMPLE).to_wire()
    assert wire["apiVersion"] == "modelpress.io/v1alpha1"
    assert wire["spec"]["benchmark"]["batchSizes"] == [1, 32]
    assert wire["spec"]["steps"][2]["quantize"]["weightType"] == "int8"
    assert wire["spec"]["promotion"]["gates"]["minCompressionRatio"] == 3.0
    assert wire["spec"]["benchmark"]["pools"][1]["nodeSelector"] == {"modelpress.io/pool": "gpu"}
    minimal = CompressionJob.model_validate(MINIMAL).to_wire()
    assert "format" not in minimal["spec"]["model"]
    assert "search" not in minimal["spec"]
    assert "status" not in minimal


def test_python_code_may_use_snake_case_names() -> None:
    assert Benchmark(batch_sizes=[8]).to_wire()["batchSizes"] == [8]
    assert Pool(name="gpu", node_selector={"a": "b"}).to_wire()["nodeSelector"] == {"a": "b"}


def test_job_files_refuse_snake_case_field_names() -> None:
    """The wire is camelCase; a snake_case key would be pruned by the CRD, so the CLI refuses
    it too rather than accept a file the cluster reads differently."""
    document = copy.deepcopy(MINIMAL)
    document["spec"]["benchmark"] = {"batch_sizes": [8]}
    with pytest.raises(InvalidInput) as caught:
        parse_job(document, "job.yaml")
    assert "spec.benchmark.batch_sizes" in str(caught.value)


def test_status_round_trip() -> None:
    status = CompressionStatus.model_validate(STATUS_WIRE)
    assert status.results is not None and status.results.compression_ratio == 4.0
    wire = status.to_wire()
    assert CompressionStatus.model_validate(wire) == status
    assert wire["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:01:00Z"
    assert wire["results"]["compressed"]["nonzeroParameters"] == 50
    assert "nonzeroParameters" not in wire["results"]["baseline"]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("step", "valid"), [
    ({"prune": {}}, True),
    ({"distill": {"epochs": 1}}, True),
    ({"decompose": {"energy": 0.8}}, True),
    ({"quantize": {"mode": "static"}}, True),
    ({}, False),
    ({"prune": None}, False),
    ({"prune": {}, "quantize": {}}, False),
    ({"prune": {}, "distill": {}, "quantize": {}}, False),
    ({"sharpen": {}}, False),
], ids=["prune", "distill", "decompose", "quantize", "empty", "null", "two", "three", "unknown"])
def test_step_needs_exactly_one_key(step: dict[str, Any], valid: bool) -> None:
    if valid:
        assert Step.model_validate(step).kind == next(iter(step))
    else:
        _error(Step, step)


@pytest.mark.parametrize(("model", "data", "valid"), [
    (PruneStep, {"sparsity": 0.0}, True),
    (PruneStep, {"sparsity": 0.99}, True),
    (PruneStep, {"sparsity": 1.0}, False),
    (PruneStep, {"sparsity": -0.1}, False),
    (PruneStep, {"scope": "model"}, False),
    (PruneStep, {"schedule": {"iterations": 0}}, False),
    (PruneStep, {"schedule": {"iterations": 3, "fineTuneEpochs": 2}}, True),
    (Pool, {"name": "gpu-a100"}, True),
    (Pool, {"name": "GPU"}, False),
    (Pool, {"name": "gpu", "device": "tpu"}, False),
    (Pool, {"name": "gpu", "accelerator": {"count": 0}}, False),
    (Benchmark, {"batchSizes": []}, False),
    (Benchmark, {"batchSizes": [0]}, False),
    (Benchmark, {"pools": [{"name": "cpu"}, {"name": "cpu"}]}, False),
    (Benchmark, {"pools": []}, False),
    (ModelSource, {"uri": "s3://bucket/model.onnx"}, True),
    (ModelSource, {"uri": "https://example.com/model.pt"}, True),
    (ModelSource, {"uri": "file:///models/model.pt"}, True),
    (ModelSource, {"uri": "hf://org/model"}, True),
    (ModelSource, {"uri": "ftp://example.com/model.onnx"}, False),
    (ModelSource, {"uri": "model.onnx"}, False),
    (ModelSource, {"uri": "file://"}, False),
    (ModelSource, {"uri": "file:///m.pt", "architecture": "python://pkg.models:build"}, True),
    (ModelSource, {"uri": "file:///m.pt", "architecture": "builtin://digits-cnn"}, True),
    (ModelSource, {"uri": "file:///m.pt", "architecture": "python://pkg.models"}, False),
    (ModelSource, {"uri": "file:///m.pt", "format": "tensorflow"}, False),
    (ModelSource, {"uri": "file:///m.pt", "task": "detection"}, False),
    (ModelSource, {"uri": "file:///m.pt", "colour": "red"}, False),
])
def test_field_constraints(model: type[BaseModel], data: dict[str, Any], valid: bool) -> None:
    if valid:
        model.model_validate(data)
    else:
        _error(model, data)


_BASE_SPEC = MINIMAL["spec"]


@pytest.mark.parametrize(("steps", "data", "problem"), [
    ([{"quantize": {}}, {"prune": {}}], {}, "steps[0]: quantize must be the last step"),
    ([{"quantize": {"mode": "static"}}], {}, "needs data.calibration"),
    ([{"distill": {}}], {}, "needs data.train"),
    ([{"prune": {"schedule": {"fineTuneEpochs": 1}}}], {}, "needs data.train"),
    ([{"prune": {"structured": True}}, {"decompose": {}}], {}, "steps[1]: decompose"),
    ([{"decompose": {}}, {"decompose": {}}], {}, "steps[1]: decompose"),
    ([{"decompose": {}}, {"prune": {"structured": True}}, {"quantize": {"mode": "static"}}],
     {"calibration": "builtin://digits"}, None),
    ([{"prune": {"schedule": {"fineTuneEpochs": 1}}}, {"distill": {}}],
     {"train": "builtin://digits"}, None),
], ids=["quantize-not-last", "static-no-calibration", "distill-no-train",
        "fine-tune-no-train", "decompose-after-structured", "decompose-twice", "valid-chain",
        "valid-training"])
def test_steps_fit_together(steps: list[Any], data: dict[str, str], problem: str | None) -> None:
    spec = {**_BASE_SPEC, "steps": steps, "data": {**_BASE_SPEC["data"], **data}}
    if problem is None:
        CompressionSpec.model_validate(spec)
    else:
        assert problem in str(_error(CompressionSpec, spec))


@pytest.mark.parametrize(("search", "problem"), [
    ({"parameter": "steps[0].prune.sparsity", "values": [0.3, 0.5]}, None),
    ({"parameter": "steps[1].quantize.weightType", "values": ["int8", "uint8"]}, None),
    ({"parameter": "steps[1].quantize.perChannel", "values": [True, False]}, None),
    ({"parameter": "steps[0].prune.sparsity", "values": []}, "values"),
    ({"parameter": "steps[0].prune.sparsity", "values": [0.1] * 33}, "values"),
    ({"parameter": "sparsity", "values": [0.3]}, "parameter"),
    ({"parameter": "steps[0].prune.weight_type", "values": [0.3]}, "parameter"),
    ({"parameter": "steps[0].shrink.sparsity", "values": [0.3]}, "parameter"),
    ({"parameter": "steps[2].prune.sparsity", "values": [0.3]}, "names no such step"),
    ({"parameter": "steps[0].quantize.mode", "values": ["static"]}, "names no such step"),
    ({"parameter": "steps[0].prune.density", "values": [0.3]}, "no field 'density'"),
    ({"parameter": "steps[0].prune.sparsity", "values": [0.5, 1.5]}, "search.values[1]"),
    ({"parameter": "steps[1].quantize.weightType", "values": ["int4"]}, "search.values[0]"),
    ({"parameter": "steps[0].prune.sparsity", "values": [0.5], "maxAccuracyDrop": 2},
     "maxAccuracyDrop"),
], ids=["sparsity", "camel-case-field", "bool-values", "no-values", "too-many-values",
        "no-step-prefix", "snake-case-field", "unknown-kind", "index-out-of-range",
        "kind-mismatch", "unknown-field", "value-out-of-range", "value-not-allowed",
        "drop-above-one"])
def test_search_validation(search: dict[str, Any], problem: str | None) -> None:
    spec = {**_BASE_SPEC, "steps": [{"prune": {}}, {"quantize": {}}], "search": search}
    if problem is None:
        parsed = CompressionSpec.model_validate(spec)
        assert isinstance(parsed.search, Search)
    else:
        assert problem in str(_error(CompressionSpec, spec))


# ----------------------------------------------------------------------------- jobfile


@pytest.mark.parametrize(("location", "text"), [
    ((), ""),
    (("spec",), "spec"),
    (("spec", "model", "uri"), "spec.model.uri"),
    (("spec", "steps", 0, "prune", "sparsity"), "spec.steps[0].prune.sparsity"),
    (("spec", "benchmark", "pools", 1, "tolerations", 0, "key"),
     "spec.benchmark.pools[1].tolerations[0].key"),
    (("spec", "search", "values", 3), "spec.search.values[3]"),
    (("spec", "steps", 0), "spec.steps[0]"),
])
def test_field_path(location: tuple[int | str, ...], text: str) -> None:
    assert field_path(location) == text


@pytest.mark.parametrize(("path", "value", "line"), [
    ("spec.model.colour", "red", "spec.model.colour: unknown field"),
    ("spec.steps.0.prune.sparsity", 1.5, "spec.steps[0].prune.sparsity: Input should be less"),
    ("spec.model.format", "tf", "spec.model.format: Input should be 'torch', 'onnx' or 'hf'"),
    ("spec.steps", [], "spec.steps: List should have at least 1 item"),
    ("spec.steps.0", {}, "spec.steps[0]: each step needs exactly one of"),
    ("spec.steps", [{"quantize": {}}, {"prune": {}}],
     "spec.steps[0]: quantize must be the last step"),
    ("spec.benchmark", {"pools": [{"name": "a"}, {"name": "a"}]},
     "spec.benchmark.pools: pool names must be unique"),
    ("metadata.name", "Bad_Name", "metadata.name: String should match pattern"),
    ("spec.promotion", {"gates": {"minSpeedup": {"cpu": "fast"}}},
     "spec.promotion.gates.minSpeedup.cpu:"),
    ("spec.search", {"parameter": "steps[0].prune.sparsity", "values": [{"a": 1}]},
     "spec.search.values[0]: "),
], ids=["unknown-field", "too-large", "literal", "empty-list", "empty-step", "model-validator",
        "field-validator", "pattern", "dict-value", "union-member"])
def test_describe_names_the_field(path: str, value: Any, line: str) -> None:
    error = _error(CompressionJob, _with(MINIMAL, path, value))
    text = describe(error)
    assert text.startswith(line), text
    assert "Value error" not in text
    assert "\n" not in text


def test_describe_counts_the_other_problems() -> None:
    document = _with(_with(MINIMAL, "spec.model.colour", "red"), "spec.steps", [])
    text = describe(_error(CompressionJob, document))
    assert text.endswith("(and 1 more problem(s))"), text


@pytest.mark.parametrize(("document", "where"), [
    (["a", "list"], "a job file must hold one YAML mapping"),
    (None, "a job file must hold one YAML mapping"),
    ({**MINIMAL, "kind": "CronJob"}, "apiVersion/kind"),
    ({**MINIMAL, "apiVersion": "modelpress.io/v1"}, "apiVersion/kind"),
    (_with(MINIMAL, "spec.steps.0.prune.sparsity", 2), "spec.steps[0].prune.sparsity"),
])
def test_parse_job_errors_name_the_file_and_field(document: Any, where: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_job(document, "jobs/my-job.yaml")
    assert str(caught.value).startswith("jobs/my-job.yaml")
    assert where in str(caught.value)


@pytest.mark.parametrize(("content", "problem"), [
    (b"spec: [unclosed\n", "line 2: YAML syntax error"),
    (b"a: 1\n---\nb: 2\n", "YAML syntax error"),
    (b"\xff\xfe\x81", "cannot read the job file"),
], ids=["syntax", "two-documents", "not-utf8"])
def test_load_job_errors_name_the_file(tmp_path: Path, content: bytes, problem: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_bytes(content)
    with pytest.raises(InvalidInput) as caught:
        load_job(job)
    assert caught.value.where == str(job)
    assert problem in caught.value.problem


def test_load_job_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_job(tmp_path / "nowhere.yaml")
    assert caught.value.where.endswith("nowhere.yaml")


# ----------------------------------------------------- untrusted specs: uris, conditions

SECRET = "s3cr3t-Pa55"


def _minimal_with(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with the dotted `path` (mappings only) set, missing mappings added."""
    changed = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node = changed
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return changed


@pytest.mark.parametrize("path", ["spec.model.uri", "spec.data.eval", "spec.output",
                                  "spec.promotion.target"])
@pytest.mark.parametrize("uri", [
    f"s3://AKIAEXAMPLE:{SECRET}@bucket/model.onnx",
    f"https://reader:{SECRET}@models.example/model.onnx",
    f"http://{SECRET}@models.example/model.onnx",
    f"file://user:{SECRET}@localhost/models/model.onnx",
    f"hf://token:{SECRET}@org/model",
])
def test_a_uri_with_credentials_is_refused_without_repeating_them(path: str, uri: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_job(_minimal_with(path, uri), "job.yaml")
    message = str(refused.value)
    assert message.startswith(f"job.yaml: {path}: a uri may not hold credentials"), message
    assert SECRET not in message and "\n" not in message


@pytest.mark.parametrize("uri", [
    "s3://bucket/team@example/model.onnx",  # an "@" in the key, not before the host
    "https://models.example/model.onnx?signature=a@b",
    "hf://org/model@main",
    "file:///models/a@b/model.onnx",
])
def test_an_at_sign_after_the_host_is_no_credential(uri: str) -> None:
    assert parse_job(_with(MINIMAL, "spec.model.uri", uri), "job.yaml").spec.model.uri == uri


def test_the_crd_pattern_refuses_credentials_too() -> None:
    """The schema's own pattern (what the API server checks) says the same as the model."""
    schema = CompressionJob.model_json_schema(by_alias=True)
    pattern = re.compile(schema["$defs"]["ModelSource"]["properties"]["uri"]["pattern"])
    assert pattern.match("s3://bucket/team@example/model.onnx")
    assert pattern.match("file:///models/model.onnx")
    assert not pattern.match(f"s3://AKIAEXAMPLE:{SECRET}@bucket/model.onnx")
    assert not pattern.match("https://reader@models.example/model.onnx")
    assert not pattern.match("s3://")


@pytest.mark.parametrize(("condition", "problem"), [
    ("results.compressionRatio >= 2.0 || " * 30 + "true",
     "String should have at most 1024 characters"),
    ("(" * 33 + "true" + ")" * 33, "parentheses, brackets and braces nest 33 deep; at most 32"),
    ("[" * 33 + "]" * 33 + " == []", "parentheses, brackets and braces nest 33 deep"),
    ("size({'a': " * 17 + "1" + "}) > 0" * 17, "parentheses, brackets and braces nest 34 deep"),
    ("true ? " * 33 + "true" + " : false" * 33, "33 ?: conditionals; at most 32"),
])
def test_a_condition_too_long_or_too_deep_is_refused(condition: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_job(_minimal_with("spec.promotion.condition", condition), "job.yaml")
    assert f"spec.promotion.condition: {problem}" in str(refused.value)


@pytest.mark.parametrize("condition", [
    "(" * 32 + "true" + ")" * 32,
    "true ? " * 32 + "true" + " : false" * 32,
    "'" + "(" * 40 + "?" * 40 + "' != ''",  # inside a string literal: neither counts
    '"\\"' + "(" * 40 + '" != r\'\'\'' + "[" * 40 + "'''",
])
def test_a_condition_within_the_caps_is_accepted(condition: str) -> None:
    job = parse_job(_minimal_with("spec.promotion.condition", condition), "job.yaml")
    assert job.spec.promotion.condition == condition


# ------------------------------------------------------------ credentials per namespace


@pytest.mark.parametrize("name", ["team-a-minio", "minio.credentials", "a", "s3-1"])
def test_a_storage_secret_is_named_by_spec_storage(name: str) -> None:
    job = parse_job(_minimal_with("spec.storage.secretName", name), "job.yaml")
    assert job.spec.storage is not None and job.spec.storage.secret_name == name
    assert job.spec.to_wire()["storage"] == {"secretName": name}


@pytest.mark.parametrize("name", ["Team-A", "team_a", "-minio", "minio-", "a..b",
                                  "../platform", "x" * 254, ""])
def test_a_storage_secret_name_that_is_no_kubernetes_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_job(_minimal_with("spec.storage.secretName", name), "job.yaml")
    assert str(refused.value).startswith("job.yaml: spec.storage.secretName: "), refused.value


def test_spec_storage_takes_only_a_secret_name() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_job(_minimal_with("spec.storage.accessKeyId", "AKIAEXAMPLE"), "job.yaml")
    assert "spec.storage.accessKeyId" in str(refused.value)
    assert parse_job(MINIMAL, "job.yaml").spec.storage is None
