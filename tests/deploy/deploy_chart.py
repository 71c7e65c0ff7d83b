"""The Helm chart rendered offline with Helm's Go SDK (helm-python-sdk), and the schemas of
the two Prometheus Operator kinds that kubernetes-validate does not know."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modelpress"
RELEASE = "modelpress"
NAMESPACE = "mp-system"
VALUES: dict[str, dict[str, Any]] = {
    "default": {},
    "kfp-gpu": yaml.safe_load((CHART / "values-kfp-gpu.yaml").read_text(encoding="utf-8")),
}
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every manifest `helm install` would apply: the CRDs, then the templates."""
    with helm.Chart.load(CHART) as chart:
        crds = [yaml.safe_load(crd["data"]) for crd in chart.crds]
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    documents = [document for path, text in sorted(rendered.items())
                 if path.endswith(".yaml") for document in yaml.safe_load_all(text)]
    return crds + [document for document in documents if document]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [document for document in documents if document["kind"] == kind]


_METADATA = {
    "type": "object", "required": ["name", "namespace"],
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                   "namespace": {"type": "string"},
                   "labels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


# The fields the chart uses, as monitoring.coreos.com/v1 defines them; anything else fails.
SERVICE_MONITOR_SCHEMA = _object({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "ServiceMonitor"},
    "metadata": _METADATA,
    "spec": _object({
        "jobLabel": {"type": "string"},
        "namespaceSelector": _object({"matchNames": {"type": "array",
                                                     "items": {"type": "string"}}}, []),
        "selector": _object({"matchLabels": _STRINGS}, ["matchLabels"]),
        "endpoints": {"type": "array", "minItems": 1, "items": _object({
            "port": {"type": "string"}, "path": {"type": "string"},
            "interval": _DURATION, "scrapeTimeout": _DURATION}, ["port"])},
    }, ["selector", "endpoints"]),
}, ["apiVersion", "kind", "metadata", "spec"])

PROMETHEUS_RULE_SCHEMA = _object({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "PrometheusRule"},
    "metadata": _METADATA,
    "spec": _object({"groups": {"type": "array", "minItems": 1, "items": _object({
        "name": {"type": "string"}, "interval": _DURATION,
        "rules": {"type": "array", "minItems": 1, "items": _object({
            "alert": {"type": "string"}, "record": {"type": "string"},
            "expr": {"type": "string"}, "for": _DURATION,
            "labels": _STRINGS, "annotations": _STRINGS}, ["expr"])},
    }, ["name", "rules"])}}, ["groups"]),
}, ["apiVersion", "kind", "metadata", "spec"])

# kopf's peering object (kopf.dev/v1): a name, and a namespace unless cluster-wide.
PEERING_SCHEMA = _object({
    "apiVersion": {"const": "kopf.dev/v1"},
    "kind": {"enum": ["KopfPeering", "ClusterKopfPeering"]},
    "metadata": {**_METADATA, "required": ["name"]},
}, ["apiVersion", "kind", "metadata"])

CUSTOM_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA,
                  "PrometheusRule": PROMETHEUS_RULE_SCHEMA,
                  "KopfPeering": PEERING_SCHEMA, "ClusterKopfPeering": PEERING_SCHEMA}
