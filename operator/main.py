"""`modelpress operator`: build the backend and controller, serve metrics, run kopf."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modelpress.errors import InvalidInput
from modelpress.operator.backends.base import Backend
from modelpress.operator.config import OperatorSettings
from modelpress.operator.controller import Controller
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.reconcile import Config
from modelpress.settings import get_settings

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def run_operator(backend: str, namespace: str | None, all_namespaces: bool,
                 metrics_port: int) -> None:
    """Run until stopped, watching `namespace`, every namespace, or (neither given) the
    namespace of the service account or kubeconfig context. InvalidInput for bad options."""
    import kopf
    import prometheus_client
    import uvloop

    import modelpress.operator.handlers  # noqa: F401 - registers the handlers with kopf

    if namespace and all_namespaces:
        raise InvalidInput("--namespace/--all-namespaces", "give one or the other, not both")
    settings = OperatorSettings()
    chosen_backend = make_backend(backend, settings)
    kopf.configure(debug=settings.log_debug,
                   log_format=kopf.LogFormat.JSON if settings.log_json else kopf.LogFormat.FULL)
    prometheus_client.disable_created_metrics()  # no *_created series next to each counter
    metrics = OperatorMetrics()
    prometheus_client.start_http_server(metrics_port, addr=settings.metrics_address,
                                        registry=metrics.registry)
    config = Config(settings.default_output, settings.kserve_enabled,
                    tuple(get_settings().allowed_file_roots))
    controller = Controller(chosen_backend, config, metrics,
                            kserve_api=kserve_api() if settings.kserve_enabled else None)
    watched = [] if all_namespaces else [namespace or current_namespace()]
    # uvloop: kopf's event handling is the operator's bottleneck when many jobs arrive at
    # once (benchmarks/load_operator.py); kopf's own CLI picks it the same way.
    kopf.run(clusterwide=all_namespaces, namespaces=watched, standalone=True,
             liveness_endpoint=settings.liveness_endpoint, memo=kopf.Memo(controller=controller),
             loop=uvloop.new_event_loop())


def make_backend(name: str, settings: OperatorSettings) -> Backend:
    if name == "local":
        from modelpress.operator.backends.local import LocalBackend

        return LocalBackend(settings.local_workdir, settings.max_runs_in_flight)
    if name == "kfp":
        from modelpress.operator.backends.kfp import KfpBackend

        return KfpBackend(settings.kfp_host, experiment=settings.kfp_experiment,
                          namespace=settings.kfp_namespace,
                          pipeline_root=settings.kfp_pipeline_root,
                          max_runs=settings.max_runs_in_flight,
                          timeout_seconds=settings.kfp_timeout_seconds,
                          attempts=settings.kfp_attempts, token_path=settings.kfp_token_path)
    raise InvalidInput("--backend", f"unknown backend {name!r}: choose local or kfp")


def kserve_api() -> Any:
    """A CustomObjectsApi with the in-cluster config, else the kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def current_namespace() -> str:
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    from kubernetes import config

    # The kubernetes client reads $KUBECONFIG once, when imported; read it now instead.
    location = os.path.expanduser(os.environ.get("KUBECONFIG", "~/.kube/config"))
    try:
        _, active = config.list_kube_config_contexts(config_file=location)
    except (config.ConfigException, FileNotFoundError):
        return "default"
    return str(active.get("context", {}).get("namespace") or "default")
