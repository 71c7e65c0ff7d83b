"""The chart's registry settings reach the operator as the variables it and MLflow's client
read (docs/registry.md): the tracking server, the registered models each namespace may
name, bounded retries, and credentials only by reference to a Secret."""

from __future__ import annotations

import json
from typing import Any

from deploy_chart import by_kind, render

from modelpress.operator.config import OperatorSettings


def _env(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [deployment] = by_kind(render(values), "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {variable["name"]: variable for variable in container["env"]}


def test_by_default_no_server_is_named_and_retries_are_bounded() -> None:
    env = _env({})
    assert "MLFLOW_TRACKING_URI" not in env
    assert not any(name.startswith("MLFLOW_TRACKING_") for name in env)
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]["value"] == "2"
    models = json.loads(env["MODELPRESS_REGISTRY_MODELS"]["value"])
    assert models == OperatorSettings().registry_models  # the chart's default is the operator's


def test_the_server_models_and_credentials_come_from_values_and_a_secret() -> None:
    env = _env({"promotion": {"registry": {
        "trackingUri": "http://mlflow.mlflow:5000", "existingSecret": "mlflow-login",
        "models": ["{namespace}-*", "shared.{namespace}.*"]}}})
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlflow:5000"
    assert json.loads(env["MODELPRESS_REGISTRY_MODELS"]["value"]) == [
        "{namespace}-*", "shared.{namespace}.*"]
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"] == {
            "name": "mlflow-login", "key": name, "optional": True}
        assert "value" not in env[name]
