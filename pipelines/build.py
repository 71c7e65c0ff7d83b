"""Wire the steps of a job into a KFP pipeline, in the order and under the names of
`modelpress.pipelines.steps`: fetch, the spec's steps, validate, (select), one benchmark
task per pool (on that pool's nodes), report.

Everything a step needs is decided here, when the pipeline is built: each compression task
gets its own options (a search: the resolved spec its trials start from), auto quantization
its bar and how to time recipes, each benchmark its pool.
"""


import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from modelpress.api import (
    CREDENTIALS_REFUSED,
    TEXT_GENERATION,
    CompressionJob,
    CompressionSpec,
    Model,
    Pool,
    QuantizeStep,
    StagedCandidate,
    Step,
    holds_credentials,
)
from modelpress.errors import InvalidInput
from modelpress.pipelines.steps import CANDIDATE, VALIDATE, PlannedStep, planned_steps
from modelpress.records import LatencyProbe
from modelpress.trust import require_trusted

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


# The keys a storage Secret holds, each read into the step's environment under its name.
STORAGE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class TaskBounds:
    """What every task of a job's pipeline gets: the storage Secret it reads its
    credentials from (by name only), and the longest its pod may run."""

    secret_name: str
    deadline_seconds: int | None


def task_bounds(spec: CompressionSpec, deadline_seconds: int | None) -> TaskBounds:
    """The job's own Secret (spec.storage.secretName, else MODELPRESS_STORAGE_SECRET_NAME)
    and `deadline_seconds`, else the job's spec.deadlineSeconds."""
    from modelpress.settings import get_settings

    named = spec.storage.secret_name if spec.storage else None
    return TaskBounds(secret_name=named or get_settings().storage_secret_name,
                      deadline_seconds=deadline_seconds or spec.deadline_seconds)


def run_deadline(spec: CompressionSpec, cap_seconds: int) -> int:
    """The job's deadline as the operator enforces it: its own, at most the cap, which is
    also the default."""
    return min(spec.deadline_seconds or cap_seconds, cap_seconds)


STEP_POD_LABEL = "modelpress.io/step"


def _with_store_access(task: Any, bounds: TaskBounds) -> Any:
    """Give a step the artifact store's endpoint, the credentials of the job's own storage
    Secret, its pod's deadline (activeDeadlineSeconds) and the label that marks step pods.

    The Secret is named, never read here: Kubernetes looks it up in the namespace the run
    executes in, which for a multi-user Kubeflow is the job's own (as the operator submits
    it), so a step never receives the platform's credentials."""
    from kfp import kubernetes

    from modelpress.settings import get_settings

    endpoint = get_settings().s3_endpoint
    if endpoint:
        if holds_credentials(endpoint):  # it would be written into the IR
            raise InvalidInput("MODELPRESS_S3_ENDPOINT", CREDENTIALS_REFUSED)
        task.set_env_variable("MODELPRESS_S3_ENDPOINT", endpoint)
    kubernetes.use_secret_as_env(task, secret_name=bounds.secret_name,
                                 secret_key_to_env={key: key for key in STORAGE_SECRET_KEYS})
    if bounds.deadline_seconds:
        kubernetes.set_timeout(task, bounds.deadline_seconds)
    # What the chart's optional step-egress NetworkPolicy selects.
    kubernetes.add_pod_label(task, label_key=STEP_POD_LABEL, label_value="true")
    return task


def _accessing_store(op: Any, bounds: TaskBounds) -> Callable[..., Any]:
    def make_task(**arguments: Any) -> Any:
        return _with_store_access(op(**arguments), bounds)

    return make_task


def pipeline_name(job: CompressionJob) -> str:
    return PIPELINE_PREFIX + re.sub(r"[^a-z0-9-]", "-", job.metadata.name)


# The default fidelity bar of auto quantization, when neither the step nor the gates set one.
DEFAULT_AUTO_BAR = 0.01
# text-generation's: 1 - top-1 agreement, and the relative perplexity increase (docs/llm.md).
DEFAULT_LLM_AUTO_BAR = 0.10
DEFAULT_LLM_PERPLEXITY_BAR = 0.05


def resolved_options(spec: CompressionSpec, options: Model) -> Model:
    """`options` with what is decided at build time filled in: auto quantization's bar is
    the step's own, else promotion.gates.maxAccuracyDrop, else 0.01 (text-generation: 0.10,
    and maxPerplexityIncrease likewise, else 0.05)."""
    if not isinstance(options, QuantizeStep) or options.mode != "auto":
        return options
    gates = spec.promotion.gates
    generating = spec.model.task == TEXT_GENERATION
    update: dict[str, float] = {}
    if options.max_accuracy_drop is None:
        default = DEFAULT_LLM_AUTO_BAR if generating else DEFAULT_AUTO_BAR
        update["max_accuracy_drop"] = default if gates.max_accuracy_drop is None \
            else gates.max_accuracy_drop
    if generating and options.max_perplexity_increase is None:
        update["max_perplexity_increase"] = DEFAULT_LLM_PERPLEXITY_BAR \
            if gates.max_perplexity_increase is None else gates.max_perplexity_increase
    return options.model_copy(update=update)


def latency_probe(spec: CompressionSpec) -> LatencyProbe:
    """How candidates are timed against each other: the largest batch size, with the
    threads of the first CPU pool."""
    cpu_pools = [pool for pool in spec.benchmark.pools if pool.device == "cpu"]
    return LatencyProbe(batch_size=max(spec.benchmark.batch_sizes),
                        threads=cpu_pools[0].threads if cpu_pools else 1)


def searched_spec(spec: CompressionSpec) -> CompressionSpec:
    """What a search's trials start from: the spec with every step's options resolved (a
    trial's own auto quantization gets `auto_bar`)."""
    steps = [Step.model_validate({step.kind: resolved_options(spec, step.options)})
             for step in spec.steps]
    return spec.model_copy(update={"steps": steps})


def auto_bar(spec: CompressionSpec) -> float:
    """The bar a trial's auto quantization gets when its step sets none."""
    bar = resolved_options(spec, QuantizeStep(mode="auto")).max_accuracy_drop  # type: ignore[attr-defined]
    assert bar is not None
    return float(bar)


def _json(model: Model) -> str:
    return model.model_dump_json(by_alias=True, exclude_none=True)


@dataclass(frozen=True)
class Flow:
    """The outputs the next task reads: fetch's files, and the model and ledger so far."""

    original: Any
    datasets: Any
    model: Any
    ledger: Any


def _compression_task(ops: dict[str, Any], step: PlannedStep, options: Any, probe: str,
                      flow: Flow) -> Flow:
    chain = {"datasets": flow.datasets, "model_in": flow.model, "ledger_in": flow.ledger}
    if step.kind == "decompose":
        task = ops["decompose_op"](name=step.name, options=options, **chain)
    elif step.kind == "quantize":
        task = ops["quantize_op"](name=step.name, options=options, probe=probe,
                                  original=flow.original, **chain)
    else:
        task = ops[f"{step.kind}_op"](name=step.name, options=options, original=flow.original,
                                      **chain)
    task.set_display_name(step.name)
    return replace(flow, model=task.outputs["model_out"], ledger=task.outputs["ledger"])


def _compress_and_validate(ops: dict[str, Any], spec: CompressionSpec, plan: list[PlannedStep],
                           flow: Flow) -> Flow:
    """The spec's steps, then validate."""
    probe = _json(latency_probe(spec))
    for step in plan:
        if step.kind == "validate":
            task = ops["validate_op"](name=step.name, original=flow.original,
                                      datasets=flow.datasets, model_in=flow.model,
                                      ledger_in=flow.ledger).set_display_name(step.name)
            return replace(flow, model=task.outputs["compressed"], ledger=task.outputs["ledger"])
        assert step.index is not None
        options = _json(resolved_options(spec, spec.steps[step.index].options))
        flow = _compression_task(ops, step, options, probe, flow)
    raise AssertionError("the plan always validates after the spec's steps")


def _search(ops: dict[str, Any], spec: CompressionSpec, plan: list[PlannedStep], flow: Flow,
            output: Any) -> Flow:
    """One select task runs every trial in sequence (docs/search.md says why) and keeps one
    model (or the original) and the ledger that led to it."""
    select = next(step for step in plan if step.kind == "select")
    chosen = ops["select_op"](name=select.name, spec=_json(searched_spec(spec)),
                              probe=_json(latency_probe(spec)), auto_bar=auto_bar(spec),
                              output=output, original=flow.original, datasets=flow.datasets,
                              ledger_in=flow.ledger)
    chosen.set_display_name(select.name)
    return replace(flow, model=chosen.outputs["compressed"], ledger=chosen.outputs["ledger"])


def _benchmarks(ops: dict[str, Any], spec: CompressionSpec, plan: list[PlannedStep],
                flow: Flow) -> Flow:
    pools = {pool.name: pool for pool in spec.benchmark.pools}
    for step in plan:
        if step.kind != "benchmark":
            continue
        assert step.pool is not None
        pool = pools[step.pool]
        settings = spec.benchmark.model_copy(update={"pools": [pool]})
        measured = ops["benchmark_op"](name=step.name, pool=_json(pool), settings=_json(settings),
                                       original=flow.original, datasets=flow.datasets,
                                       compressed=flow.model, ledger_in=flow.ledger)
        measured.set_display_name(step.name)
        _place_on_pool(measured, pool)
        flow = replace(flow, ledger=measured.outputs["ledger"])
    return flow


def _fetch(ops: dict[str, Any], spec: CompressionSpec, step: PlannedStep,
           trust_model_code: bool) -> Flow:
    fetched = ops["fetch_op"](name=step.name, spec=_json(spec),
                              trust_model_code=trust_model_code).set_display_name(step.name)
    return Flow(original=fetched.outputs["original"], datasets=fetched.outputs["datasets"],
                model=fetched.outputs["original"], ledger=fetched.outputs["ledger"])


def _measure_and_report(ops: dict[str, Any], job: CompressionJob, plan: list[PlannedStep],
                        flow: Flow, output_uri: Any) -> None:
    """One benchmark task per pool, then the report that publishes to `output_uri`."""
    flow = _benchmarks(ops, job.spec, plan, flow)
    last = plan[-1]
    ops["report_op"](name=last.name, job_name=job.metadata.name, output=output_uri,
                     promotion=_json(job.spec.promotion), original=flow.original,
                     compressed=flow.model, ledger_in=flow.ledger).set_display_name(last.name)


def build_pipeline(job: CompressionJob, output: str, *, trust_model_code: bool = False,
                   deadline_seconds: int | None = None) -> Callable[..., Any]:
    """A KFP pipeline function for `job` that publishes its results to `output`.

    Unless `trust_model_code`, a job naming a program (modelpress.trust) is refused here,
    and the fetch step refuses one it only recognises by reading the file. Every task's pod
    is bounded by `deadline_seconds` (the operator's: `run_deadline`), else by the job's
    spec.deadlineSeconds; with neither, only by the run's own deadline."""
    from kfp import dsl

    from modelpress.components.ops import make_ops
    from modelpress.settings import get_settings

    require_trusted(job.spec, trust_model_code)
    raw_ops = make_ops(job.spec.image or get_settings().step_image)
    bounds = task_bounds(job.spec, deadline_seconds)
    ops = {name: _accessing_store(op, bounds) for name, op in raw_ops.items()}
    spec = job.spec
    plan = planned_steps(spec)

    @dsl.pipeline(name=pipeline_name(job), description=f"modelpress job {job.metadata.name}")
    def compression_pipeline(output_uri: str = output) -> None:
        flow = _fetch(ops, spec, plan[0], trust_model_code)
        if spec.search is None:
            flow = _compress_and_validate(ops, spec, [s for s in plan if s.in_chain], flow)
        else:
            flow = _search(ops, spec, plan, flow, output_uri)
        _measure_and_report(ops, job, plan, flow, output_uri)

    return compression_pipeline


def compile_pipeline(job: CompressionJob, output: str, package_path: str, *,
                     trust_model_code: bool = False, deadline_seconds: int | None = None) -> None:
    """Write the pipeline's IR YAML, ready for a Kubeflow Pipelines server."""
    from kfp import compiler

    pipeline = build_pipeline(job, output, trust_model_code=trust_model_code,
                              deadline_seconds=deadline_seconds)
    compiler.Compiler().compile(pipeline, package_path=package_path)


# --------------------------------------------------------------------- verification
# The platform's re-measurement of a run's model (docs/verification.md): the job's own
# pipeline with its compression chain (or search) replaced by one step that takes the model
# files the operator staged, then the same validate, benchmarks and report.

VERIFICATION_PREFIX = "modelpress-verify-"


def build_verification_pipeline(job: CompressionJob, candidate: StagedCandidate, output: str,
                                *, secret_name: str,
                                deadline_seconds: int | None = None) -> Callable[..., Any]:
    """A KFP pipeline that measures the staged `candidate` as `job`'s compressed model and
    publishes to `output`. It runs with the platform's storage Secret (`secret_name`) and
    the operator's step image, never the job's spec.image or Secret, and trusts no model
    code: a job whose model is a program is refused here (InvalidInput)."""
    from kfp import dsl

    from modelpress.components.ops import make_ops
    from modelpress.settings import get_settings

    spec = job.spec
    require_trusted(spec, False)
    bounds = TaskBounds(secret_name=secret_name,
                        deadline_seconds=deadline_seconds or spec.deadline_seconds)
    ops = {name: _accessing_store(op, bounds)
           for name, op in make_ops(get_settings().step_image).items()}
    plan = planned_steps(spec)
    validate = PlannedStep(VALIDATE, "validate")

    @dsl.pipeline(name=VERIFICATION_PREFIX + pipeline_name(job).removeprefix(PIPELINE_PREFIX),
                  description=f"modelpress verification of job {job.metadata.name}")
    def verification_pipeline(output_uri: str = output) -> None:
        flow = _fetch(ops, spec, plan[0], False)
        taken = ops["candidate_op"](name=CANDIDATE, candidate=_json(candidate),
                                    original=flow.original, ledger_in=flow.ledger)
        taken.set_display_name(CANDIDATE)
        flow = replace(flow, model=taken.outputs["model_out"], ledger=taken.outputs["ledger"])
        flow = _compress_and_validate(ops, spec, [validate], flow)
        _measure_and_report(ops, job, plan, flow, output_uri)

    return verification_pipeline


def compile_verification_pipeline(job: CompressionJob, candidate: StagedCandidate, output: str,
                                  package_path: str, *, secret_name: str,
                                  deadline_seconds: int | None = None) -> None:
    """Write the verification pipeline's IR YAML (see build_verification_pipeline)."""
    from kfp import compiler

    pipeline = build_verification_pipeline(job, candidate, output, secret_name=secret_name,
                                           deadline_seconds=deadline_seconds)
    compiler.Compiler().compile(pipeline, package_path=package_path)
