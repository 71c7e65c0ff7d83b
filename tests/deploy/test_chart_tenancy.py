"""The chart's tenancy options: the local backend kept to single-tenant installations,
KServe permissions bound per namespace, and default-deny egress for step pods."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
from deploy_chart import KUBERNETES_VERSIONS, NAMESPACE, by_kind, render
from test_chart import CLUSTER_RULES, KSERVE_RULES, OPERATOR_RULES, env_of, operator_container

from modelpress.settings import Settings

EVERY_NAMESPACE_LOCALLY = {"backend": "local", "watch": {"allNamespaces": True}}
MINIO_PODS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}},
              "podSelector": {"matchLabels": {"app": "minio"}}}
STEP_EGRESS = {"enabled": True, "namespaces": ["team-a", "team-b"],
               "s3": {"peers": [MINIO_PODS]},
               "kfpApi": {"cidrs": ["10.96.0.0/12"]}}


def _validate(documents: list[dict[str, Any]]) -> None:
    for document in documents:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_the_local_backend_is_refused_for_every_namespace() -> None:
    with pytest.raises(helm.HelmRenderError, match="single-tenant installations"):
        render(EVERY_NAMESPACE_LOCALLY)


def test_an_explicit_value_lets_the_local_backend_watch_every_namespace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = render({**EVERY_NAMESPACE_LOCALLY,
                        "operator": {"allowLocalBackendForAllNamespaces": True}})
    container = operator_container(manifests)
    assert {"--backend=local", "--all-namespaces"} <= set(container["args"])
    variable = env_of(container)["MODELPRESS_ALLOW_LOCAL_ALL_NAMESPACES"]
    monkeypatch.setenv(variable["name"], variable["value"])
    assert Settings().allow_local_all_namespaces is True  # else the operator refuses to start


@pytest.mark.parametrize("values", [{}, {"backend": "kfp", "watch": {"allNamespaces": True}}],
                         ids=["local-one-namespace", "kfp-every-namespace"])
def test_other_installations_need_no_override(values: dict[str, Any]) -> None:
    env = env_of(operator_container(render(values)))
    assert "MODELPRESS_ALLOW_LOCAL_ALL_NAMESPACES" not in env


def test_kserve_permissions_can_be_bound_per_namespace() -> None:
    manifests = render({"backend": "kfp", "watch": {"allNamespaces": True},
                        "promotion": {"kserve": {"enabled": True,
                                                 "namespaces": ["team-a", "team-b"]}}})
    [cluster_role] = by_kind(manifests, "ClusterRole")
    assert _granted(cluster_role) == CLUSTER_RULES  # no KServe access cluster-wide
    roles = by_kind(manifests, "Role")
    bindings = by_kind(manifests, "RoleBinding")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["team-a", "team-b"]
    [account] = by_kind(manifests, "ServiceAccount")
    for role, binding in zip(roles, bindings, strict=True):
        assert _granted(role) == KSERVE_RULES
        assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": NAMESPACE,
                                        "name": account["metadata"]["name"]}]
    _validate(roles + bindings)


def test_kserve_namespaces_grant_nothing_while_kserve_is_off() -> None:
    manifests = render({"promotion": {"kserve": {"enabled": False, "namespaces": ["team-a"]}}})
    [role] = by_kind(manifests, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE and _granted(role) == OPERATOR_RULES


def test_step_egress_is_off_by_default() -> None:
    assert not by_kind(render({}), "NetworkPolicy")


def test_step_egress_denies_all_but_dns_and_the_listed_destinations() -> None:
    policies = by_kind(render({"networkPolicy": {"stepEgress": STEP_EGRESS}}), "NetworkPolicy")
    assert sorted(policy["metadata"]["namespace"] for policy in policies) == ["team-a", "team-b"]
    _validate(policies)
    spec = policies[0]["spec"]
    assert spec["policyTypes"] == ["Egress"]
    assert spec["podSelector"] == {"matchLabels": {"modelpress.io/step": "true"}}
    dns, store, kfp = spec["egress"]  # the Kubernetes API has no destination: denied
    assert dns == {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    assert store == {"to": [MINIO_PODS], "ports": [{"protocol": "TCP", "port": 9000}]}
    assert kfp["to"] == [{"ipBlock": {"cidr": "10.96.0.0/12"}}]
    assert {port["port"] for port in kfp["ports"]} == {8887, 8888, 8080}


def test_step_egress_defaults_to_the_kfp_namespace() -> None:
    egress = {"enabled": True, "s3": {"cidrs": ["192.0.2.10/32"]}}
    [policy] = by_kind(render({"backend": "kfp", "kfp": {"namespace": "team-a"},
                               "networkPolicy": {"stepEgress": egress}}), "NetworkPolicy")
    assert policy["metadata"]["namespace"] == "team-a"


def test_step_egress_without_the_store_fails_to_render() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"networkPolicy.stepEgress.s3 needs"):
        render({"networkPolicy": {"stepEgress": {"enabled": True}}})
