"""`modelpress operator`: build the backend and controller, serve metrics, run kopf."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelpress.errors import InvalidInput
from modelpress.operator.backends.base import Backend, Verifier
from modelpress.operator.config import OperatorSettings
from modelpress.operator.controller import Controller
from modelpress.operator.intake import start_intake
from modelpress.operator.metrics import OperatorMetrics
from modelpress.operator.peering import PeeringGate, own_identity
from modelpress.operator.reconcile import Config
from modelpress.operator.ticker import kube_api
from modelpress.settings import get_settings
from modelpress.tenancy import (
    PROBE_NAMESPACE,
    expand,
    outside,
    reachable_by_tenants,
    template_error,
)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
LOCAL_IS_SINGLE_TENANT = (
    "the local backend runs every namespace's jobs inside the operator pod, with its "
    "credentials, and is for single-tenant installations: with --all-namespaces use --backend "
    "kfp, or set MODELPRESS_ALLOW_LOCAL_ALL_NAMESPACES=true")
# A replica's peering priority when none is set is its seniority: this minus the microsecond
# it started at. The replica that started first leads, so a newer one (a rolling update's, a
# restarted pod's) never preempts a healthy leader and takes over only when it goes; and two
# replicas practically never tie (kopf pauses both on a tie).
SENIORITY_BASE = 10**16


class PeeringSettings(BaseSettings):
    """kopf peering between operator replicas (docs/operator-replicas.md), from
    MODELPRESS_PEERING_* variables; without a name the operator runs standalone."""

    model_config = SettingsConfigDict(env_prefix="MODELPRESS_PEERING_", extra="ignore")

    name: str | None = Field(
        default=None, description="The KopfPeering (or, with --all-namespaces, the "
        "ClusterKopfPeering) the replicas share; it must exist.")
    priority: int | None = Field(
        default=None, ge=0,
        description="The replica with the highest priority acts, the others pause. Default: "
                    "its seniority, from the moment it started: the oldest replica leads.")
    lifetime_seconds: int = Field(
        default=60, ge=2, le=3600,
        description="How long a replica's peering record counts as alive after its last "
                    "refresh: how long the others wait before resuming when it stops.")


def peering_options(peering: PeeringSettings, started_ns: int | None = None) -> dict[str, Any]:
    """kopf.run's peering arguments: standalone without a peering name, else the peering,
    this replica's identity and its priority (its seniority, from `started_ns`, when none
    is set)."""
    if peering.name is None:
        return {"standalone": True}
    priority = peering.priority if peering.priority is not None \
        else SENIORITY_BASE - (started_ns or time.time_ns()) // 1000
    return {"standalone": False, "peering_name": peering.name, "priority": priority,
            "identity": own_identity()}


def ticker_gate(options: dict[str, Any], namespace: str | None) -> Callable[[], bool]:
    """What the ticker asks before each pass: always yes when standalone, else the peering
    rule kopf applies to its own handlers (operator/peering.py)."""
    if options["standalone"]:
        return lambda: True
    return PeeringGate(kube_api(), options["peering_name"], namespace, options["identity"],
                       options["priority"]).may_act


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
    if backend == "local" and all_namespaces and not get_settings().allow_local_all_namespaces:
        raise InvalidInput("--backend", LOCAL_IS_SINGLE_TENANT)
    settings = OperatorSettings()
    config = operator_config(settings, backend)
    watched = [] if all_namespaces else [namespace or current_namespace()]
    scope = None if all_namespaces else watched[0]
    peering = PeeringSettings()
    options = peering_options(peering)

    chosen_backend = make_backend(backend, settings)  # starts nothing until a run
    kopf.configure(debug=settings.log_debug,
                   log_format=kopf.LogFormat.JSON if settings.log_json else kopf.LogFormat.FULL)
    # Forked before anything here starts a thread (operator/intake.py).
    start_intake(config, scope, None if options["standalone"] else
                 lambda: ticker_gate(options, scope))
    os.nice(settings.control_niceness)  # the intake first (see OperatorSettings)
    prometheus_client.disable_created_metrics()  # no *_created series next to each counter
    metrics = OperatorMetrics()
    prometheus_client.start_http_server(metrics_port, addr=settings.metrics_address,
                                        registry=metrics.registry)
    controller = Controller(chosen_backend, config, metrics,
                            kserve_api=kube_api() if settings.kserve_enabled else None,
                            verifier=chosen_backend if isinstance(chosen_backend, Verifier)
                            else None,
                            registry_models=settings.registry_models)
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.peering.lifetime = peering.lifetime_seconds
    # uvloop: kopf's event handling is the operator's bottleneck when many jobs arrive at
    # once (benchmarks/load_operator.py); kopf's own CLI picks it the same way.
    gate = ticker_gate(options, scope)
    kopf.run(clusterwide=all_namespaces, namespaces=watched, settings=kopf_settings,
             liveness_endpoint=settings.liveness_endpoint,
             memo=kopf.Memo(controller=controller, may_act=gate),
             loop=uvloop.new_event_loop(), **options)


def operator_config(settings: OperatorSettings, backend: str = "local") -> Config:
    """The reconciler's config; InvalidInput naming the setting when a namespace prefix is
    unusable or the default output lies outside the prefixes."""
    for template in settings.namespace_prefixes:
        problem = template_error(template)
        if problem:
            raise InvalidInput("MODELPRESS_NAMESPACE_PREFIXES", problem)
    probe = settings.default_output.format(namespace=PROBE_NAMESPACE, name="a-job")
    problem = outside(probe, expand(settings.namespace_prefixes, PROBE_NAMESPACE))
    if problem:
        raise InvalidInput("MODELPRESS_DEFAULT_OUTPUT", problem)
    core = get_settings()
    problem = template_error(settings.verify_prefix) \
        or reachable_by_tenants(settings.verify_prefix, settings.namespace_prefixes)
    if backend == "kfp" and problem:
        raise InvalidInput("MODELPRESS_VERIFY_PREFIX", problem)
    return Config(settings.default_output, settings.kserve_enabled,
                  tuple(core.allowed_file_roots),
                  namespace_prefixes=tuple(settings.namespace_prefixes),
                  allowed_images=tuple(settings.allowed_images or [core.step_image]),
                  max_deadline_seconds=settings.max_deadline_seconds,
                  max_runs_per_namespace=settings.max_runs_per_namespace,
                  trust_model_code=core.trust_model_code,
                  job_secrets=backend == "kfp" and settings.kfp_namespace is not None,
                  verify_prefix=settings.verify_prefix if backend == "kfp" else None)


def make_backend(name: str, settings: OperatorSettings) -> Backend:
    trust_model_code = get_settings().trust_model_code
    if name == "local":
        from modelpress.operator.backends.local import LocalBackend

        return LocalBackend(settings.local_workdir, settings.max_runs_in_flight,
                            trust_model_code=trust_model_code,
                            worker_niceness=settings.worker_niceness)
    if name == "kfp":
        from modelpress.operator.backends.kfp import KfpBackend

        return KfpBackend(settings.kfp_host, experiment=settings.kfp_experiment,
                          namespace=settings.kfp_namespace,
                          pipeline_root=settings.kfp_pipeline_root,
                          max_runs=settings.max_runs_in_flight,
                          timeout_seconds=settings.kfp_timeout_seconds,
                          attempts=settings.kfp_attempts, token_path=settings.kfp_token_path,
                          trust_model_code=trust_model_code,
                          max_deadline_seconds=settings.max_deadline_seconds,
                          verify_namespace=settings.verify_namespace,
                          verify_secret_name=settings.verify_secret_name)
    raise InvalidInput("--backend", f"unknown backend {name!r}: choose local or kfp")


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
