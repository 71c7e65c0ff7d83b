"""Hostile job documents: nothing but InvalidInput (CLI) or phase Failed / InvalidSpec
(operator), always with one line that names the offending field.

Documents come from the resource's own JSON schema (so many get past the field checks and
reach the whole-spec validators), from the shipped examples, and from either put through
a few hostile mutations (wrong types, huge or non-finite numbers, unicode and control
characters, missing and unknown fields, nesting), besides plain random JSON values. Each
document goes to `parse_job` (what the CLI runs) and, as the `spec` of an object the API
server holds, to the operator's controller and pure reconciler. Fixed tables cover what a
generator rarely reaches: deep nesting, YAML that the parser itself chokes on, keys with
line breaks, and CEL conditions nested deeper than the evaluator's stack.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from modelpress.api import (
    MAX_CONDITION_LENGTH,
    MAX_CONDITION_NESTING,
    CompressionJob,
    CompressionStatus,
)
from modelpress.errors import InvalidInput
from modelpress.gates import condition_error
from modelpress.jobfile import load_job, parse_job, validate_job
from modelpress.operator.backends.base import RunRequest, RunState
from modelpress.operator.controller import Controller, view_of
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.reconcile import (
    FINALIZER,
    Config,
    Decision,
    EmitEvent,
    Observation,
    SubmitRun,
    checked,
    output_of,
    reconcile,
)
from modelpress.operator.scope import image_refused, outside_namespace
from modelpress.trust import untrusted_program

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SOURCE = "job.yaml"
NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)
# Jobs in namespace ml may touch /outputs/ml/ and s3://bucket/ml/ (operator/scope.py).
CONFIG = Config(default_output="file:///outputs/{namespace}/{name}",
                namespace_prefixes=("file:///outputs/{namespace}/", "s3://bucket/{namespace}/"))
SCHEMA = CompressionJob.model_json_schema(by_alias=True)
DEFINITIONS = SCHEMA["$defs"]
REQUIRED_TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec")
DEEP = 3000  # deeper than Python's default recursion limit of 1000
# No shrinking: a failure is reported as found, so a suite run stays fast while a bug is
# open (the fixed tables below name each known bug in a small example anyway).
HOSTILE = settings(max_examples=200, deadline=None,
                   phases=[Phase.explicit, Phase.reuse, Phase.generate],
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# For properties whose input overlaps a 200-example one's.
LESS_HOSTILE = settings(HOSTILE, max_examples=100)
# cel-python raises the interpreter's recursion limit when imported; hypothesis notices.
pytestmark = pytest.mark.filterwarnings("ignore:The recursion limit will not be reset")

Json = Any


# ------------------------------------------------------------------------- generators


def _texts() -> st.SearchStrategy[str]:
    """Unicode of every category, control characters and line breaks included, some long."""
    nasty = ["", " ", "\n", "a\nb", "\r\n", "\x00", "\u2028", "\u202e", "\ufeff", "😀",
             "../../etc/passwd", "{{ .Values }}", "${HOME}", "[red]markup[/red]", "'\"",
             "x" * 5000, "ö" * 300]
    return st.one_of(st.text(max_size=40), st.sampled_from(nasty))


def _numbers(json_only: bool) -> st.SearchStrategy[int | float]:
    specials: list[int | float] = [0, -1, -(2**63), 2**63, 10**30, -(10**400), 10**400,
                                   1e308, -1e308, 5e-324, -0.0]
    if not json_only:
        specials += [math.nan, math.inf, -math.inf]
    return st.one_of(st.integers(), st.floats(allow_nan=not json_only,
                                              allow_infinity=not json_only),
                     st.sampled_from(specials))


def _scalars(json_only: bool) -> st.SearchStrategy[Json]:
    return st.one_of(st.none(), st.booleans(), _numbers(json_only), _texts())


def _keys(json_only: bool) -> st.SearchStrategy[Json]:
    """Mapping keys: strings on the wire; YAML may also give numbers, booleans or null."""
    if json_only:
        return _texts()
    return st.one_of(_texts(), st.integers(), st.booleans(), st.none(), st.floats())


def _values(json_only: bool) -> st.SearchStrategy[Json]:
    return st.recursive(_scalars(json_only), lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(_keys(json_only), inner, max_size=4)), max_leaves=12)


def _resolve(node: Json) -> Json:
    while "$ref" in node:
        node = DEFINITIONS[node["$ref"].rsplit("/", 1)[1]]
    return node


def _bounded_number(node: Json) -> st.SearchStrategy[int | float]:
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    if node.get("type") == "integer":
        return st.integers(min_value=low, max_value=high)
    return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False,
                     exclude_min="exclusiveMinimum" in node,
                     exclude_max="exclusiveMaximum" in node)


_BUILT: dict[int, st.SearchStrategy[Json]] = {}


def _from_schema(node: Json) -> st.SearchStrategy[Json]:
    """Documents the JSON schema allows (the whole-spec validators may still refuse them)."""
    node = _resolve(node)
    if id(node) not in _BUILT:
        _BUILT[id(node)] = _build_from_schema(node)
    return _BUILT[id(node)]


def _build_from_schema(node: Json) -> st.SearchStrategy[Json]:
    if "anyOf" in node:
        return st.one_of(*(_from_schema(option) for option in node["anyOf"]))
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        return _object_from_schema(node)
    if kind == "array":
        return st.lists(_from_schema(node.get("items", {})), min_size=node.get("minItems", 0),
                        max_size=min(node.get("maxItems", 4), 4))
    if kind == "string":
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True)
        return st.text(min_size=node.get("minLength", 0), max_size=20)
    if kind in ("integer", "number"):
        return _bounded_number(node)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return _values(False)


def _object_from_schema(node: Json) -> st.SearchStrategy[Json]:
    properties = node.get("properties", {})
    if not properties:
        extra = node.get("additionalProperties")
        each = _from_schema(extra) if isinstance(extra, dict) else _scalars(True)
        return st.dictionaries(st.text(min_size=1, max_size=10), each, max_size=3)
    required = [name for name in node.get("required", []) if name != "status"]
    optional = [name for name in properties if name not in required and name != "status"]
    values = {name: _from_schema(properties[name]) for name in [*required, *optional]}

    @st.composite
    def build(draw: st.DrawFn) -> Json:
        most = node.get("maxProperties", len(optional))
        chosen = draw(st.lists(st.sampled_from(optional), unique=True,
                               min_size=node.get("minProperties", 0),
                               max_size=most)) if optional else []
        return {name: draw(values[name]) for name in [*required, *chosen]}

    return build()


def _paths(document: Json, prefix: tuple[Json, ...] = ()) -> list[tuple[Json, ...]]:
    """Every place in `document` a mutation can reach (the root included)."""
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += _paths(value, (*prefix, index))
    return found


def _nested(depth: int, leaf: Json = "x") -> Json:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@st.composite
def _mutated(draw: st.DrawFn, base: Json, json_only: bool) -> Json:
    """`base` after one to four hostile edits at places drawn from its own structure."""
    document = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(document)))
        if not path:
            continue
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "extra", "nest", "repeat"]))
        if action == "replace":
            parent[last] = draw(_values(json_only))
        elif action == "delete":
            del parent[last]
        elif action == "extra" and isinstance(parent[last], dict):
            parent[last][draw(_keys(json_only))] = draw(_values(json_only))
        elif action == "nest":
            parent[last] = _nested(draw(st.integers(1, 40)), parent[last])
        elif action == "repeat" and isinstance(parent[last], list) and parent[last]:
            parent[last] = parent[last] * draw(st.integers(2, 40))
    return document


def _examples() -> list[Json]:
    return [yaml.safe_load(path.read_text()) for path in EXAMPLES]


def job_documents(json_only: bool = False) -> st.SearchStrategy[Json]:
    from_examples = st.sampled_from(_examples()).flatmap(
        lambda base: _mutated(base, json_only))
    from_schema = _from_schema(SCHEMA)
    mutated_schema = from_schema.flatmap(lambda base: _mutated(base, json_only))
    whole_values = _values(json_only)
    return st.one_of(from_examples, from_schema, mutated_schema, whole_values)


def specs() -> st.SearchStrategy[dict[str, Json]]:
    """What the operator can find in `spec`: a JSON object (the CRD says so) of anything."""
    def spec_of(document: Json) -> dict[str, Json]:
        spec = document.get("spec") if isinstance(document, dict) else None
        return spec if isinstance(spec, dict) else {"model": document}

    return job_documents(json_only=True).map(spec_of)


# ------------------------------------------------------------------------- assertions


@contextmanager
def no_stack_overflow(what: str) -> Iterator[None]:
    """A RecursionError fails the test in one line, its traceback dropped: pytest looks for
    the recursion in a traceback by comparing every frame's locals, which takes minutes on a
    thousand frames holding parse trees."""
    overflow = None
    try:
        yield
    except RecursionError as error:
        overflow = f"{what} overflowed the stack: RecursionError: {error}"
    if overflow:
        raise pytest.fail.Exception(overflow, pytrace=False) from None


def assert_one_line(message: str) -> None:
    assert message, "an empty message"
    assert len(message.splitlines()) == 1, f"not one line: {message!r}"


def assert_names_a_field(problem: str, document: Json) -> None:
    """The problem starts with a field: one of the document's keys or a required one."""
    roots = {str(key) for key in document} | {repr(key) for key in document} \
        if isinstance(document, dict) else set()
    roots |= set(REQUIRED_TOP_LEVEL)
    assert any(problem.startswith(root) and problem[len(root):len(root) + 1] in ".[:"
               for root in roots) or problem.startswith("["), \
        f"the message names no field of the document: {problem!r}"


def check_parse(document: Json) -> CompressionJob | None:
    """parse_job accepts `document` or refuses it the way a user can act on."""
    try:
        return parse_job(document, SOURCE)
    except InvalidInput as error:
        assert_one_line(str(error))
        if error.where == f"{SOURCE}: apiVersion/kind":
            return None
        assert error.where == SOURCE, error.where
        if isinstance(document, dict):
            assert_names_a_field(error.problem, document)
        return None


@dataclass
class _Backend:
    """Just enough of a run backend: every submission is accepted and runs forever."""

    name: str = "local"
    submitted: list[RunRequest] = field(default_factory=list)

    def submit(self, request: RunRequest) -> str:
        self.submitted.append(request)
        return f"run-{len(self.submitted)}"

    def poll(self, run_id: str) -> RunState:
        return RunState(run_id=run_id, phase="Running")

    def terminate(self, run_id: str) -> None:
        pass

    def has_capacity(self) -> bool:
        return True

    def runs_in_namespace(self, namespace: str) -> int:
        return 0


def _body(spec: Json, status: Json | None = None, generation: int = 1) -> dict[str, Json]:
    return {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": "hostile", "namespace": "ml", "uid": "uid-1",
                         "generation": generation, "resourceVersion": "7",
                         "finalizers": [FINALIZER]},
            "spec": spec, "status": status or {}}


def _condition(status: CompressionStatus, type_: str) -> Json:
    return next(c for c in status.conditions if c.type == type_)


def assert_refused_or_admitted(decision: Decision, spec: Json) -> None:
    """InvalidSpec with one line naming a spec field, or a submitted run: nothing else."""
    status = decision.status
    submits = [a for a in decision.actions if isinstance(a, SubmitRun)]
    events = [a for a in decision.actions if isinstance(a, EmitEvent)]
    valid = _parses(spec)
    if valid:
        assert status.phase == "Pending" and len(submits) == 1
        return
    succeeded = _condition(status, "Succeeded")
    assert status.phase == "Failed" and not submits
    assert (succeeded.status, succeeded.reason) == ("False", "InvalidSpec")
    assert_one_line(succeeded.message)
    assert succeeded.message.startswith("spec"), succeeded.message
    assert ("Warning", "InvalidSpec") in [(e.type, e.reason) for e in events]
    # What the controller writes must read back as a status on the next pass.
    written = json.loads(json.dumps(status.to_wire()))
    assert CompressionStatus.model_validate(written) == status


def _parses(spec: Json) -> bool:
    parsed = validate_job({"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
                           "metadata": {"name": "hostile", "namespace": "ml"}, "spec": spec})
    if isinstance(parsed, str):
        return False
    condition = spec.get("promotion", {}).get("condition")
    if condition and condition_error(condition):
        return False
    return _within_scope(parsed)


def _within_scope(job: CompressionJob) -> bool:
    """What one namespace's job may touch: a spec that parses may still name a place
    outside its namespace's prefixes, or an image outside the allowlist."""
    output = output_of(job, CONFIG)
    return outside_namespace(job, output, CONFIG.namespace_prefixes) is None \
        and image_refused(job.spec.image, CONFIG.allowed_images) is None \
        and untrusted_program(job.spec, CONFIG.trust_model_code) is None \
        and (job.spec.storage is None or CONFIG.job_secrets)


# ----------------------------------------------------------------------------- the CLI


@HOSTILE
@given(job_documents())
def test_parse_job_refuses_hostile_documents_with_one_line(document: Json) -> None:
    check_parse(document)


@LESS_HOSTILE
@given(job_documents())
def test_load_job_refuses_hostile_yaml_with_one_line(tmp_path_factory: pytest.TempPathFactory,
                                                     document: Json) -> None:
    """The same documents, written as YAML and read back the way `modelpress run` does."""
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, RecursionError):
        return  # not every Python value has a YAML form
    path = tmp_path_factory.mktemp("yaml") / SOURCE
    path.write_text(text, encoding="utf-8")
    try:
        load_job(path)
    except InvalidInput as error:
        assert_one_line(str(error))
        assert error.where.startswith(str(path))


YAML_SHARDS = ["apiVersion: modelpress.io/v1alpha1\n", "kind: CompressionJob\n", "spec:\n",
               "  model: {uri: builtin://digits-cnn}\n", "- ", "[", "]", "{", "}", ": ", "\n",
               "  ", "&a ", "*a ", "!!binary ", "!!int ", "!!float ", "!!timestamp ",
               "!!python/object:os.system ", "2020-13-45", "0x", "1_0", ".nan", "~", "'",
               '"', "#", "? ", "<<: ", "---\n", "...\n", "\t", "\x00", "ü", "%YAML 1.1\n"]


@HOSTILE
@given(st.lists(st.sampled_from(YAML_SHARDS), max_size=30).map("".join))
def test_load_job_refuses_malformed_yaml_with_one_line(tmp_path_factory: pytest.TempPathFactory,
                                                       text: str) -> None:
    path = tmp_path_factory.mktemp("yaml") / SOURCE
    path.write_text(text, encoding="utf-8")
    try:
        load_job(path)
    except InvalidInput as error:
        assert_one_line(str(error))


# Values PyYAML builds by calling int(), float() or datetime(), which raise ValueError or
# IndexError, and nesting its recursive composer cannot follow.
BAD_YAML = {
    "impossible-date": "apiVersion: modelpress.io/v1alpha1\nkind: CompressionJob\n"
                       "metadata: {name: x, created: 2020-13-45}\nspec: {}\n",
    "impossible-time": "metadata: {created: 2001-12-14 23:59:60}\n",
    "tagged-int": "spec: {steps: [{prune: {sparsity: !!int 12x}}]}\n",
    "tagged-float": "spec: {steps: [{prune: {sparsity: !!float half}}]}\n",
    "empty-hex": "spec: {benchmark: {iterations: 0x_}}\n",
    "empty-tagged-int": "spec: {benchmark: {iterations: !!int }}\n",
    "deep-flow-sequence": "[" * DEEP + "]" * DEEP + "\n",
    "deep-block-mapping": "".join(f"{'  ' * level}k:\n" for level in range(DEEP // 3)) + "x\n",
}


@pytest.mark.parametrize("text", BAD_YAML.values(), ids=BAD_YAML.keys())
def test_yaml_the_parser_chokes_on_is_bad_input(tmp_path: Path, text: str) -> None:
    path = tmp_path / SOURCE
    path.write_text(text, encoding="utf-8")
    with no_stack_overflow("reading the YAML"), pytest.raises(InvalidInput) as refused:
        load_job(path)
    assert_one_line(str(refused.value))
    assert refused.value.where == str(path)


def _base() -> Json:
    return yaml.safe_load((ROOT / "examples" / "digits-prune-quantize.yaml").read_text())


def _deep_at(path: str) -> Callable[[], Json]:
    """The digits example with DEEP levels of nesting at `path` (dotted, digits index)."""
    def build() -> Json:
        document = _base()
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = _nested(DEEP)
        return document
    return build


DEEP_DOCUMENTS = {place: _deep_at(place) for place in (
    "apiVersion", "kind", "metadata.name", "metadata.labels",
    "spec.model.uri", "spec.colour", "spec.steps.0", "spec.benchmark.pools.0.nodeSelector",
    "spec.promotion.gates.minSpeedup", "spec.promotion.condition", "status")}


@pytest.mark.parametrize("build", DEEP_DOCUMENTS.values(), ids=DEEP_DOCUMENTS.keys())
def test_deep_nesting_is_refused_naming_the_field(build: Callable[[], Json]) -> None:
    document = build()
    with no_stack_overflow("parse_job"):
        parsed = check_parse(document)
    assert parsed is None, "a deeply nested value was accepted"


@pytest.mark.parametrize("build", DEEP_DOCUMENTS.values(), ids=DEEP_DOCUMENTS.keys())
def test_deep_nesting_in_the_spec_fails_the_job(build: Callable[[], Json]) -> None:
    spec = build()["spec"]
    job = view_of(_body(spec))
    with no_stack_overflow("reconcile"):
        decision = reconcile(job, checked(job, CONFIG), Observation(now=NOW), CONFIG)
    if spec == _base()["spec"]:
        assert decision.status.phase == "Pending"  # the nesting was outside the spec
    else:
        assert_refused_or_admitted(decision, spec)


CONTROL_CHARACTER_KEYS = ["a\nb", "a\rb", "line\u2028break", "tab\x0bbed", "bell\x07"]


@pytest.mark.parametrize("key", CONTROL_CHARACTER_KEYS, ids=repr)
def test_an_unknown_field_with_a_line_break_stays_one_line(key: str) -> None:
    """A quoted YAML key may hold any character; the error line must still be one line."""
    document = _base()
    document["spec"]["model"][key] = 1
    with pytest.raises(InvalidInput) as refused:
        parse_job(document, SOURCE)
    assert_one_line(str(refused.value))
    assert refused.value.problem.startswith("spec.model")


@pytest.mark.parametrize("key", ["fine-tune-epochs", "weights[0]", "float", "none", ""],
                         ids=repr)
def test_an_unknown_field_is_named_whatever_its_name(key: str) -> None:
    """Kebab case is the likeliest typo of a camelCase field; the message must name it."""
    document = _base()
    document["spec"]["steps"][0]["prune"][key] = 1
    with pytest.raises(InvalidInput) as refused:
        parse_job(document, SOURCE)
    assert_one_line(str(refused.value))
    path, _, problem = refused.value.problem.rpartition(": ")
    assert problem == "unknown field", refused.value.problem
    assert path in (f"spec.steps[0].prune.{key}", f"spec.steps[0].prune[{key!r}]"), path


@pytest.mark.parametrize("uri", ["file:///models/a\nb.onnx", "builtin://digits-cnn\n",
                                 "s3://bucket/model.onnx\r\nX-Injected: 1", "file:///m\x00.pt",
                                 "https://host/model.onnx\u2028"], ids=repr)
def test_a_uri_with_control_characters_is_refused(uri: str) -> None:
    """A line break in a uri would split every later error line (and inject headers)."""
    document = _base()
    document["spec"]["model"]["uri"] = uri
    with pytest.raises(InvalidInput) as refused:
        parse_job(document, SOURCE)
    assert_one_line(str(refused.value))
    assert refused.value.problem.startswith("spec.model.uri")


# ------------------------------------------------------------------------ the operator


@HOSTILE
@given(specs())
def test_reconcile_fails_a_hostile_spec_naming_the_field(spec: dict[str, Json]) -> None:
    job = view_of(_body(spec))
    assert_refused_or_admitted(reconcile(job, checked(job, CONFIG), Observation(now=NOW),
                                         CONFIG), spec)


@LESS_HOSTILE
@given(specs())
def test_the_controller_writes_a_status_for_any_spec(spec: dict[str, Json]) -> None:
    """The whole sync (metrics and events included) ends in a JSON status patch."""
    events: list[tuple[str, str, str]] = []
    backend = _Backend()
    controller = Controller(backend, CONFIG, OperatorMetrics(), clock=lambda: NOW)
    patch = controller.sync(view_of(_body(spec)), lambda *event: events.append(event))
    json.dumps(patch, allow_nan=False)
    if _parses(spec):
        assert patch["phase"] == "Pending" and len(backend.submitted) == 1
    else:
        assert patch["phase"] == "Failed" and not backend.submitted
        assert ("Warning", "InvalidSpec") in [event[:2] for event in events]
        assert all(len(message.splitlines()) == 1 for _, _, message in events)


def _finished_status() -> Json:
    figures = {"parameters": 1000, "metric": {"name": "accuracy", "value": 0.98}}
    condition = {"status": "True", "message": "", "lastTransitionTime": "2025-05-01T11:00:00Z"}
    return {"phase": "Succeeded", "runId": "run-1", "backend": "local", "observedGeneration": 1,
            "results": {"baseline": {**figures, "sizeBytes": 400_000},
                        "compressed": {**figures, "sizeBytes": 100_000},
                        "compressionRatio": 4.0, "accuracyDrop": 0.002,
                        "speedup": {"cpu": 1.8}},
            "artifacts": {"output": "file:///outputs/ml/hostile"},
            "promotion": {"decision": "Promoted", "reasons": ["no gates configured"]},
            "conditions": [{**condition, "type": "Succeeded", "reason": "RunSucceeded"},
                           {**condition, "type": "Promoted", "reason": "GatesPassed"}]}


def _rejudged(promotion: Json) -> Decision:
    """A finished job whose (mutable) spec.promotion was just edited."""
    spec = {**_base()["spec"], "promotion": promotion}
    job = view_of(_body(spec, status=_finished_status(), generation=2))
    return reconcile(job, checked(job, CONFIG), Observation(now=NOW), CONFIG)


@LESS_HOSTILE
@given(st.one_of(_from_schema(DEFINITIONS["Promotion"]),
                 _from_schema(DEFINITIONS["Promotion"]).flatmap(lambda p: _mutated(p, True)),
                 _values(True)))
def test_editing_a_finished_jobs_promotion_never_crashes(promotion: Json) -> None:
    decision = _rejudged(promotion)
    assert decision.status.phase == "Succeeded"
    assert decision.status.promotion is not None
    promoted = _condition(decision.status, "Promoted")
    assert_one_line(promoted.message or promoted.reason)


@pytest.mark.parametrize("pool", ["gpu\nprod", "gpu\r", "gpu\u2028"], ids=repr)
def test_a_speedup_gate_on_an_odd_pool_name_stays_one_line(pool: str) -> None:
    """minSpeedup keys name pools; one with a line break must not break the condition."""
    decision = _rejudged({"gates": {"minSpeedup": {pool: 1.5}}})
    promoted = _condition(decision.status, "Promoted")
    assert promoted.status == "False", promoted
    assert_one_line(promoted.message)


# CEL the parser accepts (it is not recursive) but whose evaluation recurses once per level;
# the schema caps brackets and ?: at MAX_CONDITION_NESTING, the rest reaches the evaluator.
DEEP_CONDITIONS = {
    "parentheses": "(" * 500 + "true" + ")" * 500,
    "parentheses-at-the-cap": "(" * MAX_CONDITION_NESTING + "true" + ")" * MAX_CONDITION_NESTING,
    "negations": "!" * 1000 + "true",
    "minus-signs": "-" * 1000 + "1 > 0",
    "lists": "[" * 500 + "]" * 500 + " == []",
    "conditionals": "true ? " * 60 + "true" + " : false" * 60,
    "sums": "1 + " * 250 + "1 > 0",
    "conjunctions": "true" + " && true" * 125,
}


@pytest.mark.parametrize("condition", DEEP_CONDITIONS.values(), ids=DEEP_CONDITIONS.keys())
def test_a_deeply_nested_condition_is_refused_or_judged(condition: str) -> None:
    """Within MAX_CONDITION_LENGTH, yet each level of nesting costs the evaluator stack
    frames: the job must end judged (or its spec refused), never in a reconcile that
    always raises."""
    assert len(condition) <= MAX_CONDITION_LENGTH
    with no_stack_overflow("admitting the job"):
        job = view_of(_body({**_base()["spec"], "promotion": {"condition": condition}}))
        admitted = reconcile(job, checked(job, CONFIG), Observation(now=NOW), CONFIG)
    if admitted.status.phase == "Failed":
        assert re.match(r"^spec\.promotion\.condition: ", _condition(
            admitted.status, "Succeeded").message)
        return
    with no_stack_overflow("judging the condition"):
        decision = _rejudged({"condition": condition})
    assert decision.status.promotion is not None
    assert decision.status.promotion.decision in ("Promoted", "Rejected")


def test_the_generators_reach_valid_and_invalid_documents() -> None:
    """Both outcomes occur, so the properties above are not vacuous."""
    outcomes: set[bool] = set()

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(job_documents())
    def classify(document: Json) -> None:
        outcomes.add(check_parse(document) is not None)

    classify()
    assert outcomes == {True, False}

