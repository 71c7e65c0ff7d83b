"""Two operator replicas peering through kopf: the chart renders them, each with its own
priority, the peering object they share, and the RBAC kopf's peering needs; all of it valid
against Kubernetes' schemas (the peering object against its CRD's)."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from deploy_chart import KUBERNETES_VERSIONS, NAMESPACE, by_kind, render

from modelpress.operator.main import PeeringSettings, peering_options

NAMESPACED: dict[str, Any] = {}
CLUSTER_WIDE = {"backend": "kfp", "watch": {"allNamespaces": True}}


def _container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = by_kind(manifests, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in _container(manifests)["env"]}


def test_two_replicas_roll_over_without_a_gap() -> None:
    [deployment] = by_kind(render(NAMESPACED), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def test_each_replica_gets_its_own_identity_and_priority(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod template sets the peering but no priority: each replica takes its seniority
    when it starts (the older leads), and kopf names its record after the pod."""
    env = _env(render(NAMESPACED))
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "MODELPRESS_PEERING_PRIORITY" not in env
    for name in ("MODELPRESS_PEERING_NAME", "MODELPRESS_PEERING_LIFETIME_SECONDS"):
        monkeypatch.setenv(name, env[name]["value"])
    settings = PeeringSettings()
    assert (settings.name, settings.lifetime_seconds) == ("modelpress", 60)
    first = peering_options(settings, started_ns=1_800_000_000_000_000_000)
    second = peering_options(settings, started_ns=1_800_000_000_000_001_000)  # 1 µs later
    assert first["standalone"] is False and first["peering_name"] == "modelpress"
    assert first["priority"] > second["priority"] > 0


def test_a_set_priority_wins_and_no_peering_means_standalone() -> None:
    assert peering_options(PeeringSettings(name="p", priority=7))["priority"] == 7
    assert peering_options(PeeringSettings()) == {"standalone": True}


@pytest.mark.parametrize(("values", "kind", "namespace", "resource", "role"), [
    (NAMESPACED, "KopfPeering", NAMESPACE, "kopfpeerings", "Role"),
    ({"watch": {"namespace": "ml-team"}}, "KopfPeering", "ml-team", "kopfpeerings", "Role"),
    (CLUSTER_WIDE, "ClusterKopfPeering", None, "clusterkopfpeerings", "ClusterRole"),
], ids=["namespaced", "other-namespace", "cluster-wide"])
def test_the_peering_object_and_its_rbac(values: dict[str, Any], kind: str,
                                         namespace: str | None, resource: str,
                                         role: str) -> None:
    """kopf looks for the peering object in the watched namespace (or cluster-wide), named
    as the replicas are told; kopf lists, watches and patches it, the ticker gets it."""
    manifests = render(values)
    [peering] = by_kind(manifests, kind)
    assert peering["metadata"]["name"] == _env(manifests)["MODELPRESS_PEERING_NAME"]["value"]
    assert peering["metadata"].get("namespace") == namespace
    [rules] = [document["rules"] for document in by_kind(manifests, role)]
    [granted] = [rule for rule in rules if rule["apiGroups"] == ["kopf.dev"]]
    assert granted == {"apiGroups": ["kopf.dev"], "resources": [resource],
                       "verbs": ["get", "list", "watch", "patch"]}
    if role == "Role":
        [bound] = by_kind(manifests, "Role")
        assert bound["metadata"]["namespace"] == namespace


def _crd_of(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [crd] = [document for document in by_kind(manifests, "CustomResourceDefinition")
             if document["spec"]["names"]["kind"] == kind]
    return crd


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", [NAMESPACED, CLUSTER_WIDE], ids=["namespaced", "cluster"])
def test_the_peering_manifests_pass_strict_validation(values: dict[str, Any],
                                                      kube_version: str) -> None:
    """The peering CRDs, the Deployment and the roles against Kubernetes' schemas; the
    peering object (a kind Kubernetes does not know) against its CRD's schema."""
    manifests = render(values)
    for document in manifests:
        if document["apiVersion"] == "kopf.dev/v1":
            crd = _crd_of(manifests, document["kind"])
            namespaced = "namespace" in document["metadata"]
            assert crd["spec"]["scope"] == ("Namespaced" if namespaced else "Cluster")
            [version] = crd["spec"]["versions"]
            jsonschema.validate(document, version["schema"]["openAPIV3Schema"])
        elif document["kind"] in ("CustomResourceDefinition", "Deployment", "Role",
                                  "ClusterRole", "RoleBinding", "ClusterRoleBinding"):
            kubernetes_validate.validate(document, kube_version, strict=True)
    assert {crd["metadata"]["name"] for crd in by_kind(manifests, "CustomResourceDefinition")} \
        >= {"kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
