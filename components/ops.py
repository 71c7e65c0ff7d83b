"""Thin KFP component wrappers around the step functions.

KFP ships only each function's own source to the step container, so every body imports
what it needs inside. The spec travels as the job's JSON; `index` picks the step.
"""


from typing import Any  # noqa: UP035 (KFP reads typing.List in component signatures)

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output


def fetch_op(job: str, original: Output[Model], data: Output[Artifact],
             ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_fetch

    run_fetch(job, Path(original.path), Path(data.path), Path(ledger.path))


def compress_op(job: str, index: int, candidate: int, original: Input[Model],
                data: Input[Artifact], model_in: Input[Model], ledger_in: Input[Artifact],
                model_out: Output[Model], ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_compress

    run_compress(job, index, candidate, Path(original.path), Path(data.path), Path(model_in.path),
                 Path(ledger_in.path), Path(model_out.path), Path(ledger.path))


def validate_op(job: str, original: Input[Model], data: Input[Artifact], model_in: Input[Model],
                ledger_in: Input[Artifact], compressed: Output[Model],
                ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_validate

    run_validate(job, Path(original.path), Path(data.path), Path(model_in.path),
                 Path(ledger_in.path), Path(compressed.path), Path(ledger.path))


def benchmark_op(job: str, pool: str, original: Input[Model], data: Input[Artifact],
                 compressed: Input[Model], ledger_in: Input[Artifact],
                 ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_benchmark

    run_benchmark(job, pool, Path(original.path), Path(data.path), Path(compressed.path),
                  Path(ledger_in.path), Path(ledger.path))


def select_op(job: str, original: Input[Model], data: Input[Artifact],
              models: Input[list[Model]], ledgers: Input[list[Artifact]],
              compressed: Output[Model], ledger: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_select

    run_select(job, Path(original.path), Path(data.path), [Path(m.path) for m in models],
               [Path(x.path) for x in ledgers], Path(compressed.path), Path(ledger.path))


def report_op(job: str, job_name: str, output: str, compressed: Input[Model],
              ledger_in: Input[Artifact], results: Output[Artifact]) -> None:
    from pathlib import Path

    from modelpress.components.ops_runtime import run_report

    run_report(job_name, output, Path(compressed.path), Path(ledger_in.path), Path(results.path))


def make_ops(image: str) -> dict[str, Any]:
    """The components with `image` as their base image."""
    functions = (fetch_op, compress_op, validate_op, benchmark_op, select_op, report_op)
    # The step image ships modelpress and kfp, so no step pip-installs anything at start.
    return {fn.__name__: dsl.component(fn, base_image=image,
                                       install_kfp_package=False)
            for fn in functions}
