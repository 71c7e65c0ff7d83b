"""Generate the CompressionJob CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema with `$ref`s, `anyOf` for optionals and `title`s; Kubernetes
wants a structural schema: every node typed, no refs, no anyOf at the type level.
"""

from __future__ import annotations

from typing import Any

from modelpress.api import API_GROUP, API_VERSION, KIND, CompressionSpec, CompressionStatus

PLURAL = "compressionjobs"
SHORT_NAMES = ["cjob"]

# propertyNames has no place in Kubernetes' JSONSchemaProps; pydantic still checks map keys.
_DROPPED_KEYS = {"title", "$defs", "discriminator", "propertyNames"}
_PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Ratio", "type": "number", "jsonPath": ".status.results.compressionRatio"},
    {"name": "Speedup", "type": "number", "jsonPath": ".status.results.speedup.cpu"},
    {"name": "Drop", "type": "number", "jsonPath": ".status.results.accuracyDrop"},
    {"name": "Promotion", "type": "string", "jsonPath": ".status.promotion.decision"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline `$ref`s, collapse nullable `anyOf`s and drop keys Kubernetes rejects."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "anyOf" in node:
        return _resolve(_collapse_any_of(node), defs)
    out = {key: _resolve(value, defs) for key, value in node.items() if key not in _DROPPED_KEYS}
    if out.get("default", ...) is None:
        del out["default"]
    if "const" in out:
        out["enum"] = [out.pop("const")]
    return _boolean_exclusive_bounds(out)


def _boolean_exclusive_bounds(node: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema 2020 `exclusiveMaximum: 1.0` is Kubernetes' `maximum: 1.0` + `true`."""
    for bound, exclusive in (("maximum", "exclusiveMaximum"), ("minimum", "exclusiveMinimum")):
        value = node.get(exclusive)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[bound], node[exclusive] = value, True
    return node


def _collapse_any_of(node: dict[str, Any]) -> dict[str, Any]:
    options = [option for option in node["anyOf"] if option.get("type") != "null"]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if len(options) == 1:
        return {**options[0], **rest}
    # A union of scalar types (search values): structural schemas allow no type unions.
    return {**rest, "x-kubernetes-preserve-unknown-fields": True}


def _structural(model: type) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")  # type: ignore[attr-defined]
    return _add_object_types(_resolve(schema, schema.get("$defs", {})))


def _add_object_types(node: Any) -> Any:
    if isinstance(node, list):
        return [_add_object_types(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _add_object_types(value) for key, value in node.items()}
    if ("properties" in out or "additionalProperties" in out) and "type" not in out:
        out["type"] = "object"
    if out.get("additionalProperties") is False:
        del out["additionalProperties"]  # structural schemas prune unknown fields anyway
    return out


def _spec_schema() -> dict[str, Any]:
    spec = _structural(CompressionSpec)
    # Only the promotion may change once submitted; the compression itself is immutable.
    for name, prop in spec["properties"].items():
        if name != "promotion":
            prop["x-kubernetes-validations"] = [
                {"rule": "self == oldSelf", "message": f"spec.{name} is immutable"}
            ]
    return spec


def build_crd() -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition for CompressionJob."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": SHORT_NAMES,
                "categories": ["modelpress"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _spec_schema(),
                                "status": _structural(CompressionStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    """The CRD as YAML, exactly as committed under charts/modelpress/crds/."""
    import yaml

    header = "# Generated by `modelpress crd` from modelpress/api.py. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)
