"""The chart's ValidatingAdmissionPolicy: valid against Kubernetes' schemas, and its CEL,
rendered from the values, evaluated with cel-python on good and hostile CompressionJobs as
the API server would evaluate it, and compared with the operator's own intake.

Kubernetes' CEL and cel-python agree on what the policy uses: has() on an absent field is
false, matches() searches (unanchored) with RE2 in both, raw strings r'...', startsWith,
size, exists, exists_one, all, `in`, and == on whole objects. The policy avoids what only
Kubernetes has (split(), url(), optional `?.` fields, ext libraries). An evaluation error,
which Kubernetes turns into a refusal (failurePolicy: Fail), counts as a refusal here too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import celpy
import kubernetes_validate
import pytest
from celpy.evaluation import CELEvalError
from deploy_chart import KUBERNETES_VERSIONS, VALUES, by_kind, render
from test_chart import _settings_from

from modelpress.operator.main import operator_config
from modelpress.operator.reconcile import Config, JobView, checked

STEP_IMAGE = "ghcr.io/modelpress/step:0.1.0"
CUDA_IMAGE = "ghcr.io/modelpress/step:0.1.0-cuda"
BASE_SPEC: dict[str, Any] = {
    "model": {"uri": "builtin://digits-cnn"},
    "data": {"eval": "builtin://digits?split=test"},
    "steps": [{"quantize": {"mode": "dynamic"}}],
    "image": "",
}


def policy_of(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [policy] = by_kind(manifests, "ValidatingAdmissionPolicy")
    return policy


def _cel(value: Any) -> Any:
    return celpy.json_to_cel(value)


@dataclass(frozen=True)
class Verdict:
    """What the API server does with a write: skipped (no check applies) or the messages
    of the validations that refused it (none: admitted)."""

    checked: bool
    refusals: tuple[str, ...]

    @property
    def admitted(self) -> bool:
        return not self.refusals


def _evaluate(expression: str, activation: dict[str, Any]) -> Any:
    environment = celpy.Environment()
    program = environment.program(environment.compile(expression))
    return program.evaluate(activation)


def admit(policy: dict[str, Any], job: dict[str, Any], old: dict[str, Any] | None = None,
          ) -> Verdict:
    """The policy's verdict on creating `job` (or updating `old` into it), with its match
    conditions, variables and validations evaluated in Kubernetes' order."""
    spec = policy["spec"]
    activation = {"object": _cel(job), "oldObject": _cel(old),
                  "request": _cel({"operation": "UPDATE" if old else "CREATE"})}
    if not all(_evaluate(c["expression"], activation) for c in spec["matchConditions"]):
        return Verdict(checked=False, refusals=())
    variables: dict[str, Any] = {}
    for variable in spec["variables"]:
        variables[variable["name"]] = _evaluate(variable["expression"],
                                                {**activation, "variables": _cel(variables)})
    activation["variables"] = _cel(variables)
    refusals = []
    for validation in spec["validations"]:
        try:
            allowed = _evaluate(validation["expression"], activation)
        except CELEvalError:
            allowed = False
        if isinstance(allowed, CELEvalError) or not allowed:
            refusals.append(validation["message"])
    return Verdict(checked=True, refusals=tuple(refusals))


def job_in(namespace: str, **spec: Any) -> dict[str, Any]:
    """A valid CompressionJob in `namespace` with `spec`'s fields replacing the base ones."""
    return {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
            "metadata": {"name": "job", "namespace": namespace},
            "spec": {**copy.deepcopy(BASE_SPEC), **spec}}


def operator_refuses(job: dict[str, Any], config: Config) -> bool:
    view = JobView(namespace=job["metadata"]["namespace"], name=job["metadata"]["name"],
                   uid="uid", generation=1, spec=job["spec"])
    return isinstance(checked(view, config), str)


LONGEST_CONDITION = "results.accuracyDrop <= 0.01".ljust(1024)
TEAM_A = "s3://modelpress/team-a"
GOOD: dict[str, dict[str, Any]] = {
    "defaults": {},
    "output-under-prefix": {"output": f"{TEAM_A}/digits/"},
    "output-is-the-prefix": {"output": TEAM_A},
    "promotion-target-under-prefix": {"promotion": {"target": f"{TEAM_A}/prod/"}},
    "stored-inputs-under-prefix": {"model": {"uri": f"{TEAM_A}/models/m.onnx"},
                                   "data": {"eval": f"{TEAM_A}/data/eval.npz",
                                            "train": f"{TEAM_A}/data/train.npz"}},
    "remote-inputs": {"model": {"uri": "https://models.example/m.onnx"},
                      "data": {"eval": "hf://datasets/ag_news"}},
    "the-step-image-by-name": {"image": STEP_IMAGE},
    "distinct-pools": {"benchmark": {"pools": [{"name": "cpu"}, {"name": "gpu-a100"}]}},
    "longest-condition": {"promotion": {"condition": LONGEST_CONDITION}},
}
HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "output-in-team-b": ({"output": "s3://modelpress/team-b/x/"}, "spec.output"),
    "output-look-alike": ({"output": "s3://modelpress/team-a-evil/x/"}, "spec.output"),
    "output-dot-dot": ({"output": f"{TEAM_A}/../team-b/x/"}, "spec.output"),
    "output-other-bucket": ({"output": "s3://production/team-a/"}, "spec.output"),
    "output-credentials": ({"output": "s3://key:secret@modelpress/team-a/x/"}, "spec.output"),
    "target-in-team-b": ({"promotion": {"target": "s3://modelpress/team-b/prod/"}},
                         "spec.promotion.target"),
    "model-from-team-b": ({"model": {"uri": "s3://modelpress/team-b/m.onnx"}},
                          "spec.model.uri"),
    "model-credentials": ({"model": {"uri": "https://user:pass@models.example/m.onnx"}},
                          "spec.model.uri"),
    "eval-from-the-pod": ({"data": {"eval": "file:///etc/passwd"}}, "spec.data.eval"),
    "train-dot-dot": ({"data": {"eval": "builtin://digits?split=test",
                                "train": f"{TEAM_A}/../team-b/train.npz"}}, "spec.data.train"),
    "validation-from-team-b": ({"data": {"eval": "builtin://digits?split=test",
                                         "validation": "s3://modelpress/team-b/v.npz"}},
                               "spec.data.validation"),
    "disallowed-image": ({"image": "docker.io/attacker/steal:latest"}, "spec.image"),
    "long-condition": ({"promotion": {"condition": LONGEST_CONDITION + " "}},
                       "spec.promotion.condition"),
    "pool-name": ({"benchmark": {"pools": [{"name": "GPU_pool"}]}}, "spec.benchmark.pools"),
    "pool-twice": ({"benchmark": {"pools": [{"name": "cpu"}, {"name": "cpu"}]}},
                   "spec.benchmark.pools"),
}
# Refused at admission though the operator would take it: percent-escapes, which file://
# uris unquote, are refused where CEL cannot tell what they decode to.
STRICTER: dict[str, tuple[dict[str, Any], str]] = {
    "output-escaped-dots": ({"output": f"{TEAM_A}/%2e%2e/team-b/"}, "spec.output"),
}


@pytest.fixture(scope="module")
def default_policy() -> dict[str, Any]:
    return policy_of(render({}))


@pytest.fixture(scope="module")
def default_config() -> Config:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return operator_config(_settings_from(render({}), monkeypatch))


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values_name", sorted(VALUES))
def test_the_policy_and_binding_validate(values_name: str, kube_version: str) -> None:
    manifests = render(VALUES[values_name])
    [binding] = by_kind(manifests, "ValidatingAdmissionPolicyBinding")
    policy = policy_of(manifests)
    for document in (policy, binding):
        kubernetes_validate.validate(document, kube_version, strict=True)
    assert binding["spec"] == {"policyName": policy["metadata"]["name"],
                               "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"


def test_every_expression_compiles(default_policy: dict[str, Any]) -> None:
    spec = default_policy["spec"]
    expressions = [item["expression"] for key in ("matchConditions", "variables", "validations")
                   for item in spec[key]]
    assert len(expressions) == 13
    for expression in expressions:
        celpy.Environment().compile(expression)  # CELParseError on a syntax error


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_jobs_are_admitted(default_policy: dict[str, Any], default_config: Config,
                                name: str) -> None:
    job = job_in("team-a", **GOOD[name])
    assert admit(default_policy, job) == Verdict(checked=True, refusals=())
    assert not operator_refuses(job, default_config)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_jobs_are_refused_naming_the_field(default_policy: dict[str, Any],
                                                   default_config: Config, name: str) -> None:
    change, field = HOSTILE[name]
    job = job_in("team-a", **change)
    verdict = admit(default_policy, job)
    assert [refusal.split(":")[0].split(" ")[0] for refusal in verdict.refusals] == [field]
    assert operator_refuses(job, default_config)  # the operator agrees


@pytest.mark.parametrize("name", sorted(STRICTER))
def test_admission_is_stricter_where_cel_cannot_decode(default_policy: dict[str, Any],
                                                       default_config: Config, name: str) -> None:
    change, field = STRICTER[name]
    job = job_in("team-a", **change)
    assert admit(default_policy, job).refusals[0].startswith(field)
    assert not operator_refuses(job, default_config)


def test_the_same_job_is_good_in_its_own_namespace(default_policy: dict[str, Any]) -> None:
    job = job_in("team-b", output="s3://modelpress/team-b/x/")
    assert admit(default_policy, job).admitted
    assert not admit(default_policy, job_in("team-a", output="s3://modelpress/team-b/x/")).admitted


def test_only_spec_changes_are_checked(default_policy: dict[str, Any]) -> None:
    """The operator's finalizer and annotation patches, and a deletion's finalizer removal,
    pass even when a job no longer fits the values; a promotion edit is checked."""
    old = job_in("team-a", image="an/image:now-disallowed")
    patched = copy.deepcopy(old)
    patched["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]
    assert admit(default_policy, patched, old=old) == Verdict(checked=False, refusals=())
    aimed = job_in("team-a", promotion={"target": "s3://modelpress/team-b/prod/"})
    verdict = admit(default_policy, aimed, old=job_in("team-a"))
    assert verdict.checked and verdict.refusals[0].startswith("spec.promotion.target")


def test_the_policy_follows_the_tenancy_values() -> None:
    policy = policy_of(render({
        "tenancy": {"prefixes": ["s3://models/{namespace}/", "file:///files/{namespace}"],
                    "allowedImages": ["registry.example/step:1"]}}))
    assert admit(policy, job_in("ml", output="s3://models/ml/a/",
                                image="registry.example/step:1")).admitted
    assert admit(policy, job_in("ml", output="file:///files/ml/a/")).admitted
    for output in ("file:///files/ml-evil/a/", "file:///files/ml/../other/",
                   "file:///files/ml/%2e%2e/other/", "s3://modelpress/ml/a/"):
        assert not admit(policy, job_in("ml", output=output)).admitted, output
    # An allowlist replaces the step image, as in the operator (MODELPRESS_ALLOWED_IMAGES).
    assert not admit(policy, job_in("ml", image=STEP_IMAGE)).admitted


def test_the_gpu_values_admit_the_cuda_image() -> None:
    policy = policy_of(render(VALUES["kfp-gpu"]))
    assert admit(policy, job_in("team-a", image=CUDA_IMAGE)).admitted
    assert not admit(policy, job_in("team-a", image="ghcr.io/modelpress/step:evil")).admitted


def test_namespaced_mode_scopes_the_policy_to_its_namespace() -> None:
    namespaced = policy_of(render({"watch": {"namespace": "ml-team"}}))["spec"]
    assert namespaced["matchConstraints"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "ml-team"}}
    cluster = policy_of(render({"watch": {"allNamespaces": True}, "backend": "kfp"}))["spec"]
    assert "namespaceSelector" not in cluster["matchConstraints"]


def test_admission_can_be_turned_off() -> None:
    manifests = render({"admission": {"enabled": False}})
    assert not by_kind(manifests, "ValidatingAdmissionPolicy")
    assert not by_kind(manifests, "ValidatingAdmissionPolicyBinding")
