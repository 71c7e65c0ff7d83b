"""Fetch for `task: text-generation`: a Hugging Face causal-LM folder (or
builtin://smollm2-135m), its fp32 onnxruntime-genai baseline, and the job's texts.

Nothing is tokenized here: the texts travel as `texts.json` (llm_steps.LlmTexts) and each
step tokenizes them with the genai folder's own tokenizer. The eval text is never the
calibration text: a calibration set naming the same data as data.eval is refused.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from modelpress.api import CompressionSpec, QuantizeStep
from modelpress.components import zoo
from modelpress.components.fetch import MODEL_FIELD
from modelpress.components.hf import check_weights, custom_code, folder_sha256, read_config
from modelpress.components.llm_export import LlmRecipe, build_genai_folder
from modelpress.components.llm_steps import (
    BASELINE_GENAI,
    HF_FOLDER,
    LlmTexts,
    check_recipe,
    recipe_of,
    write_texts,
)
from modelpress.components.modelio import Manifest, write_manifest
from modelpress.components.readers import TEXT_SUFFIXES, Columns, LabelReader, Place, read_texts
from modelpress.components.result import timed
from modelpress.components.sources import (
    builtin_name,
    builtin_options,
    file_suffix,
    readable_folder,
    readable_path,
)
from modelpress.errors import InvalidInput
from modelpress.lineage import LineageInput
from modelpress.records import FetchRecord
from modelpress.store import sha256_of
from modelpress.trust import require_trusted

ENGLISH_TEXT = "english-text"
TOKENIZER_JSON = "tokenizer.json"
# Prompts of the generation check: at most this many; the default ones are the first words
# of the first eval texts.
MAX_PROMPTS = 8
DEFAULT_PROMPTS = 4
_PROMPT_WORDS = 8
# A column no text file has: the steps of this task read texts, never labels.
_NO_LABEL_COLUMN = "\x00"


def fetch_llm(spec: CompressionSpec, model_out: Path, data_out: Path, *,
              trusted: bool = False) -> FetchRecord:
    """Write the original working model (`hf/`, `baseline-genai/`, manifest) and the texts."""
    require_trusted(spec, trusted)
    with timed() as clock, tempfile.TemporaryDirectory() as scratch:
        folder, model_sha256 = read_causal_lm(spec, Path(scratch), trusted)
        texts, digests = read_llm_texts(spec, folder)
        check_steps(spec, folder, bool(texts.calibration))
        write_texts(texts, data_out)
        shutil.copytree(folder, model_out / HF_FOLDER, dirs_exist_ok=True)
        build_genai_folder(model_out / HF_FOLDER, LlmRecipe(weights="fp32"),
                           model_out / BASELINE_GENAI)
        manifest = Manifest(format="hf", task="text-generation", inputs=["input_ids"],
                            source=spec.model.uri)
        write_manifest(model_out, manifest)
    lineage = {"model": LineageInput(uri=spec.model.uri, sha256=model_sha256)}
    lineage |= {f"data.{name}": LineageInput(uri=uri, sha256=digests[uri])
                for name, uri in spec.data.sources().items()}
    return clock.stamp(FetchRecord(
        format=manifest.format, inputs=manifest.inputs, eval_rows=len(texts.eval),
        lineage_inputs=lineage,
        message=f"{spec.model.uri} as an fp32 onnxruntime-genai baseline; {len(texts.eval)} "
                f"eval texts, {len(texts.calibration)} calibration texts, "
                f"{len(texts.prompts)} prompts"))


def check_llm_inputs(spec: CompressionSpec, trusted: bool) -> list[str]:
    """Everything fetch_llm would refuse, without building anything."""
    require_trusted(spec, trusted)
    with tempfile.TemporaryDirectory() as scratch:
        folder, _ = read_causal_lm(spec, Path(scratch), trusted)
        texts, _ = read_llm_texts(spec, folder)
        check_steps(spec, folder, bool(texts.calibration))
    return []


# ----------------------------------------------------------------------------- the model


def read_causal_lm(spec: CompressionSpec, scratch: Path, trusted: bool) -> tuple[Path, str]:
    """The causal LM's HF folder (a builtin's from the zoo, else the user's) and its digest."""
    uri = spec.model.uri
    if uri.startswith("builtin://"):
        name = builtin_name(uri)
        if name not in zoo.TEXT_GENERATION_MODELS:
            raise InvalidInput(MODEL_FIELD, f"{name!r} is no builtin text-generation model; "
                                            f"known: {', '.join(zoo.TEXT_GENERATION_MODELS)}")
        builtin_options(uri, MODEL_FIELD, {})
        folder = zoo.HF_FOLDERS[name]()
    elif spec.model.format in (None, "hf") and uri.partition("?")[0].endswith("/"):
        folder = readable_folder(uri, scratch, MODEL_FIELD)
    else:
        raise InvalidInput(MODEL_FIELD, f"{uri}: text-generation takes a Hugging Face causal-LM "
                                        "folder (a uri ending in /) or builtin://smollm2-135m")
    check_causal_lm(folder, uri, trusted)
    return folder, folder_sha256(folder)


def check_causal_lm(folder: Path, uri: str, trusted: bool) -> None:
    """A folder the model builder can read: config.json naming a *ForCausalLM, safetensors,
    tokenizer.json; no custom code (the builder knows architectures, not programs)."""
    config = read_config(folder, uri, MODEL_FIELD)
    check_weights(folder, uri, MODEL_FIELD)
    custom = custom_code(folder)
    if custom:
        trust = "" if trusted else " (and model code is not trusted)"
        raise InvalidInput(MODEL_FIELD, f"{uri} ships its own code ({custom}); the "
                                        f"onnxruntime-genai builder exports known "
                                        f"architectures only{trust}")
    architectures = [str(name) for name in config.get("architectures") or []]
    if not any(name.endswith("ForCausalLM") for name in architectures):
        raise InvalidInput(MODEL_FIELD, f"{uri} is not a causal LM (config.json architectures "
                                        f"{architectures or 'missing'}); text-generation needs "
                                        "a *ForCausalLM model")
    if not (folder / TOKENIZER_JSON).is_file():
        raise InvalidInput(MODEL_FIELD, f"{uri} has no {TOKENIZER_JSON}; onnxruntime-genai "
                                        "needs a fast tokenizer")


def check_steps(spec: CompressionSpec, folder: Path, calibration: bool) -> None:
    """Each quantize step's recipe against this model (layers, tied weights, calibration)."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for index, step in enumerate(spec.steps):
        options = step.options
        assert isinstance(options, QuantizeStep), "the spec allows only quantize here"
        where = f"spec.steps[{index}].quantize"
        if options.mode == "auto":
            if not calibration:
                raise InvalidInput("spec.data.calibration", "text-generation auto measures "
                                                            "candidates on calibration text "
                                                            "(never on data.eval); set it")
            continue
        check_recipe(recipe_of(options, where), config, calibration, where)


# ----------------------------------------------------------------------------- texts


def read_llm_texts(spec: CompressionSpec, folder: Path) -> tuple[LlmTexts, dict[str, str]]:
    """The eval, calibration (else train) and prompt texts, with each uri's sha256."""
    data = spec.data
    digests: dict[str, str] = {}
    texts: dict[str, list[str]] = {}
    for name, uri in data.sources().items():
        if name == "prompts":
            texts[name], digests[uri] = read_prompts(uri, folder)
        else:
            texts[name], digests[uri] = read_text_set(uri, f"spec.data.{name}", data.text_column)
    calibration_uri = data.calibration or data.train
    if calibration_uri is not None and _same_set(calibration_uri, data.eval):
        field = "calibration" if data.calibration else "train"
        raise InvalidInput(f"spec.data.{field}", f"{calibration_uri} is the eval set; decisions "
                                                 "are made on other text (e.g. ?split=train)")
    prompts = texts.get("prompts") or [" ".join(text.split()[:_PROMPT_WORDS])
                                       for text in texts["eval"][:DEFAULT_PROMPTS]]
    return LlmTexts(eval=texts["eval"], prompts=prompts[:MAX_PROMPTS],
                    calibration=texts.get("calibration") or texts.get("train") or []), digests


def _same_set(uri: str, other: str) -> bool:
    """Whether two uris name the same data (a builtin's default split spelt out or not)."""
    def identity(value: str) -> str:
        if value.startswith(f"builtin://{ENGLISH_TEXT}"):
            split = builtin_options(value, "spec.data", {"split": zoo.DATASET_SPLITS[
                ENGLISH_TEXT]}).get("split", "eval")
            return f"builtin://{ENGLISH_TEXT}?split={split}"
        return value

    return identity(uri) == identity(other)


def read_text_set(uri: str, where: str, text_column: str) -> tuple[list[str], str]:
    """Texts of builtin://english-text (`?split=eval|train`) or a text file (.txt one per
    line, .jsonl/.csv/.parquet in `text_column`), and the sha256 of what was read."""
    from modelpress.components.llm_zoo import ENGLISH_FILE, english_text

    if uri.startswith("builtin://"):
        if builtin_name(uri) != ENGLISH_TEXT:
            raise InvalidInput(where, f"{uri}: text-generation reads builtin://{ENGLISH_TEXT} "
                                      f"or text files ({', '.join(TEXT_SUFFIXES)})")
        split = builtin_options(uri, where, {"split": zoo.DATASET_SPLITS[ENGLISH_TEXT]})
        return english_text(split.get("split", "eval")), sha256_of(ENGLISH_FILE)
    suffix = file_suffix(uri)
    if suffix not in TEXT_SUFFIXES:
        raise InvalidInput(where, f"{uri}: text-generation reads text ({', '.join(TEXT_SUFFIXES)})"
                                  f", not {suffix or 'a file without suffix'}")
    place = Place(where, uri)
    with tempfile.TemporaryDirectory() as scratch:
        local = readable_path(uri, Path(scratch), where)
        columns = Columns(text=text_column, label=_NO_LABEL_COLUMN)
        examples = read_texts(local, suffix, columns, LabelReader(None, _NO_LABEL_COLUMN, place),
                              place)
        return examples.items, sha256_of(local)


def read_prompts(uri: str, folder: Path) -> tuple[list[str], str]:
    """Prompts: builtin://english-text's opening words, a .txt (one a line), or a .jsonl
    whose rows hold `prompt` (text) or `messages` (a chat, rendered with the model's own
    chat template)."""
    where = "spec.data.prompts"
    if uri.startswith("builtin://") or file_suffix(uri) != ".jsonl":
        texts, digest = read_text_set(uri, where, "prompt")
        if uri.startswith("builtin://"):
            texts = [" ".join(text.split()[:_PROMPT_WORDS]) for text in texts]
        return texts, digest
    with tempfile.TemporaryDirectory() as scratch:
        local = readable_path(uri, Path(scratch), where)
        rows = [line for line in local.read_text(encoding="utf-8").splitlines() if line.strip()]
        digest = sha256_of(local)
    prompts = [_prompt(row, number, folder, uri) for number, row in enumerate(rows, start=1)]
    if not prompts:
        raise InvalidInput(where, f"{uri} is empty (no rows)")
    return prompts, digest


def _prompt(row: str, number: int, folder: Path, uri: str) -> str:
    where = "spec.data.prompts"
    try:
        record: Any = json.loads(row)
    except json.JSONDecodeError as error:
        raise InvalidInput(where, f"{uri} line {number}: not JSON ({error.msg})") from None
    if isinstance(record, dict) and isinstance(record.get("prompt"), str):
        return str(record["prompt"])
    messages = record.get("messages") if isinstance(record, dict) else None
    if isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        return _chat(messages, folder, f"{uri} line {number}")
    raise InvalidInput(where, f"{uri} line {number}: needs `prompt` (text) or `messages` (a "
                              "list of {role, content})")


def _chat(messages: list[dict[str, Any]], folder: Path, place: str) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if not tokenizer.chat_template:
        raise InvalidInput("spec.data.prompts", f"{place}: chat messages need a chat template, "
                                                "and the model's tokenizer has none")
    return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True))
