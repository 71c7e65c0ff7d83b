"""Datasets as named arrays: model inputs by name, plus labels `y` when there are any.

Users give `.npz` (arrays `x` and optionally `y`, or one array per model input), `.txt`
(one sentence per line) or `.jsonl` (`{"text": ...}` per line); `builtin://` names a
shipped set. Text becomes token ids with the model's tokenizer.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from modelpress.components import zoo
from modelpress.components.sources import builtin_name, fetch_to, file_suffix
from modelpress.errors import InvalidInput

Arrays = dict[str, np.ndarray]
LABELS = "y"


def load_dataset(uri: str, where: str, tokenizer: str | None) -> Arrays:
    """Named arrays for `uri`; `tokenizer` is the builtin model whose tokenizer reads text."""
    if uri.startswith("builtin://"):
        return _builtin(uri, where, tokenizer)
    suffix = file_suffix(uri)
    if suffix not in (".npz", ".txt", ".jsonl"):
        raise InvalidInput(where, f"{uri}: data must be .npz, .txt or .jsonl, got {suffix!r}")
    with tempfile.TemporaryDirectory() as scratch:
        local = fetch_to(uri, Path(scratch) / f"data{suffix}", where)
        if suffix == ".npz":
            return _npz(local, uri, where)
        texts = _texts(local, suffix, uri, where)
    return _tokenize(texts, uri, where, tokenizer)


def _builtin(uri: str, where: str, tokenizer: str | None) -> Arrays:
    name, options = builtin_name(uri)
    if name == "digits":
        return zoo.digits(options.get("split", "test"))
    if name == "sentences":
        return _tokenize(zoo.sentences(options.get("split", "eval")), uri, where, tokenizer)
    raise InvalidInput(where, f"unknown builtin dataset {name!r}; known: {zoo.BUILTIN_DATASETS}")


def _npz(path: Path, uri: str, where: str) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise InvalidInput(where, f"{uri} is not a readable .npz file ({error})") from None
    if not [name for name in arrays if name != LABELS]:
        raise InvalidInput(where, f"{uri} has no input arrays (expected at least `x`)")
    _check_lengths(arrays, uri, where)
    return arrays


def _check_lengths(arrays: Arrays, uri: str, where: str) -> None:
    scalars = [name for name, array in arrays.items() if array.ndim == 0]
    if scalars:
        raise InvalidInput(where, f"{uri}: arrays {scalars} are scalars; each needs one row "
                                  "per example")
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise InvalidInput(where, f"{uri}: arrays have different lengths {lengths}")
    if next(iter(lengths.values())) == 0:
        raise InvalidInput(where, f"{uri} is empty")


def _texts(path: Path, suffix: str, uri: str, where: str) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        if suffix == ".jsonl":
            lines = [json.loads(line)["text"] for line in lines if line]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InvalidInput(where, f"{uri}: cannot read text ({error!r})") from None
    texts = [line for line in lines if line]
    if not texts:
        raise InvalidInput(where, f"{uri} is empty")
    return texts


def _tokenize(texts: list[str], uri: str, where: str, tokenizer: str | None) -> Arrays:
    if tokenizer != "minilm-l6":
        raise InvalidInput(where, f"{uri} is text, but the model has no tokenizer modelpress "
                                  "knows; give token ids as .npz arrays named after its inputs")
    return zoo.minilm_tokenize(texts)


def input_names(arrays: Arrays) -> list[str]:
    return [name for name in arrays if name != LABELS]


def take(arrays: Arrays, count: int) -> Arrays:
    """The first `count` rows, repeated when the set is smaller (benchmark batches)."""
    length = len(next(iter(arrays.values())))
    rows = np.arange(count) % length
    return {name: array[rows] for name, array in arrays.items()}


def save_arrays(arrays: Arrays, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub misreads **kwargs


def load_arrays(path: Path) -> Arrays:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
