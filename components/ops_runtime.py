"""What each KFP component body calls: parse the job, load files, run the step, record it.

Progress events go to the file named by MODELPRESS_EVENTS (one JSON line per event) when
it is set, which is how `modelpress run` shows live progress for a local run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelpress.api import CompressionSpec, DecomposeStep, DistillStep, PruneStep, QuantizeStep
from modelpress.components.data import Arrays, load_arrays
from modelpress.components.quantize import AutoTarget, QatInputs
from modelpress.components.result import StepResult, append_ledger, read_ledger
from modelpress.errors import ModelpressError

EVENTS_ENV = "MODELPRESS_EVENTS"


def emit(event: str, step: str, **fields: object) -> None:
    path = os.environ.get(EVENTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as events:
            events.write(json.dumps({"event": event, "step": step, "time": time.time(),
                                     **fields}) + "\n")


def _recorded(step: str, work: Callable[[], StepResult], ledger_in: Path | None,
              ledger_out: Path) -> None:
    """Run one step with start/finish events; a user-facing error ends the process cleanly."""
    emit("started", step)
    try:
        result = work()
    except ModelpressError as error:
        emit("failed", step, message=str(error))
        print(f"modelpress: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    append_ledger(ledger_in, result, ledger_out)
    emit("finished", step, seconds=result.seconds, message=result.message)


def _spec(job: str) -> CompressionSpec:
    return CompressionSpec.model_validate_json(job)


def _dataset(data: Path, name: str) -> Arrays | None:
    path = data / f"{name}.npz"
    return load_arrays(path) if path.is_file() else None


def _eval(data: Path) -> Arrays:
    arrays = _dataset(data, "eval")
    assert arrays is not None, "fetch always writes eval.npz"
    return arrays


def run_fetch(job: str, original: Path, data: Path, ledger: Path) -> None:
    from modelpress.components.fetch import fetch

    _recorded("fetch", lambda: fetch(_spec(job), original, data), None, ledger)


def _auto_target(spec: CompressionSpec, options: QuantizeStep, original: Path) -> AutoTarget:
    """Auto quantization measures on the first CPU pool, at the largest batch size."""
    from modelpress.components.fetch import BASELINE_ONNX

    bar = options.max_accuracy_drop
    if bar is None:
        bar = spec.promotion.gates.max_accuracy_drop
    cpu_pools = [pool for pool in spec.benchmark.pools if pool.device == "cpu"]
    return AutoTarget(baseline_onnx=original / BASELINE_ONNX,
                      max_accuracy_drop=0.01 if bar is None else bar,
                      batch_size=max(spec.benchmark.batch_sizes),
                      threads=cpu_pools[0].threads if cpu_pools else 1)


def run_compress(job: str, index: int, candidate: int, original: Path, data: Path,
                 model_in: Path, ledger_in: Path, model_out: Path, ledger: Path) -> None:
    from modelpress.components.search import apply_candidate

    spec = apply_candidate(_spec(job), candidate)
    options = spec.steps[index].options

    def work() -> StepResult:
        if isinstance(options, PruneStep):
            from modelpress.components.prune import prune

            return prune(model_in, original, options, _eval(data), _dataset(data, "train"),
                         model_out)
        if isinstance(options, DistillStep):
            from modelpress.components.distill import distill

            train = _dataset(data, "train")
            assert train is not None, "the spec guarantees data.train for distill"
            return distill(model_in, original, options, train, model_out)
        if isinstance(options, DecomposeStep):
            from modelpress.components.decompose import decompose

            return decompose(model_in, options, _eval(data), model_out)
        assert isinstance(options, QuantizeStep)
        from modelpress.components.quantize import quantize

        train = _dataset(data, "train")
        calibration = _dataset(data, "calibration")
        if calibration is None and options.mode in ("auto", "qat"):
            calibration = train
        qat = QatInputs(original, train) if options.mode == "qat" and train is not None else None
        return quantize(model_in, options, _eval(data), calibration, model_out,
                        _auto_target(spec, options, original), qat)

    _recorded(spec.steps[index].kind, work, ledger_in, ledger)


def run_validate(job: str, original: Path, data: Path, model_in: Path, ledger_in: Path,
                 compressed: Path, ledger: Path) -> None:
    from modelpress.components.validate import validate

    _recorded("validate", lambda: validate(original, model_in, _eval(data), compressed),
              ledger_in, ledger)


def run_benchmark(job: str, pool_name: str, original: Path, data: Path, compressed: Path,
                  ledger_in: Path, ledger: Path) -> None:
    from modelpress.components.benchmark import benchmark
    from modelpress.components.fetch import BASELINE_ONNX

    spec = _spec(job)
    pool = next(pool for pool in spec.benchmark.pools if pool.name == pool_name)
    _recorded(f"benchmark-{pool_name}",
              lambda: benchmark(original / BASELINE_ONNX, compressed / "model.onnx",
                                _eval(data), pool, spec.benchmark), ledger_in, ledger)


def run_select(job: str, original: Path, data: Path, models: list[Path], ledgers: list[Path],
               compressed: Path, ledger: Path) -> None:
    from modelpress.components.search import select

    def work() -> StepResult:
        carried, result = select(_spec(job), original, _eval(data), models, ledgers, compressed)
        ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger.write_text(json.dumps(carried))  # the winner's own steps, then select's entry
        return result

    _recorded("select", work, ledger, ledger)


def run_report(job_name: str, output: str, compressed: Path, ledger_in: Path,
               results: Path) -> None:
    from modelpress.components.report import report

    _recorded("report", lambda: report(job_name, read_ledger(ledger_in), compressed / "model.onnx",
                                       output), ledger_in, results)
