"""Datasets as named arrays: model inputs by name, plus labels `y` when there are any.

Users give arrays (`.npz`: `x` and optionally `y`, or one array per model input; `.npy`: the
model's single input), text with or without labels (`.jsonl`, `.csv`, `.parquet`, `.txt`,
a `datasets` folder), or images in class folders; `builtin://` names a shipped set. Text
becomes token ids with the model's own tokenizer, images pixels with its image processor
(`preprocess.Preprocessor`); the readers themselves are in `readers`.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlparse, urlunparse

import numpy as np

from modelpress.components import zoo
from modelpress.components.modelio import InputSpec, Signature
from modelpress.components.preprocess import Preprocessor
from modelpress.components.readers import (
    IMAGE_SUFFIXES,
    TEXT_SUFFIXES,
    Columns,
    Examples,
    LabelReader,
    Place,
    is_datasets_folder,
    read_datasets_folder,
    read_image_folder,
    read_texts,
)
from modelpress.components.sources import (
    MAX_DATA_FOLDER_OBJECTS,
    builtin_name,
    builtin_options,
    file_suffix,
    readable_folder,
    readable_path,
)
from modelpress.errors import InvalidInput
from modelpress.store import sha256_of

Arrays = dict[str, np.ndarray]
LABELS = "y"
ARRAY_SUFFIXES = (".npz", ".npy")
SUPPORTED = (f"{', '.join(TEXT_SUFFIXES + ARRAY_SUFFIXES)}, or a folder (a uri ending in /) "
             f"of images in class folders ({'/'.join(IMAGE_SUFFIXES)}) or written by "
             "datasets' save_to_disk")
SAMPLE_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """Named arrays, the sha256 of the file they were read from (None: generated, or a
    folder), and what reading chose for the user (a sample, class numbering)."""

    arrays: Arrays
    source_sha256: str | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadOptions:
    """How to read: which columns hold text and labels, and at most how many rows to keep
    (a seeded random sample; None: all)."""

    columns: Columns = field(default_factory=Columns)
    max_rows: int | None = None


def load_dataset(uri: str, where: str, preprocessor: Preprocessor,
                 options: ReadOptions | None = None) -> Dataset:
    """Named arrays for `uri`, text and images preprocessed as the model expects."""
    options = options or ReadOptions()
    place = Place(where, uri)
    if uri.startswith("builtin://"):
        return _builtin(uri, place, preprocessor, options)
    if urlparse(uri).path.endswith("/"):
        return _folder(uri, place, preprocessor, options)
    suffix = file_suffix(uri)
    if suffix not in TEXT_SUFFIXES + ARRAY_SUFFIXES:
        raise place.fail(f"is no data modelpress reads ({suffix or 'no suffix'}); data is "
                         f"{SUPPORTED}")
    with tempfile.TemporaryDirectory() as scratch:
        local = readable_path(uri, Path(scratch), where)
        digest = sha256_of(local)
        if suffix in ARRAY_SUFFIXES:
            arrays = _npz(local, place) if suffix == ".npz" else _npy(local, place, preprocessor)
            return _sampled_arrays(arrays, digest, place, options.max_rows)
        labels = LabelReader(preprocessor.label_ids, options.columns.label, place)
        examples = read_texts(local, suffix, options.columns, labels, place)
    return _texts_dataset(examples, digest, place, preprocessor, options.max_rows)


def _builtin(uri: str, place: Place, preprocessor: Preprocessor,
             options: ReadOptions) -> Dataset:
    name = builtin_name(uri)
    if name not in zoo.DATASET_SPLITS:
        raise InvalidInput(place.where, f"unknown builtin dataset {name!r}; known: "
                                        f"{', '.join(zoo.DATASET_SPLITS)}")
    splits = zoo.DATASET_SPLITS[name]
    split = builtin_options(uri, place.where, {"split": splits}).get("split", splits[0])
    if name == "digits":
        return _sampled_arrays(zoo.digits(split), None, place, options.max_rows)
    if name in zoo.DATASETS_AS_FILES:
        local = zoo.dataset_path(name, split)
        if local.is_dir():
            return _image_folder(local, uri, place, preprocessor, options)
        labels = LabelReader(preprocessor.label_ids, options.columns.label, place)
        examples = read_texts(local, local.suffix, options.columns, labels, place)
        return _texts_dataset(examples, sha256_of(local), place, preprocessor, options.max_rows)
    if name == "english-text":
        from modelpress.components.llm_zoo import ENGLISH_FILE, english_text

        return _texts_dataset(Examples(english_text(split), None), sha256_of(ENGLISH_FILE),
                              place, preprocessor, options.max_rows)
    examples = Examples(zoo.sentences(split), None)
    return _texts_dataset(examples, sha256_of(zoo.SENTENCES_FILE), place, preprocessor,
                          options.max_rows)


def _folder(uri: str, place: Place, preprocessor: Preprocessor,
            options: ReadOptions) -> Dataset:
    """A `datasets` folder (`?split=` picks a split) or an image folder."""
    parsed = urlparse(uri)
    query = dict(parse_qsl(parsed.query, keep_blank_values=True))
    unknown = sorted(set(query) - {"split"})
    if unknown:
        raise place.fail(f"has unknown option {unknown[0]!r}; a data folder takes ?split= "
                         "only")
    with tempfile.TemporaryDirectory() as scratch:
        root = readable_folder(urlunparse(parsed._replace(query="")), Path(scratch),
                               place.where, MAX_DATA_FOLDER_OBJECTS)
        if is_datasets_folder(root):
            labels = LabelReader(preprocessor.label_ids, options.columns.label, place)
            examples = read_datasets_folder(root, query.get("split"), options.columns,
                                            labels, place)
            return _texts_dataset(examples, None, place, preprocessor, options.max_rows)
        if "split" in query:
            raise place.fail("is no datasets folder (no dataset_dict.json or state.json), "
                             "so it has no splits")
        return _image_folder(root, uri, place, preprocessor, options)


def _image_folder(root: Path, uri: str, place: Place, preprocessor: Preprocessor,
                  options: ReadOptions) -> Dataset:
    """An image folder in the class-per-subfolder layout, as the model's pixel values."""
    examples = read_image_folder(root, preprocessor.label_ids, place)
    examples, notes = _sampled_examples(examples, place, options.max_rows)
    pixels = preprocessor.images(examples.items, root, place.where, uri.partition("?")[0])
    arrays = {preprocessor.image_input: pixels, LABELS: np.array(examples.labels, np.int64)}
    return Dataset(arrays, None, examples.notes + notes)


def _texts_dataset(examples: Examples, digest: str | None, place: Place,
                   preprocessor: Preprocessor, max_rows: int | None) -> Dataset:
    examples, notes = _sampled_examples(examples, place, max_rows)
    arrays = preprocessor.tokenize(examples.items, place.where)
    if examples.labels is not None:
        arrays[LABELS] = np.array(examples.labels, dtype=np.int64)
    return Dataset(arrays, digest, examples.notes + notes)


# ----------------------------------------------------------------------------- sampling


def sample_rows(count: int, max_rows: int | None) -> np.ndarray | None:
    """The rows a capped set keeps, in file order: a random sample with seed 0, the same
    on every run; None when the set is within the cap."""
    if max_rows is None or count <= max_rows:
        return None
    chosen = np.random.default_rng(SAMPLE_SEED).choice(count, size=max_rows, replace=False)
    return np.sort(chosen)


def _sample_note(place: Place, kept: int, count: int) -> str:
    name = place.where.removeprefix("spec.data.")
    return (f"{name}: {kept:,} of {count:,} rows, sampled with seed {SAMPLE_SEED} "
            "(spec.data.maxEvalRows)")


def _sampled_examples(examples: Examples, place: Place,
                      max_rows: int | None) -> tuple[Examples, tuple[str, ...]]:
    rows = sample_rows(len(examples.items), max_rows)
    if rows is None:
        return examples, ()
    labels = None if examples.labels is None else [examples.labels[row] for row in rows]
    kept = Examples([examples.items[row] for row in rows], labels, examples.notes)
    return kept, (_sample_note(place, len(rows), len(examples.items)),)


def _sampled_arrays(arrays: Arrays, digest: str | None, place: Place,
                    max_rows: int | None) -> Dataset:
    count = len(next(iter(arrays.values())))
    rows = sample_rows(count, max_rows)
    if rows is None:
        return Dataset({name: np.asarray(array) for name, array in arrays.items()}, digest)
    kept = {name: np.asarray(array[rows]) for name, array in arrays.items()}
    return Dataset(kept, digest, (_sample_note(place, len(rows), count),))


# ----------------------------------------------------------------------------- arrays


def _npz(path: Path, place: Place) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise place.fail(f"is not a readable .npz file ({error})") from None
    if not [name for name in arrays if name != LABELS]:
        raise place.fail("has no input arrays (expected at least `x`)")
    _check_lengths(arrays, place)
    return arrays


def _npy(path: Path, place: Place, preprocessor: Preprocessor) -> Arrays:
    """One array, the model's single input (memory-mapped until rows are taken)."""
    names = preprocessor.input_names or ("x",)
    if len(names) != 1:
        raise place.fail(f"holds one array, but the model takes {len(names)} "
                         f"inputs ({', '.join(names)}); give a .npz with one array per input")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise place.fail(f"is not a readable .npy file ({error})") from None
    arrays = {names[0]: array}
    _check_lengths(arrays, place)
    return arrays


def _check_lengths(arrays: Arrays, place: Place) -> None:
    scalars = [name for name, array in arrays.items() if array.ndim == 0]
    if scalars:
        raise place.fail(f"has scalar arrays {scalars}; each needs one row per example")
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise place.fail(f"has arrays of different lengths {lengths}")
    if next(iter(lengths.values())) == 0:
        raise place.fail("is empty")


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
