"""The chart's RBAC rules are exactly what the operator uses: nothing missing, nothing extra.

What the operator uses is derived twice. From the code: the resources its kopf handlers
serve (kopf lists, watches and patches them, and patches their status subresource), the
Events it posts, and every Kubernetes client call it makes (CustomObjectsApi's
`<verb>_namespaced_custom_object` and friends). On the wire: the operator, started as
`modelpress operator` with KServe promotion enabled, takes jobs through their whole life
against the Kubernetes API stand-in (created, run, promoted into an InferenceService,
re-judged after an edit, deleted through the finalizer, and one refused as invalid), and
every request it sends is turned into (apiGroup, resource, verb). Both must match the
Role / ClusterRole the chart renders, for each way the chart is configured.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runs import LIGHT_SPEC, job_document
from standin_operator import CRD, KubeStandIn, OperatorProcess, jobs, wait_until

from modelpress.api import API_GROUP
from modelpress.crd import PLURAL

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "operator"
sys.path.insert(0, str(ROOT / "tests" / "deploy"))

from deploy_chart import VALUES, by_kind, render  # noqa: E402
from kube_store import kserve_canary_status  # noqa: E402  (on the path standin_operator set)

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)
KSERVE_GROUP = "serving.kserve.io"
# kopf watches namespaces and CRDs to notice new ones at run time; without the permission
# it logs a warning and works with what it was started with (the chart grants neither).
KOPF_OPTIONAL: set[Rule] = {
    ("", "namespaces", "list"), ("", "namespaces", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
# Peering between replicas (operator/main.py's peering_options, operator/peering.py): kopf
# lists, watches and patches the peering object, the ticker gets it (its calls are found in
# the code, below). Which object depends on how the operator watches: a KopfPeering in the
# watched namespace, else the cluster's. The chart always runs peered replicas; the
# operators these tests start run standalone.
PEERING_GROUP = "kopf.dev"
PEERED = ("get", "list", "watch", "patch")
# kopf decorators that serve a resource (and so list, watch and patch it).
KOPF_RESOURCE_HANDLERS = re.compile(r"^kopf\.(on\.(create|update|delete|resume|field|event)"
                                    r"|timer|daemon|index)$")
KOPF_EVENT_CALLS = re.compile(r"^kopf\.(event|info|warn|exception)$")
CLIENT_VERBS = {"get": "get", "read": "get", "list": "list", "create": "create",
                "patch": "patch", "replace": "update", "delete": "delete"}
CUSTOM_OBJECT_CALL = re.compile(r"^(get|list|create|patch|replace|delete)_"
                                r"(namespaced_|cluster_)?custom_object(_status|_scale)?$")
OTHER_CLIENT_CALL = re.compile(r"^(read|list|create|patch|replace|delete)_"
                               r"(namespaced|cluster)_\w+$")
CHART_CONFIGURATIONS = {
    "namespaced": ({}, False),
    "namespaced-kserve": ({"promotion": {"kserve": {"enabled": True}}}, True),
    "cluster-wide": ({"backend": "kfp", "watch": {"allNamespaces": True}}, False),
    "kfp-gpu": (VALUES["kfp-gpu"], True),
}


def _peering_plural(values: dict[str, Any]) -> str:
    cluster_wide = bool(values.get("watch", {}).get("allNamespaces"))
    return "clusterkopfpeerings" if cluster_wide else "kopfpeerings"


# ----------------------------------------------------------------------- from the code


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _value(node: ast.AST, module: Any) -> Any:
    """A constant, or a name / attribute the module resolves (e.g. kserve.KSERVE_GROUP)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return getattr(module, node.id)
    if isinstance(node, ast.Attribute):
        return getattr(_value(node.value, module), node.attr)
    raise AssertionError(f"cannot resolve {ast.dump(node)} in {module.__name__}")


def _module_name(path: Path) -> str:
    parts = path.relative_to(OPERATOR).with_suffix("").parts
    return ".".join(("modelpress", "operator", *parts)).removesuffix(".__init__")


def _crd_has_status_subresource() -> bool:
    crd = yaml.safe_load(CRD.read_text())
    return all("status" in version.get("subresources", {}) for version in crd["spec"]["versions"])


def _rules_in(path: Path) -> tuple[set[Rule], list[str]]:
    """The rules one operator module needs, and client calls this test cannot map."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = importlib.import_module(_module_name(path))
    rules: set[Rule] = set()
    unknown: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if KOPF_RESOURCE_HANDLERS.match(name) and len(node.args) >= 3:
            group, plural = _value(node.args[0], module), _value(node.args[2], module)
            rules |= {(group, plural, verb) for verb in ("list", "watch", "patch")}
            if "patch.status" in ast.unparse(tree) and _crd_has_status_subresource():
                rules.add((group, f"{plural}/status", "patch"))
        elif KOPF_EVENT_CALLS.match(name):
            rules.add(("", "events", "create"))
        elif isinstance(node.func, ast.Attribute):
            call = CUSTOM_OBJECT_CALL.match(node.func.attr)
            if call:
                plural_at = 3 if call[2] == "namespaced_" else 2
                group = _value(node.args[0], module)
                plural = _value(node.args[plural_at], module)
                resource = plural + (f"/{call[3][1:]}" if call[3] else "")
                rules.add((group, resource, CLIENT_VERBS[call[1]]))
            elif OTHER_CLIENT_CALL.match(node.func.attr):
                unknown.append(f"{path.name}: {ast.unparse(node.func)}")
    return rules, unknown


def rules_from_code() -> set[Rule]:
    rules: set[Rule] = set()
    unknown: list[str] = []
    for path in sorted(OPERATOR.rglob("*.py")):
        found, unmapped = _rules_in(path)
        rules |= found
        unknown += unmapped
    assert not unknown, f"Kubernetes client calls this test cannot map yet: {unknown}"
    return rules


def rules_from_chart(values: dict[str, Any]) -> set[Rule]:
    manifests = render(values)
    [role] = [d for d in manifests if d["kind"] in ("Role", "ClusterRole")]
    assert by_kind(manifests, f"{role['kind']}Binding"), "the role is bound to nothing"
    return {(group, resource, verb) for rule in role["rules"]
            for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"]}


def needed(used: set[Rule], kserve: bool, values: dict[str, Any]) -> set[Rule]:
    """What a chart configuration must grant: KServe's rules only when it is enabled, and
    peering's on the peering object of its way of watching."""
    peering = {(PEERING_GROUP, _peering_plural(values), verb) for verb in PEERED}
    return {rule for rule in used - KOPF_OPTIONAL
            if (kserve or rule[0] != KSERVE_GROUP) and rule[0] != PEERING_GROUP} | peering


def assert_exact(granted: set[Rule], wanted: set[Rule], source: str) -> None:
    missing, extra = sorted(wanted - granted), sorted(granted - wanted)
    assert not missing and not extra, (f"the chart's rules differ from what {source} uses: "
                                       f"missing {missing}, extra {extra}")


def test_the_code_derivation_finds_what_the_operator_is_known_to_do() -> None:
    """Guards the derivation itself: each kind of use is found."""
    used = rules_from_code()
    assert {(API_GROUP, PLURAL, "watch"), (API_GROUP, f"{PLURAL}/status", "patch"),
            ("", "events", "create"), (KSERVE_GROUP, "inferenceservices", "patch"),
            (PEERING_GROUP, "kopfpeerings", "get"),
            (PEERING_GROUP, "clusterkopfpeerings", "get")} <= used


@pytest.mark.parametrize("configuration", CHART_CONFIGURATIONS.values(),
                         ids=CHART_CONFIGURATIONS.keys())
def test_the_chart_grants_what_the_code_uses(configuration: tuple[dict[str, Any], bool]
                                             ) -> None:
    values, kserve = configuration
    assert_exact(rules_from_chart(values), needed(rules_from_code(), kserve, values),
                 "the code")


# ------------------------------------------------------------------------- on the wire


INFERENCE_SERVICE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": f"inferenceservices.{KSERVE_GROUP}"},
    "spec": {"group": KSERVE_GROUP, "scope": "Namespaced",
             "names": {"kind": "InferenceService", "plural": "inferenceservices",
                       "singular": "inferenceservice"},
             "versions": [{"name": "v1beta1", "served": True, "storage": True, "schema": {
                 "openAPIV3Schema": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}}}]}}
_DISCOVERY = re.compile(r"^/(version|openapi/.*|api|api/v1|apis|apis/[^/]+|apis/[^/]+/[^/]+)$")


def rule_of(method: str, path_and_query: str) -> Rule | None:
    """The RBAC rule a request needs; None for discovery (granted to every user)."""
    parsed = urllib.parse.urlsplit(path_and_query)
    if _DISCOVERY.match(parsed.path.rstrip("/") or "/"):
        return None
    parts = [part for part in parsed.path.split("/") if part]
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource += f"/{rest[2]}"
    watching = urllib.parse.parse_qs(parsed.query).get("watch", [""])[0] in ("true", "1")
    verb = {"GET": ("get" if name else "watch" if watching else "list"), "POST": "create",
            "PATCH": "patch", "PUT": "update",
            "DELETE": "delete" if name else "deletecollection"}[method]
    return group, resource, verb


class _Cluster:
    """Direct changes to the stand-in's store: they send no request, so the request log
    holds the operator's alone."""

    def __init__(self, api: KubeStandIn) -> None:
        self.api = api

    def _kind(self, plural: str) -> Any:
        return next(kind for kind in self.api.store.kinds if kind.plural == plural)

    def create(self, plural: str, document: dict[str, Any]) -> None:
        self.api.call(lambda: self.api.store.create(self._kind(plural), "default", document))

    def edit_spec(self, plural: str, name: str, spec: dict[str, Any]) -> None:
        def edit() -> None:
            current = self.api.store.get(self._kind(plural), "default", name)
            self.api.store.update(self._kind(plural), "default", name,
                                  {**current, "spec": spec}, None)
        self.api.call(edit)

    def delete(self, plural: str, name: str) -> None:
        self.api.call(lambda: self.api.store.delete(self._kind(plural), "default", name))

    def kserve_reports_the_canary(self, name: str) -> None:
        """Play KServe's controller: the canary revision serves its share of traffic."""
        def report() -> None:
            kind = self._kind("inferenceservices")
            service = self.api.store.get(kind, "default", name)
            share = service["spec"]["predictor"].get("canaryTrafficPercent", 100)
            self.api.store.update(kind, "default", name,
                                  {"status": kserve_canary_status(service, share)}, "status")
        self.api.call(report)


def _canary_applied(api: KubeStandIn) -> bool:
    [service] = api.call(lambda: [s for s in api.store.objects.values()
                                  if s.get("kind") == "InferenceService"])
    return "canaryTrafficPercent" in service["spec"]["predictor"]


def _promotion(api: KubeStandIn, name: str) -> str | None:
    status = jobs(api).get(name, {}).get("status") or {}
    return (status.get("promotion") or {}).get("decision")


@pytest.fixture(scope="module")
def requests_sent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("rbac")
    api = KubeStandIn([yaml.safe_load(CRD.read_text()), INFERENCE_SERVICE_CRD]).start()
    cluster = _Cluster(api)
    operator = OperatorProcess(root, api, extra_env={"MODELPRESS_KSERVE_ENABLED": "true"})
    try:
        operator.start()
        cluster.create("inferenceservices", {
            "apiVersion": f"{KSERVE_GROUP}/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "digits", "labels": {"modelpress.io/promotion": "enabled"}},
            "spec": {"predictor": {"model": {"storageUri": "s3://models/previous"}}}})
        promoted = job_document("promoted", {**LIGHT_SPEC, "promotion": {
            "target": (root / "production").as_uri()}})
        promoted["metadata"]["annotations"] = {"modelpress.io/inference-service": "digits"}
        cluster.create(PLURAL, promoted)
        cluster.create(PLURAL, job_document("invalid", {**LIGHT_SPEC, "steps": [
            {"quantize": {}}, {"prune": {}}]}))
        wait_until("the canary", lambda: _canary_applied(api), 60)
        cluster.kserve_reports_the_canary("digits")
        wait_until("the promotion", lambda: _promotion(api, "promoted") == "Promoted", 60)
        edited = {**promoted["spec"], "promotion": {"gates": {"minCompressionRatio": 50.0}}}
        cluster.edit_spec(PLURAL, "promoted", edited)
        wait_until("the new decision", lambda: _promotion(api, "promoted") == "Rejected", 60)
        cluster.delete(PLURAL, "promoted")
        wait_until("the finalizer", lambda: "promoted" not in jobs(api), 60)
        assert jobs(api)["invalid"]["status"]["phase"] == "Failed"
    finally:
        operator.stop()
        api.stop()
    yield list(api.requests)


@pytest.mark.e2e
def test_the_chart_grants_what_the_operator_sends(requests_sent: list[tuple[str, str]]
                                                  ) -> None:
    used = {rule for method, path in requests_sent if (rule := rule_of(method, path))}
    assert (KSERVE_GROUP, "inferenceservices", "patch") in used, "the promotion never ran"
    for name, (values, kserve) in CHART_CONFIGURATIONS.items():
        assert_exact(rules_from_chart(values), needed(used, kserve, values),
                     f"the operator ({name})")


@pytest.mark.e2e
def test_the_code_and_the_wire_agree(requests_sent: list[tuple[str, str]]) -> None:
    """What the derivation from the code finds is what the operator really sends. This
    operator runs standalone: what peering sends is tests/e2e/operator/test_two_replicas'."""
    used = {rule for method, path in requests_sent if (rule := rule_of(method, path))}
    assert used - KOPF_OPTIONAL == {rule for rule in rules_from_code()
                                    if rule[0] != PEERING_GROUP}


@pytest.mark.parametrize(("method", "path", "rule"), [
    ("GET", "/apis/modelpress.io/v1alpha1/namespaces/ml/compressionjobs?watch=true",
     ("modelpress.io", "compressionjobs", "watch")),
    ("GET", "/apis/modelpress.io/v1alpha1/compressionjobs", ("modelpress.io", "compressionjobs",
                                                             "list")),
    ("PATCH", "/apis/modelpress.io/v1alpha1/namespaces/ml/compressionjobs/a/status",
     ("modelpress.io", "compressionjobs/status", "patch")),
    ("POST", "/api/v1/namespaces/ml/events", ("", "events", "create")),
    ("GET", "/api/v1/namespaces", ("", "namespaces", "list")),
    ("GET", "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices/x",
     (KSERVE_GROUP, "inferenceservices", "get")),
    ("GET", "/apis/modelpress.io/v1alpha1", None),
    ("GET", "/api/v1", None),
])
def test_requests_map_to_rules(method: str, path: str, rule: Rule | None) -> None:
    assert rule_of(method, path) == rule
