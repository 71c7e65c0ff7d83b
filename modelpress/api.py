"""The CompressionJob resource: the single source of truth for the CRD, CLI and pipeline.

Field names are snake_case in Python and camelCase on the wire (YAML, JSON, Kubernetes).
Unknown fields are errors everywhere, so a typo never silently does nothing.
"""

from __future__ import annotations

import itertools
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasGenerator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_GROUP = "modelpress.io"
API_VERSION = "v1alpha1"
KIND = "CompressionJob"

# No whitespace or control characters: a uri never spans lines or smuggles headers. No
# userinfo either (no "@" before the path): credentials never ride in a spec, where every
# status, Event, log line and compiled pipeline would repeat them.
_URI_CHARACTER = r"[^\s\x00-\x1f\x7f]"
_URI_AUTHORITY = r"[^\s\x00-\x1f\x7f/?#@]"
_URI_PATTERN = (rf"^(s3|https?|file|builtin|hf)://({_URI_AUTHORITY}+([/?#]{_URI_CHARACTER}*)?"
                rf"|[/?#]{_URI_CHARACTER}*)$")
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@")
# A promotion condition's size: each bracket and ?: conditional is a level of recursion
# when cel-python evaluates it (its cost is bounded apart, in modelpress.gates).
MAX_CONDITION_LENGTH = 1024
MAX_CONDITION_NESTING = 32


class Model(BaseModel):
    """Base: camelCase aliases, unknown fields forbidden, populate by either name."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
    )

    def to_wire(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


CREDENTIALS_REFUSED = ("a uri may not hold credentials (user:password@ or user@); give them "
                       "to the platform as a Secret or environment variables")


def holds_credentials(uri: str) -> bool:
    """Whether `uri` carries userinfo (`user:password@`, `user@`) in any scheme."""
    return _USERINFO.match(uri) is not None


def _without_credentials(value: object) -> object:
    """Refuse userinfo before the pattern says so less clearly; the message never repeats
    the uri, which holds the secret."""
    if isinstance(value, str) and holds_credentials(value):
        raise ValueError(CREDENTIALS_REFUSED)
    return value


Uri = Annotated[str, Field(pattern=_URI_PATTERN, max_length=2048),
                BeforeValidator(_without_credentials)]
PoolName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
# A Kubernetes Secret's name: a DNS-1123 subdomain.
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DEFAULT_STORAGE_SECRET = "modelpress-storage"
# The Secret, in the platform's namespace, with the platform's storage credentials:
# what verification runs use (docs/verification.md).
DEFAULT_PLATFORM_STORAGE_SECRET = "modelpress-platform-storage"


# What a model is for. `classification` covers text and image classifiers alike; the
# specific names say the same for users who think of Hugging Face pipelines.
Task = Literal["classification", "text-classification", "image-classification", "embedding",
               "text-generation"]
CLASSIFICATION_TASKS = ("classification", "text-classification", "image-classification")
TEXT_GENERATION: Literal["text-generation"] = "text-generation"
OutputKind = Literal["classification", "embedding", "text-generation"]


def output_kind(task: str) -> OutputKind:
    """What the model's output is judged as: class logits, an embedding, or next tokens."""
    if task == TEXT_GENERATION:
        return TEXT_GENERATION
    return "classification" if task in CLASSIFICATION_TASKS else "embedding"


class ModelSource(Model):
    uri: Uri = Field(description="Where the trained model comes from: a file, or a Hugging "
                                 "Face model folder (a uri ending in /).")
    format: Literal["torch", "onnx", "hf"] | None = Field(
        default=None, description="torch | onnx | hf; default: from the uri (a folder is hf, "
                                  ".onnx is onnx, a torch or .safetensors file is torch)."
    )
    task: Task = "classification"
    architecture: str | None = Field(
        default=None,
        pattern=r"^(builtin://[a-z0-9-]+|python://[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="For a state_dict (.pt/.pth/.bin/.safetensors): builtin://NAME or "
                    "python://module:factory.",
    )

    @property
    def kind(self) -> OutputKind:
        return output_kind(self.task)


# The fields of DataSources that name datasets (the others say how to read them).
DATASET_FIELDS = ("eval", "validation", "calibration", "train", "prompts")


class DataSources(Model):
    eval: Uri = Field(description="Held-out data the metric is measured on.")
    validation: Uri | None = Field(
        default=None, description="Data every decision is made on (auto quantization, search, "
                                  "distillation's pick); default: a seeded 20% of data.train, "
                                  "else of data.calibration (docs/evaluation.md).")
    calibration: Uri | None = Field(default=None, description="For static quantization.")
    train: Uri | None = Field(default=None, description="For fine-tuning and distillation.")
    prompts: Uri | None = Field(
        default=None, description="text-generation: prompts for the greedy generation check "
                                  "(.jsonl with `prompt`, or chat `messages`; .txt one a line); "
                                  "default: the first words of data.eval's first texts.")
    text_column: str = Field(default="text", min_length=1, max_length=128,
                             description="Tabular and .jsonl data: the column holding text.")
    label_column: str = Field(default="label", min_length=1, max_length=128,
                              description="Tabular and .jsonl data: the column holding labels "
                                          "(class indices, or names from the model's id2label).")
    max_eval_rows: int | None = Field(
        default=None, ge=1, le=10_000_000,
        description="Evaluate on a seeded random sample of this many rows (stated in results).")

    def sources(self) -> dict[str, str]:
        """Each named dataset's uri, by field name (eval first)."""
        return {name: uri for name in DATASET_FIELDS
                if (uri := getattr(self, name)) is not None}


class PruneSchedule(Model):
    iterations: int = Field(default=1, ge=1, le=100)
    fine_tune_epochs: int = Field(default=0, ge=0, le=1000)


class PruneStep(Model):
    method: Literal["magnitude"] = "magnitude"
    structured: bool = Field(
        default=False,
        description="Remove whole channels, attention heads and FFN neurons (smaller, "
                    "faster), not single weights; docs/pruning.md says what sparsity removes.",
    )
    sparsity: float = Field(default=0.5, ge=0.0, lt=1.0)
    scope: Literal["global", "layer"] = "global"
    schedule: PruneSchedule = Field(default_factory=PruneSchedule)


class DistillStep(Model):
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    alpha: float = Field(default=0.7, ge=0.0, le=1.0)
    epochs: int = Field(default=3, ge=0, le=1000)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    student: str | None = Field(
        default=None, pattern=r"^(builtin://[a-z0-9-]+|python://[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="Train this architecture from scratch as the student (builtin://NAME or "
                    "python://module:factory) instead of the current model.")


class DecomposeStep(Model):
    energy: float = Field(default=0.9, gt=0.0, le=1.0,
                          description="Kept fraction of the squared singular values.")
    rank_ratio: float | None = Field(default=None, gt=0.0, le=1.0,
                                     description="Kept fraction of the rank; overrides energy.")


# text-generation only: the weight-only recipe of an onnxruntime-genai folder (docs/llm.md).
LLM_QUANTIZE_MODES = ("int4", "int8", "fp32")
LLM_QUANTIZE_FIELDS = ("algorithm", "block_size", "symmetric", "accuracy_level", "embeddings",
                       "lm_head", "layer_overrides", "max_perplexity_increase")
LlmPrecision = Literal["fp32", "int8", "int4"]


class LayerPrecision(Model):
    """text-generation: decoder layers whose weights keep another precision than the body."""

    layers: list[Annotated[int, Field(ge=0, le=4096)]] = Field(min_length=1, max_length=4096)
    weights: LlmPrecision


class QuantizeStep(Model):
    mode: Literal["dynamic", "static", "fp16", "qat", "auto", "int4", "int8", "fp32"] = Field(
        default="dynamic",
        description="dynamic | static | fp16 | qat | auto; text-generation: int4 | int8 "
                    "(weight-only) | fp32 (reference) | auto.")
    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = True
    reduce_range: bool = Field(
        default=False, description="dynamic/static: 7-bit weights, so that x86 CPUs without "
                                   "VNNI do not saturate uint8 x int8 products (less precise).")
    epochs: int = Field(default=2, ge=1, le=1000, description="qat: fine-tuning epochs.")
    learning_rate: float = Field(default=1e-4, gt=0.0, le=1.0,
                                 description="qat: fine-tuning learning rate.")
    max_accuracy_drop: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="auto: the fidelity bar; default promotion.gates.maxAccuracyDrop, else 0.01 "
                    "(text-generation: 0.10 on 1 - top-1 agreement). dynamic/static: when "
                    "given, the most sensitive nodes stay fp32 until the bar is met.",
    )
    algorithm: Literal["rtn", "k_quant", "hqq", "gptq"] | None = Field(
        default=None, description="text-generation int4: rtn (default) | k_quant | hqq | gptq "
                                  "(gptq needs data.calibration).")
    block_size: Literal[16, 32, 64, 128, 256] | None = Field(
        default=None, description="text-generation: weights per quantization block (32).")
    symmetric: bool | None = Field(default=None,
                                   description="text-generation: symmetric blocks (true).")
    accuracy_level: int | None = Field(
        default=None, ge=0, le=4,
        description="text-generation: MatMulNBits compute type, 4 = int8 activations (4).")
    embeddings: LlmPrecision | None = Field(
        default=None, description="text-generation: the token embedding's precision (fp32).")
    lm_head: LlmPrecision | None = Field(
        default=None, description="text-generation: the output projection's precision (fp32).")
    layer_overrides: list[LayerPrecision] | None = Field(
        default=None, max_length=64,
        description="text-generation: per-layer precision, e.g. [{layers: [0, 29], weights: "
                    "int8}].")
    max_perplexity_increase: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="text-generation auto: the relative perplexity bar; default "
                    "promotion.gates.maxPerplexityIncrease, else 0.05.")

    def llm_fields_set(self) -> list[str]:
        """The text-generation fields this step sets (camelCase, as the user wrote them)."""
        return [to_camel(name) for name in LLM_QUANTIZE_FIELDS if getattr(self, name) is not None]


class Step(Model):
    """One compression step: exactly one of its keys is set, e.g. `{prune: {...}}`."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1, "maxProperties": 1})

    prune: PruneStep | None = None
    distill: DistillStep | None = None
    decompose: DecomposeStep | None = None
    quantize: QuantizeStep | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        chosen = [name for name in STEP_KINDS if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "each step needs exactly one of prune, distill, decompose, quantize; "
                f"got {chosen or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(name for name in STEP_KINDS if getattr(self, name) is not None)

    @property
    def options(self) -> Model:
        return getattr(self, self.kind)


# Step's keys, read once: pydantic 2.14's `model_fields` builds its answer on every access
# (7 µs), and every spec validation asks each step its kind.
STEP_KINDS = tuple(Step.model_fields)

_SEARCH_PARAMETER = r"^steps\[\d+\]\.(prune|distill|decompose|quantize)\.[a-zA-Z]+$"
SearchValue = float | int | str | bool
# The most trials one search runs, and the most combinations of values its checks try.
MAX_SEARCH_TRIALS = 256
MAX_SEARCH_COMBINATIONS = 1024


class SearchParameter(Model):
    """One searched option: a grid of values, or a range (low..high) that sampler tpe draws
    from (an integer option draws integers)."""

    parameter: str = Field(pattern=_SEARCH_PARAMETER, description="e.g. steps[0].prune.sparsity")
    values: list[SearchValue] | None = Field(default=None, min_length=1, max_length=32)
    low: float | None = Field(default=None, description="A range's least value (sampler tpe).")
    high: float | None = Field(default=None, description="A range's greatest value.")
    log: bool = Field(default=False, description="Draw a range on a log scale.")

    @model_validator(mode="after")
    def _values_or_range(self) -> SearchParameter:
        ranged = self.low is not None or self.high is not None
        if (self.values is not None) == ranged:
            raise ValueError("give either values or a range (low and high)")
        if ranged and (self.low is None or self.high is None or self.low >= self.high):
            raise ValueError("a range needs low < high")
        if self.log and (not ranged or (self.low or 0.0) <= 0.0):
            raise ValueError("log needs a range with low > 0")
        return self

    @property
    def target(self) -> tuple[int, str]:
        """(position in spec.steps, option field) this parameter sets."""
        match = re.match(r"^steps\[(\d+)\]\.\w+\.(\w+)$", self.parameter)
        assert match  # guaranteed by the field pattern
        return int(match[1]), match[2]

    @property
    def checked_values(self) -> list[SearchValue]:
        """The values the spec's checks try: every grid value, or a range's two ends."""
        return list(self.values) if self.values is not None else [self.low, self.high]  # type: ignore[list-item]


class Search(Model):
    """Trials of the job's steps with searched options; the best within the bar is kept."""

    parameter: str | None = Field(default=None, pattern=_SEARCH_PARAMETER,
                                  description="Shorthand for one parameter with its values.")
    values: list[SearchValue] | None = Field(default=None, min_length=1, max_length=32)
    parameters: list[SearchParameter] = Field(default_factory=list, max_length=4)
    sampler: Literal["grid", "tpe"] = Field(
        default="grid", description="grid: every combination of values, in order; tpe: "
                                    "optuna's seeded TPE sampler, one trial after another.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="The tpe sampler's seed.")
    max_trials: int | None = Field(default=None, ge=1, le=MAX_SEARCH_TRIALS)
    time_budget_seconds: int | None = Field(
        default=None, ge=1, le=604800,
        description="No trial starts after this long; the best so far is kept.")
    max_accuracy_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    objective: Literal["size", "latency"] = "size"

    @model_validator(mode="after")
    def _a_searchable_space(self) -> Search:
        shorthand = self.parameter is not None or self.values is not None
        if shorthand and self.parameters:
            raise ValueError("give parameter and values, or parameters, not both")
        if shorthand and (self.parameter is None or self.values is None):
            raise ValueError("parameter and values go together")
        if not shorthand and not self.parameters:
            raise ValueError("name what to search: parameter and values, or parameters")
        paths = [searched.parameter for searched in self.searched]
        if len(set(paths)) != len(paths):
            raise ValueError(f"parameters: each parameter at most once, got {paths}")
        for position, searched in enumerate(self.searched):
            if self.sampler == "grid" and searched.values is None:
                raise ValueError(f"parameters[{position}]: the grid sampler needs values (a "
                                 "range, low and high, is for sampler tpe)")
        if self.combinations() > MAX_SEARCH_COMBINATIONS:
            raise ValueError(f"{self.combinations()} combinations of values; at most "
                             f"{MAX_SEARCH_COMBINATIONS}")
        if self.sampler == "grid" and self.max_trials is None \
                and self.combinations() > MAX_SEARCH_TRIALS:
            raise ValueError(f"the grid has {self.combinations()} trials; at most "
                             f"{MAX_SEARCH_TRIALS} (set maxTrials or give fewer values)")
        if self.sampler == "tpe" and self.max_trials is None and self.time_budget_seconds is None:
            raise ValueError("maxTrials: the tpe sampler needs maxTrials or "
                             "timeBudgetSeconds")
        return self

    @property
    def searched(self) -> list[SearchParameter]:
        """Every searched parameter (the shorthand as a one-parameter list)."""
        if self.parameter is not None and self.values is not None:
            return [SearchParameter(parameter=self.parameter, values=self.values)]
        return self.parameters

    def where(self, position: int) -> str:
        """How messages name the `position`-th searched parameter."""
        return "search" if self.parameter is not None else f"search.parameters[{position}]"

    def combinations(self) -> int:
        """How many combinations of the values the spec's checks try (a range counts 2)."""
        count = 1
        for searched in self.searched:
            count *= len(searched.checked_values)
        return count


class Toleration(Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class Accelerator(Model):
    type: str = Field(default="nvidia.com/gpu", min_length=1)
    count: int = Field(default=1, ge=1, le=16)


class Pool(Model):
    name: PoolName
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(default=1, ge=1, le=256, description="Intra-op threads, both models.")
    accelerator: Accelerator | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


def _default_pools() -> list[Pool]:
    return [Pool(name="cpu", device="cpu")]


class Benchmark(Model):
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 32], min_length=1, max_length=16
    )
    iterations: int = Field(default=50, ge=5, le=100000)
    warmup: int = Field(default=5, ge=0, le=10000)
    pools: list[Pool] = Field(default_factory=_default_pools, min_length=1, max_length=16)

    @field_validator("pools")
    @classmethod
    def _unique_pool_names(cls, pools: list[Pool]) -> list[Pool]:
        names = [pool.name for pool in pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        return pools


class Gates(Model):
    min_compression_ratio: float | None = Field(default=None, ge=0.0)
    max_accuracy_drop: float | None = Field(default=None, ge=0.0, le=1.0)
    max_perplexity_increase: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="text-generation: the most compressed perplexity / baseline perplexity - 1.")
    min_speedup: dict[PoolName, float] = Field(default_factory=dict,
                                              description="Pool name -> least speedup.")
    confidence: Literal[0.8, 0.9, 0.95, 0.99] | None = Field(
        default=None, description="maxAccuracyDrop must hold for the upper bound of "
                                  "accuracyDrop's interval at this confidence, not only for "
                                  "the measured drop.")

    @model_validator(mode="after")
    def _confidence_needs_a_bar(self) -> Gates:
        if self.confidence is not None and self.max_accuracy_drop is None:
            raise ValueError("confidence bounds accuracyDrop: set maxAccuracyDrop too")
        return self


class Registry(Model):
    """A model registry the promoted model is registered in, as a new version of `model`
    whose `alias` moves to it only when every gate passes (docs/registry.md)."""

    kind: Literal["mlflow"] = Field(
        default="mlflow", description="mlflow: the server MLFLOW_TRACKING_URI names.")
    model: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=255,
        description="The registered model (created when absent); the operator allows only "
                    "names of the job's namespace (MODELPRESS_REGISTRY_MODELS).")
    alias: str = Field(default="challenger", pattern=r"^[A-Za-z0-9_-]+$", max_length=255,
                       description="The alias moved to the new version (not latest or vN).")

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, alias: str) -> str:
        if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
            raise ValueError(f"{alias!r} is reserved by the registry (latest, v<number>)")
        return alias


class Canary(Model):
    """How a promoted model reaches the KServe InferenceService a job names: first as a canary
    with part of the traffic, then, by editing `action`, to all of it or back out
    (docs/kserve-canary.md)."""

    traffic_percent: int = Field(
        default=10, ge=1, le=99,
        description="The share of requests the new model gets while it is a canary.")
    action: Literal["promote", "rollback"] | None = Field(
        default=None, description="promote: the new model takes all traffic; rollback: the "
                                  "InferenceService serves its previous model again. Unset: "
                                  "the canary keeps trafficPercent.")


class Promotion(Model):
    gates: Gates = Field(default_factory=Gates)
    condition: str | None = Field(default=None, max_length=MAX_CONDITION_LENGTH)
    target: Uri | None = None
    registry: Registry | None = None
    canary: Canary | None = None

    @field_validator("condition")
    @classmethod
    def _shallow_condition(cls, condition: str | None) -> str | None:
        if condition is None:
            return None
        brackets, conditionals = _cel_nesting(condition)
        if brackets > MAX_CONDITION_NESTING:
            raise ValueError(f"parentheses, brackets and braces nest {brackets} deep; "
                             f"at most {MAX_CONDITION_NESTING}")
        if conditionals > MAX_CONDITION_NESTING:
            raise ValueError(f"{conditionals} ?: conditionals; at most {MAX_CONDITION_NESTING}")
        return condition


def _cel_nesting(condition: str) -> tuple[int, int]:
    """(deepest bracket nesting, number of ?: conditionals) of a CEL expression, string
    literals skipped. The count of conditionals bounds how deeply they can nest."""
    depth = deepest = conditionals = 0
    quote: str | None = None
    position = 0
    while position < len(condition):
        character = condition[position]
        if quote is not None:
            if character == "\\":
                position += 1  # the escaped character cannot close the literal
            elif condition.startswith(quote, position):
                position += len(quote) - 1
                quote = None
        elif character in "'\"":
            quote = character * 3 if condition.startswith(character * 3, position) else character
            position += len(quote) - 1
        elif character in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif character in ")]}":
            depth -= 1
        elif character == "?":
            conditionals += 1
        position += 1
    return deepest, conditionals


class Storage(Model):
    """The artifact store's credentials of a job's steps."""

    secret_name: str | None = Field(
        default=None, pattern=SECRET_NAME_PATTERN, max_length=253,
        description="A Secret in the job's own namespace holding AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, which the steps read. Default: the operator's "
                    "MODELPRESS_STORAGE_SECRET_NAME (modelpress-storage).")


class CompressionSpec(Model):
    model: ModelSource
    image: str = Field(default="", max_length=512,
                       description="The step image; must be in the operator's allowlist.")
    data: DataSources
    steps: list[Step] = Field(min_length=1, max_length=16)
    search: Search | None = None
    benchmark: Benchmark = Field(default_factory=Benchmark)
    promotion: Promotion = Field(default_factory=Promotion)
    output: Uri | None = None
    deadline_seconds: int | None = Field(
        default=None, ge=60, le=604800,
        description="The longest a run may take, from its start; the operator terminates it "
                    "then and the job fails (DeadlineExceeded). Capped by the operator.")
    storage: Storage | None = None

    @model_validator(mode="after")
    def _steps_fit_together(self) -> CompressionSpec:
        kinds = [step.kind for step in self.steps]
        every_options = [step.options for step in self.steps]
        for index, (kind, options) in enumerate(zip(kinds, every_options, strict=True)):
            if kind == "quantize" and index != len(kinds) - 1:
                raise ValueError(f"steps[{index}]: quantize must be the last step (later steps "
                                 "need a torch model)")
            if isinstance(options, QuantizeStep) and options.mode == "static" \
                    and self.data.calibration is None:
                raise ValueError(f"steps[{index}]: static quantization needs data.calibration")
            reshaped_before = any(isinstance(earlier, DecomposeStep) or (
                isinstance(earlier, PruneStep) and earlier.structured)
                for earlier in every_options[:index])
            if kind == "decompose" and reshaped_before:
                raise ValueError(f"steps[{index}]: decompose must come before any structured "
                                 "prune or other decompose step")
            trains = kind == "distill" or (
                isinstance(options, QuantizeStep) and options.mode == "qat") or (
                isinstance(options, PruneStep) and options.schedule.fine_tune_epochs > 0)
            if trains and self.data.train is None:
                raise ValueError(f"steps[{index}]: {kind} trains, so it needs data.train")
        return self

    @model_validator(mode="after")
    def _search_points_at_a_step(self) -> CompressionSpec:
        for position, searched in enumerate(self.search.searched if self.search else []):
            assert self.search is not None
            self._check_searched(searched, self.search.where(position))
        return self

    def _check_searched(self, searched: SearchParameter, where: str) -> None:
        index, field = searched.target
        kind = searched.parameter.split(".")[1]
        if index >= len(self.steps) or self.steps[index].kind != kind:
            raise ValueError(f"{where}.parameter: {searched.parameter!r} names no such step")
        options = type(self.steps[index].options)
        known = {info.alias or name for name, info in options.model_fields.items()}
        if field not in known:
            raise ValueError(f"{where}.parameter: {kind} has no field {field!r}")
        current = self.steps[index].options.to_wire()
        labels = [f"values[{i}]" for i in range(len(searched.values))] \
            if searched.values is not None else ["low", "high"]
        for label, value in zip(labels, searched.checked_values, strict=True):
            try:
                options.model_validate({**current, field: value})
            except ValidationError as error:
                problem = error.errors()[0]["msg"]
                raise ValueError(f"{where}.{label}: {problem}") from None

    @model_validator(mode="after")
    def _steps_fit_the_task(self) -> CompressionSpec:
        """text-generation takes only its own quantize modes and fields; other tasks never
        take them (each search candidate's options included, once the search is checked)."""
        generating = self.model.task == TEXT_GENERATION
        for index in range(len(self.steps)):
            for options in self.step_variants(index):
                problem = _llm_problem(options, generating)
                if problem:
                    raise ValueError(f"steps[{index}]: {problem}")
        if generating and self.search is not None:
            raise ValueError("search: text-generation searches with quantize mode auto, not "
                             "spec.search")
        if not generating and self.data.prompts is not None:
            raise ValueError("data.prompts: only text-generation reads prompts")
        if not generating and self.promotion.gates.max_perplexity_increase is not None:
            raise ValueError("promotion.gates.maxPerplexityIncrease: only text-generation has "
                             "a perplexity")
        return self

    def step_variants(self, index: int) -> list[Model]:
        """The options of `steps[index]` as the search may set them (every combination of
        its values, a range's two ends); the step's own options alone when no search sets
        them."""
        options = self.steps[index].options
        here = [p for p in (self.search.searched if self.search else []) if p.target[0] == index]
        if not here:
            return [options]
        fields = [searched.target[1] for searched in here]
        return [type(options).model_validate({**options.to_wire(), **dict(zip(fields, values,
                                                                              strict=True))})
                for values in itertools.product(*(p.checked_values for p in here))]


def _llm_problem(options: Model, generating: bool) -> str | None:
    """Why a step's options do not fit the task (text-generation or not), or None."""
    if not isinstance(options, QuantizeStep):
        return (f"{type(options).__name__.removesuffix('Step').lower()} does not apply to "
                "text-generation; quantize with mode int4, int8, fp32 or auto"
                if generating else None)
    llm_mode = options.mode in LLM_QUANTIZE_MODES
    if generating and not (llm_mode or options.mode == "auto"):
        return (f"quantize mode {options.mode} does not apply to text-generation; use int4, "
                "int8 (weight-only), fp32 or auto")
    if not generating and llm_mode:
        return f"quantize mode {options.mode} is for text-generation models only"
    if not generating and options.llm_fields_set():
        return (f"quantize.{options.llm_fields_set()[0]} is for text-generation models only")
    recipe = [name for name in options.llm_fields_set() if name != "maxPerplexityIncrease"]
    if generating and options.mode in ("auto", "fp32") and recipe:
        return (f"quantize.{recipe[0]}: mode {options.mode} takes no recipe fields (auto "
                "chooses the recipe; fp32 quantizes nothing); set mode int4 or int8")
    return None


class ObjectMeta(Model):
    """The subset of Kubernetes metadata a job file carries; the rest is the server's."""

    model_config = ConfigDict(extra="allow", alias_generator=None)

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=dict)


# ---------------------------------------------------------------------------- status


class MetricValue(Model):
    name: str
    value: float


class Latency(Model):
    p50: float
    p95: float


class ModelFigures(Model):
    size_bytes: int
    parameters: int
    nonzero_parameters: int | None = None
    metric: MetricValue
    extra_metrics: dict[str, float] = Field(default_factory=dict)
    latency_ms: dict[str, Latency] = Field(
        default_factory=dict, description="Per pool at the largest batch size."
    )
    tokens_per_second: dict[str, float] = Field(
        default_factory=dict, description="text-generation: decode tokens/s per pool.")


class LlmPoolFigures(Model):
    """text-generation on one pool: both models in onnxruntime-genai, same provider, threads
    and prompt tokens, measured in alternating rounds (p50 over the rounds)."""

    prefill_ms: dict[str, dict[str, float]] = Field(
        description="prompt tokens -> {baseline, compressed} p50 prefill latency.")
    decode_tokens_per_second: dict[str, float] = Field(
        description="{baseline, compressed}: decode with the KV cache.")
    peak_rss_bytes: dict[str, int] = Field(
        description="{baseline, compressed}: peak resident memory of a process running it.")
    decode_speedup: float
    prefill_speedup: dict[str, float] = Field(default_factory=dict)
    rounds: int


class PoolBenchmark(Model):
    """One pool's measurement of both models at each batch size, same runtime and threads."""

    pool: str
    device: str
    available: bool
    reason: str | None = None
    threads: int | None = None
    provider: str | None = None
    batches: dict[str, dict[str, Latency]] = Field(
        default_factory=dict, description="batch size -> {baseline, compressed}"
    )
    speedup: dict[str, float] = Field(default_factory=dict, description="batch size -> speedup")
    text_generation: LlmPoolFigures | None = None


class Candidate(Model):
    """One measured alternative (an auto-quantization recipe or a search value)."""

    name: str
    accuracy_drop: float | None = None
    size_bytes: int | None = None
    latency_ms: float | None = Field(default=None, description="p50 at the measured batch.")
    perplexity_increase: float | None = Field(default=None, description="text-generation.")
    tokens_per_second: float | None = Field(default=None,
                                            description="text-generation: decode tokens/s.")
    fp32_nodes: list[str] = Field(
        default_factory=list, description="Mixed precision: the graph nodes this candidate "
                                          "kept in fp32 (none: the whole recipe).")
    reduced_range_nodes: list[str] = Field(
        default_factory=list, description="Mixed precision: the graph nodes whose weights this "
                                          "candidate quantized to 7 bits (reduceRange).")
    chosen: bool = False
    reason: str = ""


class SensitivityEntry(Model):
    """What quantizing one node (or one group of consecutive nodes) costs: the accuracy
    drop of its recipe with only that node quantized (docs/quantization.md)."""

    node: str = Field(description="The node's name; a group's first and last node's.")
    op_type: str = Field(description="MatMul, Gemm or Conv (a group's first node's).")
    nodes: list[str] = Field(min_length=1, description="The graph nodes this entry stands "
                                                       "for: one, unless grouped.")
    recipe: str = Field(description="The quantization recipe whose nodes were ranked.")
    accuracy_drop: float = Field(description="The accuracy drop with only this node quantized "
                                             "(sampled decision rows).")
    output_error: float = Field(description="The outputs' relative squared error to the "
                                            "original's then (breaks a coarse metric's ties).")
    rank: int = Field(ge=1, description="1: the most harmful node to quantize.")


class Generation(Model):
    """One held-out prompt's greedy continuation by both models, token by token."""

    prompt: str
    baseline_tokens: list[str] = Field(description="Each new token as text.")
    compressed_tokens: list[str]
    first_divergence: int | None = Field(
        default=None, description="Index of the first new token that differs; none: equal.")


class TextGenerationFigures(Model):
    """text-generation quality on the held-out eval text (accuracyDrop = 1 - top1Agreement)."""

    baseline_perplexity: float
    compressed_perplexity: float
    top1_agreement: float
    scored_tokens: int
    generations: list[Generation] = Field(default_factory=list)


class RegisteredVersion(Model):
    """The registry version a promotion registered and the alias it moved."""

    kind: Literal["mlflow"]
    model: str
    version: str
    alias: str
    previous_version: str | None = Field(
        default=None, description="The version the alias named before it moved; none: unset.")
    uri: str = Field(description="e.g. models:/NAME/VERSION.")
    run_id: str | None = Field(default=None, description="The registry run holding its files.")


class DropInterval(Model):
    """accuracyDrop's paired-bootstrap interval over the eval rows at one confidence."""

    confidence: float
    low: float
    high: float


class DecisionData(Model):
    """Which data decided (the validation split) and which reported (the eval set)."""

    source: Literal["data.validation", "data.train", "data.calibration", "data.eval"] = Field(
        description="Where the validation rows came from.")
    carved: bool = Field(description="Carved from `source` by modelpress; those rows left it.")
    seed: int | None = Field(default=None, description="The carving's seed.")
    rows: int = Field(description="Rows every decision was made on.")
    dropped_overlap: int = Field(default=0,
                                 description="Rows left out for being identical to eval rows.")
    eval_rows: int = Field(description="Rows the reported figures are measured on.")


class StepSpend(Model):
    """What one lossy step spent of the job's accuracy budget, measured on validation."""

    step: str
    cumulative_drop: float = Field(description="The model after this step vs the original.")
    spent: float = Field(description="This step's share: its cumulative drop minus the "
                                     "previous step's.")


class Results(Model):
    baseline: ModelFigures
    compressed: ModelFigures
    compression_ratio: float
    accuracy_drop: float
    perplexity_increase: float | None = Field(
        default=None, description="text-generation: compressed / baseline perplexity - 1.")
    text_generation: TextGenerationFigures | None = None
    speedup: dict[str, float] = Field(default_factory=dict)
    benchmarks: list[PoolBenchmark] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    sensitivity: list[SensitivityEntry] = Field(
        default_factory=list, description="Per-node cost of the quantization recipe, most "
                                          "harmful first (measured when a bar was missed).")
    accuracy_drop_interval: list[float] | None = Field(
        default=None, min_length=2, max_length=2,
        description="[low, high]: the 95% paired-bootstrap interval of accuracyDrop.")
    accuracy_drop_intervals: list[DropInterval] = Field(
        default_factory=list, description="The interval at each confidence gates.confidence "
                                          "may ask for.")
    decision_data: DecisionData | None = None
    budget: list[StepSpend] = Field(
        default_factory=list, description="Each lossy step's spend of the accuracy budget, in "
                                          "order (validation split).")
    registry: RegisteredVersion | None = Field(
        default=None, description="modelpress run: the registry version its promotion made "
                                  "(the operator's is in status.promotion.registry).")


class StepStatus(Model):
    name: str
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Skipped"]
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    message: str | None = None


class PromotionStatus(Model):
    decision: Literal["Promoted", "Rejected", "Pending"]
    reasons: list[str] = Field(default_factory=list)
    promoted_uri: str | None = None
    registry: RegisteredVersion | None = None
    canary_service: str | None = Field(
        default=None, description="The InferenceService (in the job's namespace) modelpress "
                                  "rolled the model out to.")
    canary_state: Literal["Canary", "Promoted", "RolledBack"] | None = Field(
        default=None, description="What modelpress last set on it: the new model as a canary, "
                                  "with all traffic, or the previous model back.")
    canary_uri: str | None = Field(default=None, description="The new model's storageUri.")
    canary_traffic_percent: int | None = Field(
        default=None, description="The share of traffic the canary was given.")
    stable_uri: str | None = Field(
        default=None, description="The storageUri the InferenceService served before: what a "
                                  "rollback restores.")
    model_sha256: str | None = Field(
        default=None, description="sha256 of the model the run produced, from the run's own "
                                  "record: the only bytes a promotion copies.")
    sha256: dict[str, str] = Field(
        default_factory=dict, description="sha256 of each promoted file (model.onnx, "
                                          "results.json, ...) as the run recorded it; a copy "
                                          "is refused when what it reads differs.")


class StagedCandidate(Model):
    """A run's model files as the operator copied them where only the platform writes, with
    the sha256 it computed of the very bytes it wrote (docs/verification.md)."""

    uri: str = Field(description="The platform's copy, under MODELPRESS_VERIFY_PREFIX.")
    sha256: dict[str, str] = Field(description="sha256 of each staged file, by name: the "
                                               "operator's own record, not the run's.")


class ReportedFigures(Model):
    """The headline figures a run reported itself (kept beside the verified ones)."""

    compression_ratio: float
    accuracy_drop: float
    speedup: dict[str, float] = Field(default_factory=dict)


class VerificationStatus(Model):
    """The platform's own measurement of a Kubeflow run's model: staged, re-measured by a
    run in the platform's namespace, judged on its figures (docs/verification.md)."""

    phase: Literal["Staged", "Running", "Succeeded", "Failed"]
    candidate: StagedCandidate
    output: str = Field(description="Where the verification run publishes its results.")
    run_id: str | None = None
    message: str | None = None
    reported: ReportedFigures | None = Field(
        default=None, description="What the job's own run reported, once the verified "
                                  "figures (status.results) replaced them.")


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: datetime


class CompressionStatus(Model):
    phase: Literal["Pending", "Running", "Succeeded", "Failed"] = "Pending"
    observed_generation: int | None = None
    backend: Literal["kfp", "local"] | None = None
    run_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    steps: list[StepStatus] = Field(default_factory=list)
    results: Results | None = None
    promotion: PromotionStatus | None = None
    verification: VerificationStatus | None = None
    artifacts: dict[str, str] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)


class CompressionJob(Model):
    api_version: Literal["modelpress.io/v1alpha1"]
    kind: Literal["CompressionJob"]
    metadata: ObjectMeta
    spec: CompressionSpec
    status: CompressionStatus | None = None
