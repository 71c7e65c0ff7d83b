"""Datasets as named arrays: model inputs by name, plus labels `y` when there are any.

Users give `.npz` (arrays `x` and optionally `y`, or one array per model input), `.txt`
(one sentence per line) or `.jsonl` (`{"text": ...}` per line); `builtin://` names a
shipped set. Text becomes token ids with the model's tokenizer.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelpress.components import zoo
from modelpress.components.modelio import InputSpec, Signature
from modelpress.components.sources import builtin_name, builtin_options, file_suffix, readable_path
from modelpress.errors import InvalidInput
from modelpress.store import sha256_of

Arrays = dict[str, np.ndarray]
LABELS = "y"


@dataclass(frozen=True)
class Dataset:
    """Named arrays, and the sha256 of the file they were read from (None: generated)."""

    arrays: Arrays
    source_sha256: str | None


def load_dataset(uri: str, where: str, tokenizer: str | None) -> Dataset:
    """Named arrays for `uri`; `tokenizer` is the builtin model whose tokenizer reads text."""
    if uri.startswith("builtin://"):
        return _builtin(uri, where, tokenizer)
    suffix = file_suffix(uri)
    if suffix not in (".npz", ".txt", ".jsonl"):
        raise InvalidInput(where, f"{uri}: data must be .npz, .txt or .jsonl, got {suffix!r}")
    with tempfile.TemporaryDirectory() as scratch:
        local = readable_path(uri, Path(scratch), where)
        digest = sha256_of(local)
        if suffix == ".npz":
            return Dataset(_npz(local, uri, where), digest)
        texts = _texts(local, suffix, uri, where)
    return Dataset(_tokenize(texts, uri, where, tokenizer), digest)


def _builtin(uri: str, where: str, tokenizer: str | None) -> Dataset:
    name = builtin_name(uri)
    if name not in zoo.DATASET_SPLITS:
        raise InvalidInput(where, f"unknown builtin dataset {name!r}; known: "
                                  f"{', '.join(zoo.DATASET_SPLITS)}")
    splits = zoo.DATASET_SPLITS[name]
    split = builtin_options(uri, where, {"split": splits}).get("split", splits[0])
    if name == "digits":
        return Dataset(zoo.digits(split), None)
    texts = zoo.sentences(split)
    return Dataset(_tokenize(texts, uri, where, tokenizer), sha256_of(zoo.SENTENCES_FILE))


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


# ----------------------------------------------------------------------------- against the model


def conform(arrays: Arrays, signature: Signature, where: str,
            task: str) -> tuple[Arrays, list[str]]:
    """The arrays as the model takes them, in its input order, plus one note per cast.

    Numeric arrays of another type are cast to the model's (float64 -> float32); a missing
    or extra array, a type that cannot be cast, a wrong shape, NaN/inf, or a label outside
    the model's classes is InvalidInput naming `where` and the array.
    """
    names = [spec.name for spec in signature.inputs]
    if sorted(names) != sorted(input_names(arrays)):
        raise InvalidInput(where, f"the model takes inputs {names}, but the data has arrays "
                                  f"{input_names(arrays)}")
    conformed: Arrays = {}
    notes: list[str] = []
    sizes: dict[str, tuple[int, str]] = {}  # symbolic axis -> (its size, the array that set it)
    for spec in signature.inputs:
        conformed[spec.name] = _cast(arrays[spec.name], spec.name, spec.dtype, where, notes)
        _check_shape(conformed[spec.name], spec, sizes, where)
    if LABELS in arrays:
        labels = arrays[LABELS]
        if task == "classification":
            _check_labels(labels, signature.classes, where)
            labels = _cast(labels, LABELS, "int64", where, notes)
        conformed[LABELS] = labels
    return conformed, notes


def _cast(array: np.ndarray, name: str, dtype: str | None, where: str,
          notes: list[str]) -> np.ndarray:
    """`array` as `dtype` (None: as it is), finite; a cast adds a note."""
    if array.dtype.kind not in "biuf":
        raise InvalidInput(where, f"array {name} holds {array.dtype} values; the model takes "
                                  f"{dtype or 'numbers'}")
    _check_finite(array, name, where)
    if dtype is None or array.dtype == np.dtype(dtype):
        return array
    target = np.dtype(dtype)
    if target.kind not in "iuf" or (target.kind in "iu" and not _fits_integers(array, target)):
        raise InvalidInput(where, f"array {name} is {array.dtype}, and its values do not fit "
                                  f"the {target} the model takes")
    with np.errstate(over="ignore"):
        cast = array.astype(target)
    if not np.isfinite(cast).all():
        raise InvalidInput(where, f"array {name} has values beyond {target}'s range")
    notes.append(f"{where}: array {name} is {array.dtype}; cast to {target} for the model")
    return cast


def _fits_integers(array: np.ndarray, target: np.dtype) -> bool:
    limits = np.iinfo(target)
    return bool(np.all(array == np.round(array)) and
                (array.size == 0 or (array.min() >= limits.min and array.max() <= limits.max)))


def _check_finite(array: np.ndarray, name: str, where: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise InvalidInput(where, f"array {name} holds NaN or infinite values (first in row {row})")


def _check_shape(array: np.ndarray, spec: InputSpec, sizes: dict[str, tuple[int, str]],
                 where: str) -> None:
    """Fixed axes must match; a symbolic axis takes one size across the arrays."""
    if spec.shape is None:
        return
    wrong = f"array {spec.name} has shape {tuple(array.shape)}, the model takes {spec.shown()}"
    if array.ndim != len(spec.shape):
        raise InvalidInput(where, wrong)
    for size, dim in zip(array.shape, spec.shape, strict=True):
        if isinstance(dim, int) and size != dim:
            raise InvalidInput(where, wrong)
        if isinstance(dim, str):
            bound, other = sizes.setdefault(dim, (size, spec.name))
            if bound != size:
                raise InvalidInput(where, f"{wrong}, with {dim} = {bound} as in array {other}")


def _check_labels(labels: np.ndarray, classes: int | None, where: str) -> None:
    """Labels are class indices: integers from 0, below the model's class count."""
    if labels.ndim != 1 or labels.dtype.kind not in "biuf":
        raise InvalidInput(where, f"array {LABELS} has shape {tuple(labels.shape)} and type "
                                  f"{labels.dtype}; labels are one class index per row")
    fractional = ~np.isfinite(labels) | (labels != np.round(labels)) \
        if labels.dtype.kind == "f" else np.zeros(len(labels), dtype=bool)
    if fractional.any():
        value = labels[fractional][0]
        raise InvalidInput(where, f"array {LABELS} holds {value}, which is no class index "
                                  f"(row {int(np.argmax(fractional))}); labels are integers")
    if labels.size and labels.min() < 0:
        raise InvalidInput(where, f"array {LABELS} holds {labels.min():g}; labels are class "
                                  "indices from 0")
    if classes is not None and labels.size and labels.max() >= classes:
        raise InvalidInput(where, f"array {LABELS} holds {labels.max():g}, but the model has "
                                  f"{classes} classes (labels 0..{classes - 1})")
