"""The Helm chart: lints, renders, validates against Kubernetes' schemas, and deploys the
operator hardened and with least privilege."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_chart import (
    CHART,
    CUSTOM_SCHEMAS,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    VALUES,
    by_kind,
    render,
)
from deploy_promql import DASHBOARDS, RULES

from modelpress.operator.config import OperatorSettings
from modelpress.operator.main import PeeringSettings, operator_config
from modelpress.settings import Settings

WARNING = 2  # helm lint's severities: 1 info, 2 warning, 3 error


@pytest.fixture(scope="module", params=sorted(VALUES))
def values_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def manifests(values_name: str) -> list[dict[str, Any]]:
    return render(VALUES[values_name])


def operator_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    [deployment] = by_kind(manifests, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container["env"]}


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_chart_lints_clean(values_name: str, kube_version: str) -> None:
    report = helm.lint(CHART, VALUES[values_name], strict=True, namespace=NAMESPACE,
                       kube_version=f"v{kube_version}")
    problems = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert report["total_charts_linted"] == 1
    assert not report["errors"] and not problems, report


def test_renders_what_each_values_file_enables(values_name: str,
                                               manifests: list[dict[str, Any]]) -> None:
    kinds = sorted(document["kind"] for document in manifests)
    expected = {
        "default": ["CustomResourceDefinition", "CustomResourceDefinition",
                    "CustomResourceDefinition", "Deployment", "KopfPeering", "Role",
                    "RoleBinding", "Service", "ServiceAccount", "ValidatingAdmissionPolicy",
                    "ValidatingAdmissionPolicyBinding"],
        "kfp-gpu": ["ClusterKopfPeering", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
                    "ConfigMap", "ConfigMap", "CustomResourceDefinition",
                    "CustomResourceDefinition", "CustomResourceDefinition", "Deployment",
                    "PrometheusRule", "Service", "ServiceAccount", "ServiceMonitor",
                    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"],
    }
    assert kinds == expected[values_name]


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_strict_validation(manifests: list[dict[str, Any]],
                                                 kube_version: str) -> None:
    """Built-in kinds (and the CRD itself) against Kubernetes' own schemas, strictly; the
    Prometheus Operator's kinds against the schemas in deploy_chart."""
    for document in manifests:
        if document["kind"] in CUSTOM_SCHEMAS:
            jsonschema.validate(document, CUSTOM_SCHEMAS[document["kind"]])
            continue
        try:
            kubernetes_validate.validate(document, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{document['kind']} {document['metadata']['name']} on "
                        f"{kube_version}: {error.message} at {list(error.absolute_path)}")


def test_rendered_prometheus_rule_is_the_rule_file(tmp_path: Path) -> None:
    [rule] = by_kind(render(VALUES["kfp-gpu"]), "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))
    rendered = tmp_path / "rendered.rules.yaml"
    rendered.write_text(yaml.safe_dump(rule["spec"]), encoding="utf-8")
    checked = subprocess.run(["promtool", "check", "rules", str(rendered)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_configmaps_carry_the_generated_dashboards() -> None:
    configmaps = by_kind(render(VALUES["kfp-gpu"]), "ConfigMap")
    shipped = {key: json.loads(text) for configmap in configmaps
               for key, text in configmap["data"].items()}
    assert shipped == {f"modelpress-{path.stem}.json": json.loads(path.read_text())
                       for path in DASHBOARDS.glob("*.json")}
    assert all(configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
               for configmap in configmaps)


def test_deployment_probes_the_operator_endpoints(manifests: list[dict[str, Any]]) -> None:
    container = operator_container(manifests)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    liveness = urlparse(env_of(container)["MODELPRESS_LIVENESS_ENDPOINT"]["value"])
    assert f"--metrics-port={ports['metrics']}" in container["args"]
    assert (liveness.port, liveness.path) == (ports["healthz"], "/healthz")
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}


def test_deployment_is_hardened(manifests: list[dict[str, Any]]) -> None:
    [deployment] = by_kind(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(manifests)
    security = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    writable = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/tmp" in writable and env_of(container)["HOME"]["value"] == "/tmp"
    # Two replicas peering through kopf (tests/deploy/test_chart_replicas.py).
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def test_the_local_backend_runs_in_the_step_image(manifests: list[dict[str, Any]],
                                                  values_name: str) -> None:
    container = operator_container(manifests)
    backend = VALUES[values_name].get("backend", "local")
    image = "ghcr.io/modelpress/step:0.1.0" if backend == "local" \
        else "ghcr.io/modelpress/operator:0.1.0"
    assert container["image"] == image
    assert f"--backend={backend}" in container["args"]


def test_every_setting_the_chart_sets_exists(manifests: list[dict[str, Any]]) -> None:
    """A MODELPRESS_* variable the settings do not define would be silently ignored."""
    known = {f"MODELPRESS_{name.upper()}"
             for model in (OperatorSettings, Settings) for name in model.model_fields}
    known |= {f"MODELPRESS_PEERING_{name.upper()}" for name in PeeringSettings.model_fields}
    names = set(env_of(operator_container(manifests)))
    assert {name for name in names if name.startswith("MODELPRESS_")} <= known


def test_jobs_are_confined_to_the_allowed_file_roots(manifests: list[dict[str, Any]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """By default no file:// uri reaches the run folders or the operator's own files."""
    value = env_of(operator_container(manifests))["MODELPRESS_ALLOWED_FILE_ROOTS"]["value"]
    monkeypatch.setenv("MODELPRESS_ALLOWED_FILE_ROOTS", value)
    assert Settings().allowed_file_roots == [Path("/var/lib/modelpress/files")]
    widened = render({"files": {"allowedRoots": ["/models", "/data"]}})
    env = env_of(operator_container(widened))
    assert json.loads(env["MODELPRESS_ALLOWED_FILE_ROOTS"]["value"]) == ["/models", "/data"]


def _settings_from(manifests: list[dict[str, Any]],
                   monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    """The operator's settings as the rendered Deployment's environment gives them."""
    for name, variable in env_of(operator_container(manifests)).items():
        if name.startswith("MODELPRESS_") and "value" in variable:
            monkeypatch.setenv(name, variable["value"])
    return OperatorSettings()


def test_tenancy_settings_reach_the_operator(manifests: list[dict[str, Any]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Every namespace is confined to its own prefix, and the default output lies under
    it (else the operator would refuse to start, operator_config)."""
    settings = _settings_from(manifests, monkeypatch)
    assert settings.namespace_prefixes == ["s3://modelpress/{namespace}/"]
    assert operator_config(settings).namespace_prefixes == ("s3://modelpress/{namespace}/",)
    assert settings.max_runs_per_namespace >= 1
    assert settings.max_deadline_seconds <= 6 * 3600


def test_only_the_step_image_is_allowed_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = render({"image": {"step": {"tag": "9.9.9"}}})
    assert "MODELPRESS_ALLOWED_IMAGES" not in env_of(operator_container(manifests))
    assert operator_config(_settings_from(manifests, monkeypatch)).allowed_images == (
        "ghcr.io/modelpress/step:9.9.9",)


def test_tenancy_values_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = render({
        "tenancy": {"prefixes": ["s3://models/{namespace}/", "file:///files/{namespace}/"],
                    "allowedImages": ["registry.example/step:1"]},
        "operator": {"defaultOutput": "s3://models/{namespace}/{name}/",
                     "maxRunsPerNamespace": 3, "maxDeadlineSeconds": 600}})
    config = operator_config(_settings_from(manifests, monkeypatch))
    assert config.namespace_prefixes == ("s3://models/{namespace}/", "file:///files/{namespace}/")
    assert config.allowed_images == ("registry.example/step:1",)
    assert (config.max_runs_per_namespace, config.max_deadline_seconds) == (3, 600)


def test_the_gpu_values_allow_the_cuda_step_image(monkeypatch: pytest.MonkeyPatch) -> None:
    config = operator_config(_settings_from(render(VALUES["kfp-gpu"]), monkeypatch))
    assert "ghcr.io/modelpress/step:0.1.0-cuda" in config.allowed_images


def test_multi_user_kfp_gets_a_projected_token_by_path() -> None:
    manifests = render({"backend": "kfp", "kfp": {"serviceAccountToken": {"enabled": True}}})
    container = operator_container(manifests)
    path = env_of(container)["MODELPRESS_KFP_TOKEN_PATH"]["value"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "kfp-token"]
    assert Path(path).parent == Path(mount["mountPath"]) and mount["readOnly"] is True
    [deployment] = by_kind(manifests, "Deployment")
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"]
                if v["name"] == "kfp-token"]
    [source] = volume["projected"]["sources"]
    assert source["serviceAccountToken"]["path"] == Path(path).name
    assert source["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    plain = env_of(operator_container(render({"backend": "kfp"})))
    assert "MODELPRESS_KFP_TOKEN_PATH" not in plain  # single-user KFP: no token


def test_steps_read_the_storage_secret_the_values_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """backend: kfp names the namespace Secret steps read (default modelpress-storage);
    the platform's Secret is the operator's alone and is never the steps'."""
    default = env_of(operator_container(render({"backend": "kfp"})))
    assert default["MODELPRESS_STORAGE_SECRET_NAME"]["value"] == "modelpress-storage"
    manifests = render({"backend": "kfp", "storage": {"secretName": "team-s3"},
                        "s3": {"credentials": {"existingSecret": "platform-s3"}}})
    env = env_of(operator_container(manifests))
    monkeypatch.setenv("MODELPRESS_STORAGE_SECRET_NAME",
                       env["MODELPRESS_STORAGE_SECRET_NAME"]["value"])
    assert Settings().storage_secret_name == "team-s3"
    assert not any(variable.get("value") == "platform-s3" for variable in env.values())


def test_credentials_come_only_from_an_existing_secret() -> None:
    manifests = render({"s3": {"credentials": {"existingSecret": "minio-creds"}}})
    assert not by_kind(manifests, "Secret")
    env = env_of(operator_container(manifests))
    for name, key in (("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
                      ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {
            "name": "minio-creds", "key": key}}}


def test_no_credential_is_a_literal_value(manifests: list[dict[str, Any]]) -> None:
    assert not by_kind(manifests, "Secret")
    for name, variable in env_of(operator_container(manifests)).items():
        if name.endswith("_PATH"):  # where a mounted credential lies, not the credential
            assert variable["value"].startswith("/var/run/secrets/"), name
        elif name.endswith("_SECRET_NAME"):  # which Secret steps read, not what it holds
            assert variable["value"] in ("modelpress-storage", "modelpress-platform-storage"), \
                name
        elif any(word in name for word in ("KEY", "SECRET", "PASSWORD", "TOKEN")):
            assert "value" not in variable, name


def _rules(manifests: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    [role] = [d for d in manifests if d["kind"] in ("Role", "ClusterRole")]
    return {(group, resource, verb) for rule in role["rules"]
            for group in rule["apiGroups"] for resource in rule["resources"]
            for verb in rule["verbs"]}


OPERATOR_RULES = {
    *(("modelpress.io", "compressionjobs", verb) for verb in ("get", "list", "watch", "patch")),
    ("modelpress.io", "compressionjobs/status", "patch"),
    ("", "events", "create"),
    # kopf peering between the replicas: the KopfPeering of the watched namespace
    *(("kopf.dev", "kopfpeerings", verb) for verb in ("get", "list", "watch", "patch")),
}
# ... or, watching every namespace, the ClusterKopfPeering.
CLUSTER_RULES = {rule for rule in OPERATOR_RULES if rule[0] != "kopf.dev"} | {
    ("kopf.dev", "clusterkopfpeerings", verb) for verb in ("get", "list", "watch", "patch")}
KSERVE_RULES = {("serving.kserve.io", "inferenceservices", "get"),
                ("serving.kserve.io", "inferenceservices", "patch")}


@pytest.mark.parametrize(("values", "kind", "rules"), [
    ({}, "Role", OPERATOR_RULES),
    ({"promotion": {"kserve": {"enabled": True}}}, "Role", OPERATOR_RULES | KSERVE_RULES),
    ({"backend": "kfp", "watch": {"allNamespaces": True}}, "ClusterRole", CLUSTER_RULES),
    (VALUES["kfp-gpu"], "ClusterRole", CLUSTER_RULES | KSERVE_RULES),
], ids=["namespaced", "namespaced-kserve", "cluster-wide", "kfp-gpu"])
def test_rbac_grants_exactly_what_the_operator_uses(values: dict[str, Any], kind: str,
                                                    rules: set[tuple[str, str, str]]) -> None:
    manifests = render(values)
    [binding] = by_kind(manifests, f"{kind}Binding")
    [account] = by_kind(manifests, "ServiceAccount")
    assert _rules(manifests) == rules
    assert binding["roleRef"]["kind"] == kind
    assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": NAMESPACE,
                                    "name": account["metadata"]["name"]}]


def test_namespaced_mode_is_bound_to_the_watched_namespace() -> None:
    manifests = render({"watch": {"namespace": "ml-team"}})
    [role] = by_kind(manifests, "Role")
    [binding] = by_kind(manifests, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "ml-team"
    assert "--namespace=ml-team" in operator_container(manifests)["args"]


def test_an_unknown_backend_fails_to_render() -> None:
    with pytest.raises(helm.HelmRenderError, match="backend must be local or kfp"):
        render({"backend": "kpf"})
