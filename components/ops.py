"""Thin KFP component wrappers around the step functions, one per step kind.

KFP ships only each function's own source to the step container, so every body imports
what it needs inside. Each op gets what its step needs and nothing more: its own options
as JSON (set when the pipeline is built, search candidates included), the name it
records under (from the plan, modelpress.pipelines.steps), and the files of earlier steps.
"""


from typing import Any

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output


def fetch_op(name: str, spec: str, trust_model_code: bool, original: Output[Model],
             datasets: Output[Artifact], ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_fetch

    run_fetch(name, spec, trust_model_code, Path(original.path), Path(datasets.path),
              Path(ledger.path))


def prune_op(name: str, options: str, original: Input[Model], datasets: Input[Artifact],
             model_in: Input[Model], ledger_in: Input[Artifact], model_out: Output[Model],
             ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import Chain, run_prune

    run_prune(name, options, Path(original.path), Chain(Path(datasets.path), Path(model_in.path),
                                                        Path(ledger_in.path), Path(model_out.path),
                                                        Path(ledger.path)))


def distill_op(name: str, options: str, original: Input[Model], datasets: Input[Artifact],
               model_in: Input[Model], ledger_in: Input[Artifact], model_out: Output[Model],
               ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import Chain, run_distill

    run_distill(name, options, Path(original.path), Chain(Path(datasets.path),
                                                          Path(model_in.path), Path(ledger_in.path),
                                                          Path(model_out.path), Path(ledger.path)))


def decompose_op(name: str, options: str, datasets: Input[Artifact], model_in: Input[Model],
                 ledger_in: Input[Artifact], model_out: Output[Model],
                 ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import Chain, run_decompose

    run_decompose(name, options, Chain(Path(datasets.path), Path(model_in.path),
                                       Path(ledger_in.path), Path(model_out.path),
                                       Path(ledger.path)))


def quantize_op(name: str, options: str, probe: str, original: Input[Model],
                datasets: Input[Artifact], model_in: Input[Model], ledger_in: Input[Artifact],
                model_out: Output[Model], ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import Chain, run_quantize

    run_quantize(name, options, probe, Path(original.path),
                 Chain(Path(datasets.path), Path(model_in.path), Path(ledger_in.path),
                       Path(model_out.path), Path(ledger.path)))


def candidate_op(name: str, candidate: str, original: Input[Model],
                 ledger_in: Input[Artifact], model_out: Output[Model],
                 ledger: Output[Artifact]) -> None:
    """A verification run's model: the files the operator staged (`candidate`, a
    StagedCandidate as JSON), each checked against its sha256 (components.candidate)."""
    from pathlib import Path

    from modelpress.components.ops_runtime import run_candidate

    run_candidate(name, candidate, Path(original.path), Path(ledger_in.path),
                  Path(model_out.path), Path(ledger.path))


def validate_op(name: str, original: Input[Model], datasets: Input[Artifact],
                model_in: Input[Model], ledger_in: Input[Artifact], compressed: Output[Model],
                ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import Chain, run_validate

    run_validate(name, Path(original.path), Chain(Path(datasets.path), Path(model_in.path),
                                                  Path(ledger_in.path), Path(compressed.path),
                                                  Path(ledger.path)))


def select_op(name: str, spec: str, probe: str, auto_bar: float, output: str,
              original: Input[Model], datasets: Input[Artifact], ledger_in: Input[Artifact],
              compressed: Output[Model], ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_select

    run_select(name, spec, probe, auto_bar, output, Path(original.path), Path(datasets.path),
               Path(ledger_in.path), Path(compressed.path), Path(ledger.path))


def benchmark_op(name: str, pool: str, settings: str, original: Input[Model],
                 datasets: Input[Artifact], compressed: Input[Model], ledger_in: Input[Artifact],
                 ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_benchmark

    run_benchmark(name, pool, settings, Path(original.path), Path(datasets.path),
                  Path(compressed.path), Path(ledger_in.path), Path(ledger.path))


def report_op(name: str, job_name: str, output: str, promotion: str, original: Input[Model],
              compressed: Input[Model], ledger_in: Input[Artifact],
              ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_report

    run_report(name, job_name, output, promotion, Path(original.path), Path(compressed.path),
               Path(ledger_in.path), Path(ledger.path))


def make_ops(image: str) -> dict[str, Any]:
    """The components with `image` as their base image, by function name."""
    functions = (fetch_op, prune_op, distill_op, decompose_op, quantize_op, candidate_op,
                 validate_op, select_op, benchmark_op, report_op)
    # The step image ships modelpress and kfp, so no step pip-installs anything at start.
    return {fn.__name__: dsl.component(fn, base_image=image, install_kfp_package=False)
            for fn in functions}
