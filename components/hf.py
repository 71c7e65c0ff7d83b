"""Hugging Face model folders (what `save_pretrained` writes) as a model source.

A folder holds `config.json`, safetensors weights (`model.safetensors`, or shards listed by
`model.safetensors.index.json`) and its tokenizer or image-processor files. It is read with
transformers from local files only, never the hub, and never through pickle: a folder with
only `pytorch_model.bin` is refused. A folder whose config names custom code (`auto_map`)
is a program (modelpress.trust), loaded with `trust_remote_code` only when trusted.

Every step sees the model through `HFTaskModule`: tensors in, positionally in the order of
its Signature, one tensor out (the logits, or the pooled embedding), so fine-tuning,
distillation, QAT, tracing and ONNX export treat it like any other torch module. The
transformers model itself is `HFTaskModule.model`.

Text models take `input_ids` and `attention_mask` only: modelpress reads one text per row,
for which `token_type_ids` is all zeros, the models' own default.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from modelpress.api import Model
from modelpress.components.modelio import InputSpec, Signature
from modelpress.components.preprocess import Preprocessor
from modelpress.errors import InvalidInput
from modelpress.trust import HF_REMOTE_CODE, program_refusal

if TYPE_CHECKING:
    from transformers import PreTrainedModel

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
SHARDED_WEIGHTS = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
IMAGE_PROCESSOR = "preprocessor_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
# What a published model needs beside model.onnx to be usable as is: the tokenizer or
# image processor, and config.json for id2label.
PREPROCESSING_FILES = (*TOKENIZER_FILES, IMAGE_PROCESSOR, CONFIG)
# Where the working model keeps the task it was loaded for (beside save_pretrained's files).
TASK_FILE = "modelpress-task.json"
TEXT_INPUTS = ("input_ids", "attention_mask")
IMAGE_INPUTS = ("pixel_values",)
MAX_TOKENS = 128  # tokens per text: a classifier's usual budget, well under BERT's 512
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")
_POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                  "pooling_mode_max_tokens": "max"}
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"

Head = Literal["text-classification", "image-classification", "embedding"]
Pooling = Literal["mean", "cls", "max"]


class HFTask(Model):
    """What the folder's model is used for, and how its output becomes one tensor; written
    into the working model (TASK_FILE) so every step rebuilds the same wrapper."""

    head: Head
    inputs: list[str]
    pooling: Pooling = "mean"
    normalize: bool = True


class HFTaskModule(torch.nn.Module):
    """A transformers model as a module of tensors: inputs positionally in `task.inputs`
    order, one tensor out (logits, or the pooled, optionally L2-normalised embedding)."""

    def __init__(self, model: PreTrainedModel, task: HFTask) -> None:
        super().__init__()
        self.model: PreTrainedModel = model
        self.task = task
        self.input_names = tuple(task.inputs)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        first = self.model(**named, return_dict=False)[0]
        if self.task.head != "embedding":
            return first
        return pool(first, named.get("attention_mask"), self.task.pooling, self.task.normalize)


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, pooling: Pooling,
         normalize: bool) -> torch.Tensor:
    """One embedding per row from the token states, as sentence-transformers pools them."""
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.int64, device=hidden.device)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(1).values
    else:
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


@dataclass(frozen=True)
class HFModel:
    """A folder as read: the wrapped module, what it takes, and how data is prepared for it."""

    module: HFTaskModule
    signature: Signature
    preprocessor: Preprocessor


def read_hf_folder(folder: Path, task: str, trusted: bool, uri: str, where: str) -> HFModel:
    """Check and load the HF folder at `folder` (named `uri` by the spec field `where`)
    for `task`; custom code is refused unless `trusted`."""
    config = read_config(folder, uri, where)
    check_weights(folder, uri, where)
    custom = custom_code(folder)
    if custom and not trusted:
        raise program_refusal(where, f"{uri} is {HF_REMOTE_CODE} ({custom})")
    hf_task = task_of(folder, config, task, uri, where)
    module = load_task_module(folder, hf_task, bool(custom), uri, where)
    signature = signature_of(folder, config, hf_task)
    return HFModel(module, signature, preprocessor_of(folder, config, hf_task))


# ----------------------------------------------------------------------------- checks


def read_config(folder: Path, uri: str, where: str) -> dict[str, Any]:
    """config.json as a JSON object; anything else is bad input."""
    path = folder / CONFIG
    if not path.is_file():
        raise InvalidInput(where, f"{uri} has no {CONFIG}; a Hugging Face folder is what "
                                  "save_pretrained writes")
    config = _json_object(path)
    if config is None:
        raise InvalidInput(where, f"{uri}: {CONFIG} is not a JSON object")
    return config


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def check_weights(folder: Path, uri: str, where: str) -> None:
    """The weights are safetensors: one file, or an index whose shards all lie beside it."""
    if (folder / WEIGHTS).is_file():
        return
    index = folder / SHARDED_WEIGHTS
    if index.is_file():
        _check_shards(folder, _json_object(index), uri, where)
        return
    if any((folder / name).is_file() for name in PICKLED_WEIGHTS):
        raise InvalidInput(where, f"{uri} holds pytorch_model.bin, a pickle modelpress never "
                                  "loads: convert to safetensors (save_pretrained writes them)")
    raise InvalidInput(where, f"{uri} has no weights: expected {WEIGHTS} or {SHARDED_WEIGHTS}")


def _check_shards(folder: Path, index: dict[str, Any] | None, uri: str, where: str) -> None:
    shards = index.get("weight_map") if index else None
    if not isinstance(shards, dict) or not shards:
        raise InvalidInput(where, f"{uri}: {SHARDED_WEIGHTS} has no weight_map")
    for shard in sorted(set(map(str, shards.values()))):
        if "/" in shard or "\\" in shard or not shard.endswith(".safetensors") \
                or not (folder / shard).is_file():
            raise InvalidInput(where, f"{uri}: shard {shard!r} of {SHARDED_WEIGHTS} is not a "
                                      ".safetensors file in the folder")


def custom_code(folder: Path) -> str | None:
    """The first file whose `auto_map` names code shipped with the folder, or None."""
    for name in (CONFIG, "tokenizer_config.json", IMAGE_PROCESSOR):
        data = _json_object(folder / name) if (folder / name).is_file() else None
        if data and data.get("auto_map"):
            return f"auto_map in {name}"
    return None


# ----------------------------------------------------------------------------- the task


def task_of(folder: Path, config: dict[str, Any], task: str, uri: str, where: str) -> HFTask:
    """The head to load for `task`: a named task wins; `classification` is an image
    classifier when the config or an image processor says so, text otherwise."""
    if task == "embedding":
        pooling, normalize = sentence_pooling(folder, uri, where)
        return HFTask(head="embedding", inputs=list(TEXT_INPUTS), pooling=pooling,
                      normalize=normalize)
    image = task == "image-classification" or (task == "classification" and _is_image(
        folder, config))
    if image:
        return HFTask(head="image-classification", inputs=list(IMAGE_INPUTS))
    return HFTask(head="text-classification", inputs=list(TEXT_INPUTS))


def _is_image(folder: Path, config: dict[str, Any]) -> bool:
    architectures = [str(name) for name in config.get("architectures") or []]
    if any(name.endswith("ForImageClassification") for name in architectures):
        return True
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return False
    return (folder / IMAGE_PROCESSOR).is_file() and not any(
        (folder / name).is_file() for name in TOKENIZER_FILES)


def sentence_pooling(folder: Path, uri: str, where: str) -> tuple[Pooling, bool]:
    """The pooling (and L2 normalisation) a sentence-transformers folder declares in
    modules.json; mean pooling, normalised, for a folder that declares none."""
    modules = _json_list(folder / "modules.json", uri, where)
    if modules is None:
        return "mean", True
    pooling: Pooling = "mean"
    for module in modules:
        kind = str(module.get("type", ""))
        if kind == _ST_POOLING:
            pooling = _pooling_mode(folder / str(module.get("path", "")), uri, where)
        elif kind not in (_ST_NORMALIZE, _ST_TRANSFORMER):
            raise InvalidInput(where, f"{uri}: modules.json has {kind!r}; modelpress runs "
                                      "Transformer, Pooling and Normalize modules only")
    return pooling, any(module.get("type") == _ST_NORMALIZE for module in modules)


def _json_list(path: Path, uri: str, where: str) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise InvalidInput(where, f"{uri}: {path.name} is not a JSON list of modules")
    return data


def _pooling_mode(module_folder: Path, uri: str, where: str) -> Pooling:
    config = _json_object(module_folder / CONFIG) if (module_folder / CONFIG).is_file() else None
    chosen = [mode for key, mode in _POOLING_MODES.items() if config and config.get(key)]
    other = [key for key, value in (config or {}).items()
             if key.startswith("pooling_mode_") and value and key not in _POOLING_MODES]
    if len(chosen) != 1 or other:
        raise InvalidInput(where, f"{uri}: the Pooling module must use exactly one of mean, "
                                  f"cls or max pooling (found {chosen + other or 'none'})")
    return chosen[0]  # type: ignore[return-value]  # a value of _POOLING_MODES


# ----------------------------------------------------------------------------- loading


def load_task_module(folder: Path, task: HFTask, trust_remote_code: bool, uri: str,
                     where: str) -> HFTaskModule:
    """The folder's model, from local files only, in float32 with eager attention (sdpa
    does not export to ONNX with dynamic masks), wrapped for `task`. A classifier whose
    folder lacks trained weights for any layer (its head, say) is refused, not filled with
    random ones."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # a step's log is lines, not bars
    auto = {"text-classification": transformers.AutoModelForSequenceClassification,
            "image-classification": transformers.AutoModelForImageClassification,
            "embedding": transformers.AutoModel}[task.head]
    try:
        model, info = auto.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, dtype=torch.float32,
            attn_implementation="eager", trust_remote_code=trust_remote_code,
            output_loading_info=True)
    except Exception as error:  # transformers raises many types for a folder it cannot read
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise InvalidInput(where, f"{uri} cannot be loaded as {task.head} by transformers: "
                                  f"{type(error).__name__}: {first}") from None
    missing = sorted(key for key in info.get("missing_keys", ())
                     if not (task.head == "embedding" and key.startswith("pooler.")))
    if missing:
        raise InvalidInput(where, f"{uri} has no trained weights for {', '.join(missing[:3])}"
                                  f"{' …' if len(missing) > 3 else ''} of a {task.head} model")
    return HFTaskModule(model.eval(), task).eval()


def load_working(folder: Path) -> HFTaskModule:
    """The module a working model's `hf/` folder holds (written by `save_working`); its
    custom code, if any, was trusted when the job's model was fetched."""
    task = HFTask.model_validate_json((folder / TASK_FILE).read_text(encoding="utf-8"))
    return load_task_module(folder, task, custom_code(folder) is not None, str(folder),
                            "spec.model.uri")


def save_working(module: HFTaskModule, folder: Path) -> None:
    """save_pretrained (safetensors) of the inner model, plus the task that wraps it."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    module.model.save_pretrained(str(folder), safe_serialization=True)
    (folder / TASK_FILE).write_text(module.task.model_dump_json(indent=2), encoding="utf-8")


# ----------------------------------------------------------------------------- what it takes


def signature_of(folder: Path, config: dict[str, Any], task: HFTask) -> Signature:
    """Token inputs as int64 (batch, sequence); pixels as float32 (batch, C, H, W) at the
    image processor's size; the class count from the config for classifiers."""
    classes = _class_count(config) if task.head != "embedding" else None
    if task.head == "image-classification":
        height, width = image_size(folder, config)
        channels = int(config.get("num_channels") or 3)
        pixels = InputSpec("pixel_values", "float32", ("batch", channels, height, width))
        return Signature((pixels,), classes)
    tokens = tuple(InputSpec(name, "int64", ("batch", "sequence")) for name in task.inputs)
    return Signature(tokens, classes)


def _class_count(config: dict[str, Any]) -> int:
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, dict) and labels else int(
        config.get("num_labels") or 2)


def image_size(folder: Path, config: dict[str, Any]) -> tuple[int, int]:
    """(height, width) the image processor produces: its crop when it crops, else its
    size; the config's image_size when the folder has no processor that says."""
    processor = _json_object(folder / IMAGE_PROCESSOR) \
        if (folder / IMAGE_PROCESSOR).is_file() else None
    processor = processor or {}
    size = processor.get("crop_size") if processor.get("do_center_crop") else None
    size = size or processor.get("size")
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if isinstance(size, dict) and "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    if isinstance(size, int):
        return size, size
    edge = config.get("image_size") or 224
    return (int(edge[0]), int(edge[1])) if isinstance(edge, list) else (int(edge), int(edge))


def preprocessor_of(folder: Path, config: dict[str, Any], task: HFTask) -> Preprocessor:
    """How the readers prepare data for this model: its own tokenizer or image processor,
    label names when the config has meaningful ones, MAX_TOKENS tokens at most (fewer when
    the tokenizer or the position embeddings allow fewer)."""
    ships = any((folder / name).is_file() for name in (*TOKENIZER_FILES, IMAGE_PROCESSOR))
    return Preprocessor(folder=folder if ships else None, label_ids=label_ids(config),
                        max_tokens=_max_tokens(folder, config),
                        input_names=tuple(task.inputs))


def label_ids(config: dict[str, Any]) -> dict[str, int] | None:
    """config.label2id when its names mean something (not the default LABEL_0 …)."""
    labels = config.get("id2label")
    if not isinstance(labels, dict) or not labels:
        return None
    names = {str(name): int(index) for index, name in labels.items()}
    if all(_DEFAULT_LABEL.match(name) for name in names):
        return None
    return names


def _max_tokens(folder: Path, config: dict[str, Any]) -> int:
    limits = [MAX_TOKENS, config.get("max_position_embeddings")]
    tokenizer = folder / "tokenizer_config.json"
    if tokenizer.is_file():
        limits.append((_json_object(tokenizer) or {}).get("model_max_length"))
    return min(int(limit) for limit in limits if isinstance(limit, int | float) and limit > 0)


# ----------------------------------------------------------------------------- files


def preprocessing_files(folder: Path) -> list[Path]:
    """The folder's preprocessing files (PREPROCESSING_FILES that are there)."""
    return [folder / name for name in PREPROCESSING_FILES if (folder / name).is_file()]


def folder_sha256(folder: Path) -> str:
    """One digest for a folder: of each file's relative path and sha256, in path order."""
    from modelpress.store import sha256_of

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()
