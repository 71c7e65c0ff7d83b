"""The step contract: what each pipeline step records, and the results.json the report writes.

Steps run in separate processes (kfp.local subprocesses, pods on a cluster). What one step
tells the later ones travels beside the model as a ledger: a JSON list with one record per
finished step, typed by its `kind`. The report turns the ledger into results.json
(`ResultsDocument`), which the CLI and the operator both read with `read_results_document`.
Every file here has one writer and one reader, and is read by attribute after that.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

from modelpress.api import (
    Candidate,
    DecisionData,
    DropInterval,
    Model,
    PoolBenchmark,
    Results,
    SensitivityEntry,
    StepStatus,
    TextGenerationFigures,
)
from modelpress.errors import StoreError
from modelpress.lineage import LineageInput, first_problem
from modelpress.store import open_store

RESULTS = "results.json"


def _now() -> datetime:
    return datetime.now(UTC)


class StepRecord(Model):
    """What every step records: its name in the plan, when it started, its own compute
    time (wall clock inside the step function, not process start-up) and a summary line."""

    name: str = Field(default="", description="Set by the step's runner from the plan.")
    started_at: datetime = Field(default_factory=_now)
    seconds: float = Field(default=0.0, ge=0.0)
    message: str = ""


class LossyRecord(StepRecord):
    """A step that changes the model, and what it has spent of the job's accuracy budget."""

    validation_drop: float | None = Field(
        default=None, description="The headline metric drop of the model this step wrote vs "
                                  "the original, on the validation split: every step so far "
                                  "together. None: the job has no validation split.")


class FetchRecord(StepRecord):
    kind: Literal["fetch"] = "fetch"
    format: str = Field(description="The working model's format: bundle, torchscript, onnx.")
    inputs: list[str] = Field(description="The model's input names, in order.")
    eval_rows: int
    lineage_inputs: dict[str, LineageInput] = Field(
        description="What was read: `model`, `data.eval`, … with uri and sha256.")
    decision_data: DecisionData | None = Field(
        default=None, description="The validation split every decision reads; None: no "
                                  "decision reads data.")


class PruneRecord(LossyRecord):
    kind: Literal["prune"] = "prune"
    parameters_before: int
    parameters: int
    nonzero_parameters: int
    parameter_reduction: float = Field(description=(
        "What the prune removed: 1 - parameters / parameters before when structured, "
        "1 - nonzero parameters / parameters before when not."))
    strategy: str | None = Field(
        default=None, description="Structured: what was removed (heads+ffn-neurons, channels).")
    removed_heads: int | None = Field(default=None, description="Attention heads, all iterations.")
    removed_head_ratio: float | None = Field(default=None, description="Of all heads.")
    removed_neurons: int | None = Field(default=None, description="FFN neurons, all iterations.")
    removed_neuron_ratio: float | None = Field(default=None, description="Of all FFN neurons.")
    removed_channels: int | None = Field(default=None,
                                         description="Channels and neurons, all iterations.")
    removed_channel_ratio: float | None = Field(
        default=None, description="Of all channels and neurons but the output layer's.")


class DistillRecord(LossyRecord):
    kind: Literal["distill"] = "distill"
    epochs: int
    student: str
    kept: Literal["kd", "labels-only"]
    final_loss: float | None = None
    holdout_accuracy_kd: float | None = None
    holdout_accuracy_labels_only: float | None = None
    holdout_rows: int | None = None


class DecomposeRecord(LossyRecord):
    kind: Literal["decompose"] = "decompose"
    replaced_layers: int
    parameters_before: int
    parameters: int


class QuantizeRecord(LossyRecord):
    kind: Literal["quantize"] = "quantize"
    mode: str
    size_bytes: int
    candidates: list[Candidate] = Field(default_factory=list,
                                        description="mode auto, or a recipe with a bar.")
    sensitivity: list[SensitivityEntry] = Field(
        default_factory=list, description="The recipe's per-node cost, when a bar was missed.")


class MeasuredModel(Model):
    """One model as validate saw it: file size, weight counts and every task metric."""

    size_bytes: int
    parameters: int
    nonzero_parameters: int
    metrics: dict[str, float] = Field(description="The headline metric first.")


class ValidateRecord(StepRecord):
    kind: Literal["validate"] = "validate"
    metric_name: str
    baseline: MeasuredModel
    compressed: MeasuredModel
    text_generation: TextGenerationFigures | None = Field(
        default=None, description="text-generation: perplexities, agreement, generations.")
    drop_intervals: list[DropInterval] = Field(
        default_factory=list, description="accuracyDrop's paired-bootstrap intervals over the "
                                          "eval rows, one per confidence level.")

    @property
    def accuracy_drop(self) -> float:
        name = self.metric_name
        return self.baseline.metrics[name] - self.compressed.metrics[name]


class BenchmarkRecord(StepRecord):
    kind: Literal["benchmark"] = "benchmark"
    benchmark: PoolBenchmark


class SelectRecord(StepRecord):
    kind: Literal["select"] = "select"
    candidates: list[Candidate]
    chosen: str | None = Field(default=None, description="None: the original model is kept.")


class Artifacts(Model):
    """Where the report published each artifact."""

    model: str
    baseline: str = Field(description="The fp32 ONNX every ratio and speedup is measured "
                                      "against.")
    report: str
    results: str
    lineage: str
    report_url: str | None = Field(default=None, description="A presigned link (S3 only).")


class PromotionVerdict(Model):
    """The promotion gates judged on the results (modelpress.gates.judge)."""

    decision: Literal["Promoted", "Rejected"]
    reasons: list[str] = Field(description="Every failed gate when rejected; what passed "
                                           "otherwise.")


class CandidateRecord(StepRecord):
    """A verification run's model: the files the operator staged, each checked against the
    sha256 it computed while staging them (docs/verification.md)."""

    kind: Literal["candidate"] = "candidate"
    uri: str
    sha256: dict[str, str]


class ReportRecord(StepRecord):
    kind: Literal["report"] = "report"
    artifacts: Artifacts
    promotion: PromotionVerdict
    sha256: dict[str, str] = Field(
        default_factory=dict,
        description="sha256 of each file published, by name (results.json included): the "
                    "run's record of what it wrote, which the operator holds the output to.")


LedgerRecord = Annotated[
    FetchRecord | PruneRecord | DistillRecord | DecomposeRecord | QuantizeRecord
    | ValidateRecord | BenchmarkRecord | SelectRecord | CandidateRecord | ReportRecord,
    Field(discriminator="kind")]
Ledger = list[LedgerRecord]
_LEDGER: TypeAdapter[Ledger] = TypeAdapter(Ledger)
# The records of steps that change the model (what lineage names as its producer).
MODEL_CHANGING = (PruneRecord, DistillRecord, DecomposeRecord, QuantizeRecord, SelectRecord,
                  CandidateRecord)
R = TypeVar("R", bound=StepRecord)


def write_ledger(ledger: Sequence[StepRecord], path: Path) -> None:
    """The one writer of a ledger file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_LEDGER.dump_json(list(ledger), by_alias=True,  # type: ignore[arg-type]
                                       exclude_none=True, indent=2))


def read_ledger(path: Path) -> Ledger:
    """The one reader of a ledger file."""
    try:
        return _LEDGER.validate_json(path.read_bytes())
    except ValidationError as error:
        raise StoreError(f"{path} is not a modelpress step ledger: {first_problem(error)}"
                         ) from None


def records_of(ledger: Sequence[StepRecord], kind: type[R]) -> list[R]:
    """The ledger's records of one kind, in order."""
    return [record for record in ledger if isinstance(record, kind)]


def last_of(ledger: Sequence[StepRecord], kind: type[R]) -> R:
    """The latest record of `kind`; an error naming the kind when no step recorded one."""
    found = records_of(ledger, kind)
    if not found:
        raise StoreError(f"the step ledger has no {kind.__name__} (a step is missing)")
    return found[-1]


class LatencyProbe(Model):
    """How candidates (auto-quantization recipes, search values) are timed against each
    other: one batch size and thread count, fixed when the pipeline is built."""

    batch_size: int = Field(ge=1)
    threads: int = Field(ge=1)


class ResultsDocument(Model):
    """results.json: the figures, where the artifacts are, each step's time, the verdict."""

    results: Results
    artifacts: Artifacts
    steps: list[StepStatus]
    promotion: PromotionVerdict

    @property
    def compute_seconds(self) -> float:
        """The steps' own compute time, added up (what orchestration overhead is net of)."""
        return sum(step.duration_seconds or 0.0 for step in self.steps)


def write_results_document(document: ResultsDocument, path: Path) -> Path:
    """The one writer of results.json."""
    path.write_text(document.model_dump_json(by_alias=True, exclude_none=True, indent=2),
                    encoding="utf-8")
    return path


def read_results_document(location: str) -> ResultsDocument:
    """results.json from a run's output (a folder, file:// or s3:// uri): StoreError when it
    is missing or is not a results document."""
    return read_results_with_digest(location)[0]


def read_results_with_digest(location: str) -> tuple[ResultsDocument, str]:
    """`read_results_document`, and the sha256 of the very bytes it parsed (what the operator
    compares with the run's own record)."""
    store = open_store(location)
    with tempfile.TemporaryDirectory(prefix="modelpress-results-") as scratch:
        data = store.get_file(RESULTS, Path(scratch) / RESULTS).read_bytes()
    return _results_document(data, store.uri(RESULTS)), hashlib.sha256(data).hexdigest()


def _results_document(data: bytes, where: str) -> ResultsDocument:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"{where} is not a modelpress results document: not UTF-8") from None
    try:
        return ResultsDocument.model_validate_json(text)
    except ValidationError as error:
        raise StoreError(f"{where} is not a modelpress results document: "
                         f"{first_problem(error)}") from None
