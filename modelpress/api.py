"""The CompressionJob resource: the single source of truth for the CRD, CLI and pipeline.

Field names are snake_case in Python and camelCase on the wire (YAML, JSON, Kubernetes).
Unknown fields are errors everywhere, so a typo never silently does nothing.
"""

from __future__ import annotations

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
DATASET_FIELDS = ("eval", "calibration", "train", "prompts")


class DataSources(Model):
    eval: Uri = Field(description="Held-out data the metric is measured on.")
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
    epochs: int = Field(default=2, ge=1, le=1000, description="qat: fine-tuning epochs.")
    learning_rate: float = Field(default=1e-4, gt=0.0, le=1.0,
                                 description="qat: fine-tuning learning rate.")
    max_accuracy_drop: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="auto: the fidelity bar; default promotion.gates.maxAccuracyDrop, else 0.01 "
                    "(text-generation: 0.10 on 1 - top-1 agreement).",
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
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "each step needs exactly one of prune, distill, decompose, quantize; "
                f"got {chosen or 'none'}"
            )
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def options(self) -> Model:
        return getattr(self, self.kind)


_SEARCH_PARAMETER = r"^steps\[\d+\]\.(prune|distill|decompose|quantize)\.[a-zA-Z]+$"


class Search(Model):
    parameter: str = Field(pattern=_SEARCH_PARAMETER, description="e.g. steps[0].prune.sparsity")
    values: list[float | int | str | bool] = Field(min_length=1, max_length=32)
    max_accuracy_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    objective: Literal["size", "latency"] = "size"


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


class Promotion(Model):
    gates: Gates = Field(default_factory=Gates)
    condition: str | None = Field(default=None, max_length=MAX_CONDITION_LENGTH)
    target: Uri | None = None

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
        for index, kind in enumerate(kinds):
            if kind == "quantize" and index != len(kinds) - 1:
                raise ValueError(f"steps[{index}]: quantize must be the last step (later steps "
                                 "need a torch model)")
            options = self.steps[index].options
            if isinstance(options, QuantizeStep) and options.mode == "static" \
                    and self.data.calibration is None:
                raise ValueError(f"steps[{index}]: static quantization needs data.calibration")
            reshaped_before = any(k == "decompose" or (k == "prune" and self.steps[i].options
                                                        .structured)  # type: ignore[attr-defined]
                                  for i, k in enumerate(kinds[:index]))
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
        searched = self.searched_option()
        if searched is None:
            return self
        assert self.search is not None
        index, field = searched
        kind = self.search.parameter.split(".")[1]
        if index >= len(self.steps) or self.steps[index].kind != kind:
            raise ValueError(f"search.parameter {self.search.parameter!r} names no such step")
        options = type(self.steps[index].options)
        known = {info.alias or name for name, info in options.model_fields.items()}
        if field not in known:
            raise ValueError(f"search.parameter: {kind} has no field {field!r}")
        current = self.steps[index].options.to_wire()
        for position, value in enumerate(self.search.values):
            try:
                options.model_validate({**current, field: value})
            except ValidationError as error:
                problem = error.errors()[0]["msg"]
                raise ValueError(f"search.values[{position}]: {problem}") from None
        return self

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

    def searched_option(self) -> tuple[int, str] | None:
        """(position in `steps`, field) of the option a search sets; None without one."""
        if self.search is None:
            return None
        match = re.match(r"^steps\[(\d+)\]\.\w+\.(\w+)$", self.search.parameter)
        assert match  # guaranteed by the field pattern
        return int(match[1]), match[2]

    def step_variants(self, index: int) -> list[Model]:
        """The options of `steps[index]` as each search candidate sets them, in the order
        of `search.values`; the step's own options alone when the search is elsewhere."""
        options = self.steps[index].options
        searched = self.searched_option()
        if searched is None or searched[0] != index:
            return [options]
        assert self.search is not None
        return [type(options).model_validate({**options.to_wire(), searched[1]: value})
                for value in self.search.values]


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
    chosen: bool = False
    reason: str = ""


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
    model_sha256: str | None = Field(
        default=None, description="sha256 of the model the run produced, from the run's own "
                                  "record: the only bytes a promotion copies.")
    sha256: dict[str, str] = Field(
        default_factory=dict, description="sha256 of each promoted file (model.onnx, "
                                          "results.json, ...) as the run recorded it; a copy "
                                          "is refused when what it reads differs.")


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
    artifacts: dict[str, str] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)


class CompressionJob(Model):
    api_version: Literal["modelpress.io/v1alpha1"]
    kind: Literal["CompressionJob"]
    metadata: ObjectMeta
    spec: CompressionSpec
    status: CompressionStatus | None = None
