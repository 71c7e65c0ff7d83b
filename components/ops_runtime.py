"""What each KFP component body calls: parse its own options, load files, run the step,
record it in the ledger.

Progress events (modelpress.events) tell whoever watches the run when a step starts,
finishes or fails; a failure of any kind is reported with its exception type and first
line, and the process still exits non-zero with the traceback in its log.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelpress.api import (
    Benchmark,
    CompressionSpec,
    DecomposeStep,
    DistillStep,
    Pool,
    Promotion,
    PruneStep,
    QuantizeStep,
    StagedCandidate,
)
from modelpress.components.data import Arrays, load_arrays
from modelpress.components.splits import VALIDATION
from modelpress.errors import InvalidInput, ModelpressError
from modelpress.events import emit
from modelpress.records import (
    LatencyProbe,
    Ledger,
    LossyRecord,
    QuantizeRecord,
    StepRecord,
    read_ledger,
    write_ledger,
)

Work = Callable[[], tuple[Ledger, StepRecord]]


@dataclass(frozen=True)
class Chain:
    """The files a step in the model's chain reads and writes."""

    datasets: Path
    model_in: Path
    ledger_in: Path
    model_out: Path
    ledger_out: Path


def failure_line(error: Exception) -> str:
    """What a failed step reports: a user error's own message; for anything else (an
    onnxruntime InvalidArgument, a bug) the exception's type and the first line it says."""
    if isinstance(error, ModelpressError):
        return str(error)
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _recorded(name: str, work: Work, ledger_out: Path) -> None:
    """Run one step between started/finished events and write the ledger it leads to.

    Any exception becomes a `failed` event and exit status 1; the traceback of one that is
    not a user error stays in the step's log (stderr)."""
    emit("started", name)
    try:
        before, record = work()
        record = record.model_copy(update={"name": name})
        write_ledger([*before, record], ledger_out)
    except Exception as error:  # the runner's whole job is to report any failure
        emit("failed", name, message=failure_line(error))
        if isinstance(error, ModelpressError):
            print(f"modelpress: {error}", file=sys.stderr)
        else:
            traceback.print_exc(file=sys.stderr)
        raise SystemExit(1) from None
    emit("finished", name, seconds=record.seconds, message=record.message)


def _appended(ledger_in: Path, step: Callable[[], StepRecord]) -> Work:
    return lambda: (read_ledger(ledger_in), step())


def _dataset(datasets: Path, name: str) -> Arrays | None:
    path = datasets / f"{name}.npz"
    return load_arrays(path) if path.is_file() else None


def _eval(datasets: Path) -> Arrays:
    """The eval set: read by validate (the reported figures) and benchmark (inputs only)."""
    arrays = _dataset(datasets, "eval")
    assert arrays is not None, "fetch always writes eval.npz"
    return arrays


def _decision(datasets: Path) -> Arrays:
    """What the steps that choose or change the model read: the validation split
    (components.splits). A job without one decides nothing on data and has no labelled
    train or calibration set; its steps get the first set fetch wrote of train, calibration
    and eval, and use it only to trace the model's input shapes."""
    for name in (VALIDATION, "train", "calibration", "eval"):
        arrays = _dataset(datasets, name)
        if arrays is not None:
            return arrays
    raise AssertionError("fetch always writes eval.npz")


def _spending(chain: Chain, step: Callable[[], LossyRecord]) -> Callable[[], LossyRecord]:
    """`step`, whose record then says what the job has spent of its accuracy budget so far
    (components.budget), the measuring counted in the step's own time."""
    def measured() -> LossyRecord:
        from modelpress.components.budget import validation_drop
        from modelpress.components.result import timed

        record = step()
        with timed() as clock:
            drop = validation_drop(chain.model_out, chain.datasets)
        spent = "" if drop is None else f"; drop so far on validation {drop:.4f}"
        return record.model_copy(update={"validation_drop": drop, "message": record.message
                                         + spent, "seconds": record.seconds + clock.seconds})
    return measured


def required_train(arrays: Arrays | None, kind: str) -> Arrays:
    """The train set a training step (`kind`) needs, or the one line saying it is missing."""
    if arrays is None:
        raise InvalidInput("spec.data.train", f"{kind} trains, so it needs data.train")
    return arrays


def run_fetch(name: str, spec: str, trust_model_code: bool, original: Path, datasets: Path,
              ledger: Path) -> None:
    """`trust_model_code`: whether the model may be a program (decided when the pipeline
    was built, by the CLI's flag or the operator's setting; modelpress.trust)."""
    from modelpress.components.fetch import fetch

    _recorded(name, lambda: ([], fetch(CompressionSpec.model_validate_json(spec), original,
                                       datasets, trust_model_code=trust_model_code)), ledger)


def run_prune(name: str, options: str, original: Path, chain: Chain) -> None:
    from modelpress.components.prune import prune

    _recorded(name, _appended(chain.ledger_in, _spending(chain, lambda: prune(
        chain.model_in, original, PruneStep.model_validate_json(options),
        _decision(chain.datasets), _dataset(chain.datasets, "train"), chain.model_out))),
        chain.ledger_out)


def run_distill(name: str, options: str, original: Path, chain: Chain) -> None:
    from modelpress.components.distill import distill

    _recorded(name, _appended(chain.ledger_in, _spending(chain, lambda: distill(
        chain.model_in, original, DistillStep.model_validate_json(options),
        required_train(_dataset(chain.datasets, "train"), "distill"), chain.model_out,
        _dataset(chain.datasets, VALIDATION)))), chain.ledger_out)


def run_decompose(name: str, options: str, chain: Chain) -> None:
    from modelpress.components.decompose import decompose

    _recorded(name, _appended(chain.ledger_in, _spending(chain, lambda: decompose(
        chain.model_in, DecomposeStep.model_validate_json(options), _decision(chain.datasets),
        chain.model_out))), chain.ledger_out)


def run_quantize(name: str, options: str, probe: str, original: Path, chain: Chain) -> None:
    _recorded(name, _appended(chain.ledger_in, _spending(chain, lambda: _quantize(
        QuantizeStep.model_validate_json(options), LatencyProbe.model_validate_json(probe),
        original, chain))), chain.ledger_out)


def _quantize(options: QuantizeStep, probe: LatencyProbe, original: Path,
              chain: Chain) -> QuantizeRecord:
    from modelpress.components.llm_steps import is_text_generation, quantize_llm

    if is_text_generation(original):
        return quantize_llm(original, options, probe, chain.datasets, chain.model_out)
    return quantize_on(options, probe, original, chain.model_in, _decision(chain.datasets),
                       _dataset(chain.datasets, "train"),
                       _dataset(chain.datasets, "calibration"), chain.model_out)


def quantize_on(options: QuantizeStep, probe: LatencyProbe, original: Path, model_in: Path,
                decision: Arrays, train: Arrays | None, calibration: Arrays | None,
                model_out: Path) -> QuantizeRecord:
    """The quantize step of a pipeline task or a search trial: auto and qat calibrate on
    train when there is no calibration set, qat trains on train, and the step's bar (auto's
    always, a dynamic or static recipe's when given) is judged against the original."""
    from modelpress.components.fetch import BASELINE_ONNX
    from modelpress.components.quantize import QatInputs, accuracy_target, quantize

    if calibration is None and options.mode in ("auto", "qat"):
        calibration = train
    qat = None
    if options.mode == "qat":
        qat = QatInputs(original, required_train(train, "qat"))
    if options.mode == "auto" and options.max_accuracy_drop is None:
        raise InvalidInput("quantize.maxAccuracyDrop", "auto quantization needs its bar "
                                                       "(the pipeline builder sets it)")
    return quantize(model_in, options, decision, calibration, model_out,
                    accuracy_target(options, original / BASELINE_ONNX, probe), qat)


def run_validate(name: str, original: Path, chain: Chain) -> None:
    from modelpress.components.llm_steps import is_text_generation, validate_llm
    from modelpress.components.validate import validate

    def step() -> StepRecord:
        if is_text_generation(original):
            return validate_llm(original, chain.model_in, chain.datasets, chain.model_out)
        return validate(original, chain.model_in, _eval(chain.datasets), chain.model_out)

    _recorded(name, _appended(chain.ledger_in, step), chain.ledger_out)


def run_candidate(name: str, candidate: str, original: Path, ledger_in: Path, model_out: Path,
                  ledger_out: Path) -> None:
    """A verification run's model: `candidate` is the StagedCandidate as JSON."""
    from modelpress.components.candidate import take_candidate

    staged = StagedCandidate.model_validate_json(candidate)
    _recorded(name, _appended(ledger_in, lambda: take_candidate(staged, original, model_out)),
              ledger_out)


def run_select(name: str, spec: str, probe: str, auto_bar: float, output: str, original: Path,
               datasets: Path, ledger_in: Path, compressed: Path, ledger: Path) -> None:
    """The search's trials, judged on `decision`; the kept model validated on eval."""
    from modelpress.components.search import SearchRun, TrialInputs, search

    run = SearchRun(CompressionSpec.model_validate_json(spec),
                    LatencyProbe.model_validate_json(probe), auto_bar, output)
    _recorded(name, lambda: search(
        run, TrialInputs(original, decision=_decision(datasets), train=_dataset(datasets, "train"),
                         calibration=_dataset(datasets, "calibration")),
        _eval(datasets), read_ledger(ledger_in), compressed), ledger)


def run_benchmark(name: str, pool: str, settings: str, original: Path, datasets: Path,
                  compressed: Path, ledger_in: Path, ledger: Path) -> None:
    from modelpress.components.benchmark import benchmark
    from modelpress.components.fetch import BASELINE_ONNX
    from modelpress.components.llm_steps import benchmark_llm, is_text_generation

    def step() -> StepRecord:
        measured_pool = Pool.model_validate_json(pool)
        options = Benchmark.model_validate_json(settings)
        if is_text_generation(original):
            return benchmark_llm(original, compressed, datasets, measured_pool, options)
        return benchmark(original / BASELINE_ONNX, compressed / "model.onnx", _eval(datasets),
                         measured_pool, options)

    _recorded(name, _appended(ledger_in, step), ledger)


def run_report(name: str, job_name: str, output: str, promotion: str, original: Path,
               compressed: Path, ledger_in: Path, ledger: Path) -> None:
    from modelpress.components.fetch import BASELINE_ONNX
    from modelpress.components.llm_steps import BASELINE_GENAI, genai_folder, is_text_generation
    from modelpress.components.modelio import PREPROCESSOR
    from modelpress.components.report import report

    def work() -> tuple[Ledger, StepRecord]:
        before = read_ledger(ledger_in)
        gates = Promotion.model_validate_json(promotion)
        if is_text_generation(original):  # genai folders, tokenizer inside
            return before, report(name, job_name, gates, before, genai_folder(compressed),
                                  original / BASELINE_GENAI, output)
        return before, report(name, job_name, gates, before, compressed / "model.onnx",
                              original / BASELINE_ONNX, output, original / PREPROCESSOR)

    _recorded(name, work, ledger)
