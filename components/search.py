"""Search: trials of the job's steps with searched options, one after another in this step.

Each trial runs the job's own step functions (prune, distill, decompose, quantize, then
validate) with that trial's options, in this process, and is judged on the decision data
the runtime passes (never the eval set). Trials run in sequence because a sequential
sampler (tpe) proposes each trial from the figures of the earlier ones, and because a
search that keeps its best so far must know it after every trial: after each one, every
trial's figures go to `search/trials.json` in the job's output and the best so far
(selection.choose, the rule of auto quantization) to `search/best/` and the step's working
model. A run stopped half way (time budget, maxTrials, or the process killed) still leaves
its best model and every figure. When the search ends, the kept model is validated once on
the eval set for the reported figures and benchmarked on every pool afterwards; when no
trial keeps the accuracy drop within the bar, the original model is kept, validated.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelpress.api import (
    Candidate,
    CompressionSpec,
    Model,
    QuantizeStep,
    Search,
    SearchParameter,
    SearchValue,
    Step,
)
from modelpress.components.data import Arrays
from modelpress.components.result import timed
from modelpress.components.selection import Measured, choose
from modelpress.records import (
    FetchRecord,
    LatencyProbe,
    Ledger,
    SelectRecord,
    StepRecord,
    records_of,
)

TRIALS_KEY = "search/trials.json"
BEST_PREFIX = "search/best/"
# What the tpe sampler minimises for a trial outside the bar: above any model's size or
# latency, so that every trial within the bar ranks first.
_MISSED_BAR = 1e15

Assignment = tuple[tuple[SearchParameter, SearchValue], ...]


@dataclass(frozen=True)
class SearchRun:
    """What the search is: the spec (its steps resolved when the pipeline was built), how
    trials are timed, auto quantization's bar, and the output its progress goes to."""

    spec: CompressionSpec
    probe: LatencyProbe
    auto_bar: float
    output: str

    @property
    def search(self) -> Search:
        assert self.spec.search is not None
        return self.spec.search


@dataclass(frozen=True)
class TrialInputs:
    """The data of every trial: `decision` judges trials (the runtime picks it)."""

    original: Path
    decision: Arrays
    train: Arrays | None
    calibration: Arrays | None


class SearchProgress(Model):
    """search/trials.json: every trial so far, judged, and which one search/best/ holds."""

    trials: list[Candidate]
    chosen: str | None = None
    finished: bool = False
    message: str = ""


def read_progress(path: Path) -> SearchProgress:
    return SearchProgress.model_validate_json(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- samplers


def trial_name(number: int, assignment: Assignment) -> str:
    values = ", ".join(f"{searched.parameter}={_shown(value)}" for searched, value in assignment)
    return f"trial {number}: {values}"


def _shown(value: SearchValue) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class GridSampler:
    """Every combination of the values, parameters in order, the last varying fastest."""

    def __init__(self, search: Search) -> None:
        combos = itertools.product(*([(p, v) for v in p.values or []] for p in search.searched))
        self._proposals: Iterator[Assignment] = iter(tuple(combo) for combo in combos)

    def propose(self) -> Assignment | None:
        return next(self._proposals, None)

    def tell(self, score: float | None) -> None:
        """Grid ignores results."""


class TpeSampler:
    """optuna's TPESampler, seeded: the same seed and figures propose the same trials."""

    def __init__(self, search: Search, spec: CompressionSpec) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._searched = search.searched
        self._integer = {p.parameter: _integer_option(spec, p) for p in self._searched}
        self._study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=search.seed))
        self._trial: optuna.Trial | None = None

    def propose(self) -> Assignment | None:
        trial = self._trial = self._study.ask()
        return tuple((p, self._suggest(trial, p)) for p in self._searched)

    def _suggest(self, trial: object, searched: SearchParameter) -> SearchValue:
        name = searched.parameter
        if searched.values is not None:
            return trial.suggest_categorical(name, searched.values)  # type: ignore[attr-defined]
        low, high = float(searched.low or 0.0), float(searched.high or 0.0)
        if self._integer[name]:
            return int(trial.suggest_int(name, int(low), int(high), log=searched.log))  # type: ignore[attr-defined]
        return float(trial.suggest_float(name, low, high, log=searched.log))  # type: ignore[attr-defined]

    def tell(self, score: float | None) -> None:
        import optuna

        assert self._trial is not None
        if score is None:
            self._study.tell(self._trial, state=optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(self._trial, score)


def _integer_option(spec: CompressionSpec, searched: SearchParameter) -> bool:
    index, field = searched.target
    options = type(spec.steps[index].options)
    info = next(info for name, info in options.model_fields.items()
                if field in (name, info.alias))
    return info.annotation in (int, "int")


def _sampler(run: SearchRun) -> GridSampler | TpeSampler:
    return GridSampler(run.search) if run.search.sampler == "grid" \
        else TpeSampler(run.search, run.spec)


def tpe_score(measured: Measured, search: Search) -> float | None:
    """What tpe minimises: the objective's figure within the bar, else more than any."""
    if measured.error is not None or measured.accuracy_drop is None:
        return None
    figure = measured.latency_ms if search.objective == "latency" else measured.size_bytes
    if measured.accuracy_drop <= search.max_accuracy_drop:
        return float(figure or 0.0)
    return _MISSED_BAR * (1.0 + measured.accuracy_drop)


# ----------------------------------------------------------------------------- one trial


def trial_steps(run: SearchRun, assignment: Assignment) -> list[Step]:
    """The job's steps with the trial's options (auto quantization gets the job's bar)."""
    steps = list(run.spec.steps)
    for searched, value in assignment:
        index, field = searched.target
        options = steps[index].options
        changed = type(options).model_validate({**options.to_wire(), field: value})
        steps[index] = Step.model_validate({steps[index].kind: changed})
    return [_with_auto_bar(step, run.auto_bar) for step in steps]


def _with_auto_bar(step: Step, bar: float) -> Step:
    options = step.options
    if isinstance(options, QuantizeStep) and options.mode == "auto" \
            and options.max_accuracy_drop is None:
        return Step(quantize=options.model_copy(update={"max_accuracy_drop": bar}))
    return step


def _run_step(step: Step, model_in: Path, inputs: TrialInputs, probe: LatencyProbe,
              out: Path) -> StepRecord:
    """One of the job's steps, as its pipeline task would run it, on the decision data."""
    from modelpress.components.ops_runtime import quantize_on, required_train

    options = step.options
    if step.kind == "prune":
        from modelpress.components.prune import prune

        return prune(model_in, inputs.original, options, inputs.decision,  # type: ignore[arg-type]
                     inputs.train, out)
    if step.kind == "decompose":
        from modelpress.components.decompose import decompose

        return decompose(model_in, options, inputs.decision, out)  # type: ignore[arg-type]
    if step.kind == "distill":
        from modelpress.components.distill import distill

        train = required_train(inputs.train, "distill")
        return distill(model_in, inputs.original, options, train, out,  # type: ignore[arg-type]
                       validation=inputs.decision)
    return quantize_on(options, probe, inputs.original, model_in,  # type: ignore[arg-type]
                       inputs.decision, inputs.train, inputs.calibration, out)


@dataclass(frozen=True)
class Trial:
    """A finished trial: its figures, its steps' records and its validated model."""

    measured: Measured
    records: list[StepRecord]
    model: Path | None


def run_trial(name: str, steps: list[Step], inputs: TrialInputs, probe: LatencyProbe,
              folder: Path) -> Trial:
    """Run `steps` then validate on the decision data and time the model; a trial that
    fails is a failed candidate, not a failed search."""
    from modelpress.components.benchmark import p50_latencies
    from modelpress.components.validate import validate

    model, records = inputs.original, []
    try:
        for position, step in enumerate(steps):
            out = folder / f"{position}-{step.kind}"
            records.append(_run_step(step, model, inputs, probe, out)
                           .model_copy(update={"name": step.kind}))
            model = out
        validation = validate(inputs.original, model, inputs.decision, folder / "validated")
        latency = p50_latencies({name: folder / "validated" / "model.onnx"}, inputs.decision,
                                probe)[name]
    except Exception as error:  # any failure is this trial's figure, the search goes on
        lines = str(error).strip().splitlines()
        return Trial(Measured(name=name, accuracy_drop=None,
                              error=f"{type(error).__name__}: {lines[0] if lines else ''}"),
                     records, None)
    measured = Measured(name=name, accuracy_drop=round(validation.accuracy_drop, 6),
                        size_bytes=validation.compressed.size_bytes, latency_ms=latency)
    return Trial(measured, records, folder / "validated")


# ----------------------------------------------------------------------------- the search


class _Progress:
    """Every trial so far and the best one, persisted to the output after each trial."""

    def __init__(self, run: SearchRun, working_model: Path) -> None:
        from modelpress.store import open_store

        self.run, self.working_model = run, working_model
        self.store = open_store(run.output)
        self.trials: list[Trial] = []
        self.best: Trial | None = None

    def judged(self) -> tuple[Measured | None, list[Measured]]:
        return choose([trial.measured for trial in self.trials],
                      self.run.search.max_accuracy_drop, self.run.search.objective)

    def add(self, trial: Trial) -> None:
        self.trials.append(trial)
        winner, _ = self.judged()
        best = next((t for t in self.trials if t.measured is winner), None)
        if best is not None and best is not self.best:
            self._keep(best)
        self.save(finished=False, message=f"{len(self.trials)} trial(s) so far")

    def _keep(self, best: Trial) -> None:
        """The new best: the step's working model, then search/best/ in the output (before
        trials.json names it)."""
        assert best.model is not None
        if self.best is not None and self.best.model is not None:
            shutil.rmtree(self.best.model.parent, ignore_errors=True)
        self.best = best
        shutil.rmtree(self.working_model, ignore_errors=True)
        shutil.copytree(best.model, self.working_model)
        for path in sorted(self.working_model.iterdir()):
            if path.is_file():
                self.store.put_file(path, BEST_PREFIX + path.name)

    def save(self, finished: bool, message: str) -> None:
        winner, judged = self.judged()
        progress = SearchProgress(trials=[m.as_candidate() for m in judged],
                                  chosen=winner.name if winner else None, finished=finished,
                                  message=message)
        with tempfile.TemporaryDirectory() as scratch:
            staged = Path(scratch) / "trials.json"
            staged.write_text(progress.model_dump_json(by_alias=True, indent=1),
                              encoding="utf-8")
            self.store.put_file(staged, TRIALS_KEY)


def _why_stop(search: Search, trials: int, began: float) -> str | None:
    if search.max_trials is not None and trials >= search.max_trials:
        return f"maxTrials {search.max_trials} reached"
    if search.time_budget_seconds is not None \
            and time.monotonic() - began >= search.time_budget_seconds:
        return f"time budget of {search.time_budget_seconds} s reached"
    return None


def _search_loop(run: SearchRun, inputs: TrialInputs, progress: _Progress,
                 scratch: Path) -> str:
    """Propose, run and record trials until the sampler, maxTrials or the time budget ends
    the search; returns why it ended. A proposal repeated by tpe is told its earlier
    figure and counts as a trial, but does not run again."""
    sampler, began = _sampler(run), time.monotonic()
    seen: dict[tuple[SearchValue, ...], Measured] = {}
    proposed = 0
    while (stop := _why_stop(run.search, proposed, began)) is None:
        assignment = sampler.propose()
        if assignment is None:
            return "every grid point tried"
        proposed += 1
        key = tuple(value for _, value in assignment)
        if key not in seen:
            name = trial_name(len(progress.trials) + 1, assignment)
            trial = run_trial(name, trial_steps(run, assignment), inputs, run.probe,
                              scratch / f"trial-{len(progress.trials) + 1}")
            progress.add(trial)
            seen[key] = trial.measured
            if trial.model is not None and trial is not progress.best:
                shutil.rmtree(trial.model.parent, ignore_errors=True)
        sampler.tell(tpe_score(seen[key], run.search))
    return stop


def search(run: SearchRun, inputs: TrialInputs, evaluation: Arrays, fetched: Ledger,
           compressed_out: Path) -> tuple[Ledger, SelectRecord]:
    """Run the trials, then validate the kept model on `evaluation` into `compressed_out`;
    return the ledger that led to it (fetch's records, the kept trial's steps, its
    validation) and select's record. `fetched`: fetch's ledger."""
    from modelpress.components.validate import validate

    with timed() as clock, tempfile.TemporaryDirectory() as scratch:
        progress = _Progress(run, compressed_out)
        stop = _search_loop(run, inputs, progress, Path(scratch))
        winner, judged = progress.judged()
        summary = f"{len(progress.trials)} trial(s), {run.search.sampler} sampler; {stop}"
        progress.save(finished=True, message=summary)
        candidates = [measured.as_candidate() for measured in judged]
        if progress.best is None or winner is None:
            record = SelectRecord(candidates=candidates, message=(
                f"no trial kept the accuracy drop within {run.search.max_accuracy_drop}; the "
                f"original model is kept ({summary})"))
            return _original_validated(inputs.original, evaluation, compressed_out,
                                       fetched), clock.stamp(record)
        assert progress.best.model is not None
        validation = validate(inputs.original, progress.best.model, evaluation, compressed_out)
        reason = next(measured.reason for measured in judged if measured.chosen)
        record = SelectRecord(candidates=candidates, chosen=winner.name,
                              message=f"chose {winner.name}: {reason} ({summary})")
    kept = [*records_of(fetched, FetchRecord), *progress.best.records,
            validation.model_copy(update={"name": "validate"})]
    return kept, clock.stamp(record)


def _original_validated(original: Path, evaluation: Arrays, out: Path,
                        fetched: Ledger) -> Ledger:
    """When nothing qualifies: the original (its fp32 ONNX baseline) validated as the
    outcome, recorded under validate's name."""
    from modelpress.components.fetch import BASELINE_ONNX
    from modelpress.components.modelio import read_manifest, write_manifest
    from modelpress.components.onnxfiles import copy_onnx
    from modelpress.components.validate import validate

    shutil.rmtree(out, ignore_errors=True)
    staged = out.parent / f"{out.name}-original"
    write_manifest(staged, read_manifest(original).with_format("onnx"))
    copy_onnx(original / BASELINE_ONNX, staged / "model.onnx")
    validation = validate(original, staged, evaluation, out)
    shutil.rmtree(staged)
    return [*records_of(fetched, FetchRecord), validation.model_copy(update={"name": "validate"})]
