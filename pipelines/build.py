"""Wire the steps of a job into a KFP pipeline: fetch, the spec's steps in order, validate,
one benchmark task per pool (on that pool's nodes), report."""


import re
from collections.abc import Callable
from typing import Any

from modelpress.api import CompressionJob, Pool

PIPELINE_PREFIX = "modelpress-"


def _place_on_pool(task: Any, pool: Pool) -> None:
    """Node selector, tolerations and accelerator request of a benchmark pool."""
    from kfp import kubernetes

    for key, value in pool.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in pool.tolerations:
        kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator or "Equal",
                                  value=toleration.value, effect=toleration.effect)
    if pool.accelerator is not None:
        task.set_accelerator_type(pool.accelerator.type)
        task.set_accelerator_limit(pool.accelerator.count)


def _with_store_access(task: Any) -> Any:
    """Give a step the artifact store's endpoint and, on a cluster, its credentials Secret."""
    from kfp import kubernetes

    from modelpress.settings import get_settings

    settings = get_settings()
    if settings.s3_endpoint:
        task.set_env_variable("MODELPRESS_S3_ENDPOINT", settings.s3_endpoint)
    if settings.s3_secret:
        kubernetes.use_secret_as_env(task, secret_name=settings.s3_secret, secret_key_to_env={
            "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"})
    return task


def _accessing_store(op: Any) -> Callable[..., Any]:
    def make_task(**arguments: Any) -> Any:
        return _with_store_access(op(**arguments))

    return make_task


def pipeline_name(job: CompressionJob) -> str:
    return PIPELINE_PREFIX + re.sub(r"[^a-z0-9-]", "-", job.metadata.name)


def _compress_and_measure(ops: dict[str, Any], job: CompressionJob, job_spec: Any,
                          candidate: Any, fetched: Any) -> tuple[Any, Any]:
    """The spec's steps, validate, and a benchmark per pool; returns (compressed, ledger)."""
    original, data = fetched.outputs["original"], fetched.outputs["data"]
    model, ledger = original, fetched.outputs["ledger"]
    for index, step in enumerate(job.spec.steps):
        task = ops["compress_op"](job=job_spec, index=index, candidate=candidate,
                                  original=original, data=data, model_in=model, ledger_in=ledger)
        task.set_display_name(f"{index}-{step.kind}")
        model, ledger = task.outputs["model_out"], task.outputs["ledger"]
    validated = ops["validate_op"](job=job_spec, original=original, data=data, model_in=model,
                                   ledger_in=ledger).set_display_name("validate")
    compressed, ledger = validated.outputs["compressed"], validated.outputs["ledger"]
    for pool in job.spec.benchmark.pools:
        measured = ops["benchmark_op"](job=job_spec, pool=pool.name, original=original,
                                       data=data, compressed=compressed, ledger_in=ledger)
        measured.set_display_name(f"benchmark-{pool.name}")
        _place_on_pool(measured, pool)
        ledger = measured.outputs["ledger"]
    return compressed, ledger


def build_pipeline(job: CompressionJob, output: str) -> Callable[..., Any]:
    """A KFP pipeline function for `job` that publishes its results to `output`.

    With `spec.search`, each candidate value runs the whole chain inside a ParallelFor and
    a select task picks the winner from the collected figures.
    """
    from kfp import dsl

    from modelpress.components.ops import make_ops
    from modelpress.settings import get_settings

    raw_ops = make_ops(job.spec.image or get_settings().step_image)
    ops = {name: _accessing_store(op) for name, op in raw_ops.items()}
    spec_json = job.spec.model_dump_json(by_alias=True, exclude_none=True)
    search = job.spec.search

    @dsl.pipeline(name=pipeline_name(job), description=f"modelpress job {job.metadata.name}")
    def compression_pipeline(job_spec: str = spec_json, output_uri: str = output) -> None:
        fetched = ops["fetch_op"](job=job_spec).set_display_name("fetch")
        if search is None:
            compressed, ledger = _compress_and_measure(ops, job, job_spec, -1, fetched)
        else:
            with dsl.ParallelFor(items=list(range(len(search.values))), parallelism=2) as index:
                compressed, ledger = _compress_and_measure(ops, job, job_spec, index, fetched)
            chosen = ops["select_op"](job=job_spec, original=fetched.outputs["original"],
                                      data=fetched.outputs["data"],
                                      models=dsl.Collected(compressed),
                                      ledgers=dsl.Collected(ledger))
            chosen.set_display_name("select")
            compressed, ledger = chosen.outputs["compressed"], chosen.outputs["ledger"]
        ops["report_op"](job=job_spec, job_name=job.metadata.name, output=output_uri,
                         compressed=compressed, ledger_in=ledger).set_display_name("report")

    return compression_pipeline


def compile_pipeline(job: CompressionJob, output: str, package_path: str) -> None:
    """Write the pipeline's IR YAML, ready for a Kubeflow Pipelines server."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(job, output), package_path=package_path)
