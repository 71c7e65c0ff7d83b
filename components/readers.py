"""Readers for the data files teams have: each turns one file or folder into raw examples.

Text files (`.jsonl`, `.csv`, `.parquet`, `.txt`) and `datasets` folders give texts and
their labels; image folders (`root/<class name>/*.png`) give image files and their class
labels. Readers go row by row (csv, json lines) or batch by batch (parquet, `datasets`), so
what stays in memory is the texts themselves, never a whole parsed table; tokenizing and
decoding images come later, in batches, for only the rows kept (`data.load_dataset`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelpress.errors import InvalidInput

TEXT_SUFFIXES = (".jsonl", ".csv", ".parquet", ".txt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_BATCH_ROWS = 4096
_SHOWN_NAMES = 10
# The split a `datasets` DatasetDict is read from when the uri names none, in this order.
DEFAULT_SPLITS = ("test", "validation", "eval")


@dataclass(frozen=True)
class Place:
    """Where data comes from, for messages: the spec field and the uri the user wrote; a
    problem reads on from the uri (`… has no column 'text'`)."""

    where: str
    uri: str

    def fail(self, problem: str) -> InvalidInput:
        return InvalidInput(self.where, f"{self.uri} {problem}")


@dataclass(frozen=True)
class Columns:
    """Which columns of tabular data (and keys of json lines) hold the text and the label."""

    text: str = "text"
    label: str = "label"


@dataclass(frozen=True)
class Examples:
    """Raw examples, in file order: texts or image files, with a class index per row or
    None when the data has no labels; `notes` say what a reader chose for the user."""

    items: list[Any]
    labels: list[int] | None
    notes: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelReader:
    """Turns a label cell into a class index: names through the model's `label2id`,
    integers (and integer strings, as csv holds them) as they are."""

    label_ids: Mapping[str, int] | None
    column: str
    place: Place

    def index(self, value: Any, row: int) -> int:
        if isinstance(value, str) and self.label_ids is not None and value in self.label_ids:
            return self.label_ids[value]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise self._unknown(value, row)

    def _unknown(self, value: Any, row: int) -> InvalidInput:
        cell = f"row {row}: column {self.column!r} is {value!r}"
        if not isinstance(value, str):
            return self.place.fail(f"{cell}; a label is a class index or a class name")
        if self.label_ids is None:
            return self.place.fail(f"{cell}, a class name, but the model names no classes "
                                   "(config.json label2id); give class indices")
        return self.place.fail(f"{cell}, which is not one of the model's labels "
                               f"({shown(sorted(self.label_ids))})")


def shown(names: list[str]) -> str:
    """At most a handful of names, and how many more there are."""
    head = ", ".join(names[:_SHOWN_NAMES])
    more = len(names) - _SHOWN_NAMES
    return f"{head}, … {more} more" if more > 0 else head


# ----------------------------------------------------------------------------- text files


def read_texts(path: Path, suffix: str, columns: Columns, labels: LabelReader,
               place: Place) -> Examples:
    """The texts (and labels, where the data has a label column) of a text file."""
    if suffix == ".txt":
        rows: Iterator[tuple[str, Any]] = _txt_rows(path, place)
    elif suffix == ".jsonl":
        rows = _jsonl_rows(path, columns, place)
    elif suffix == ".csv":
        rows = _csv_rows(path, columns, place)
    else:
        rows = _parquet_rows(path, columns, place)
    return collect(rows, labels, place)


_NO_LABEL = object()


def collect(rows: Iterator[tuple[str, Any]], labels: LabelReader, place: Place) -> Examples:
    """Texts and class indices from (text, label cell) rows; `_NO_LABEL` cells mean the
    data has no labels, which must hold for every row or none."""
    texts: list[str] = []
    indices: list[int] = []
    labelled: bool | None = None
    for row, (text, cell) in enumerate(rows, start=1):
        if not isinstance(text, str):
            raise place.fail(f"row {row}: the text column holds {type(text).__name__} "
                             f"{text!r:.40}, not text")
        has_label = cell is not _NO_LABEL
        if labelled is None:
            labelled = has_label
        elif labelled != has_label:
            state = "has" if has_label else "has no"
            raise place.fail(f"row {row}: {state} column {labels.column!r}, unlike row 1")
        texts.append(text)
        if has_label:
            indices.append(labels.index(cell, row))
    if not texts:
        raise place.fail("is empty (no rows)")
    return Examples(texts, indices if labelled else None)


def _txt_rows(path: Path, place: Place) -> Iterator[tuple[str, Any]]:
    with _opened(path, place) as handle:
        for line in _decoded(handle, place):
            if line.strip():
                yield line.strip(), _NO_LABEL


def _jsonl_rows(path: Path, columns: Columns, place: Place) -> Iterator[tuple[str, Any]]:
    with _opened(path, place) as handle:
        for number, line in enumerate(_decoded(handle, place), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise place.fail(f"line {number}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise place.fail(f"line {number}: not a JSON object")
            if columns.text not in record:
                raise place.fail(f"line {number}: no key {columns.text!r} (keys: "
                                 f"{shown(list(record))}); set spec.data.textColumn")
            yield record[columns.text], record.get(columns.label, _NO_LABEL)


def _csv_rows(path: Path, columns: Columns, place: Place) -> Iterator[tuple[str, Any]]:
    with _opened(path, place, newline="") as handle:
        reader = csv.reader(_decoded(handle, place))
        header = next(reader, None)
        if header is None:
            raise place.fail("is empty (no header row)")
        text_at, label_at = _column_positions(header, columns, place)
        for number, record in enumerate(reader, start=1):
            if len(record) != len(header):
                raise place.fail(f"row {number}: {len(record)} cells, the header "
                                 f"{len(header)}")
            yield record[text_at], _NO_LABEL if label_at is None else record[label_at]


def _column_positions(header: list[str], columns: Columns,
                      place: Place) -> tuple[int, int | None]:
    if columns.text not in header:
        raise place.fail(f"has no column {columns.text!r} (columns: {shown(header)}); "
                         "set spec.data.textColumn")
    label_at = header.index(columns.label) if columns.label in header else None
    return header.index(columns.text), label_at


def _parquet_rows(path: Path, columns: Columns, place: Place) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise place.fail(f"is not a readable parquet file ({error})") from None
    text_at, label_at = _column_positions(table.schema_arrow.names, columns, place)
    wanted = [columns.text] if label_at is None else [columns.text, columns.label]
    for batch in table.iter_batches(batch_size=_BATCH_ROWS, columns=wanted):
        texts = batch.column(0).to_pylist()
        cells = batch.column(1).to_pylist() if label_at is not None else \
            [_NO_LABEL] * len(texts)
        yield from zip(texts, cells, strict=True)


class _opened:
    """A text file opened for reading; a file that cannot be opened is bad input."""

    def __init__(self, path: Path, place: Place, newline: str | None = None) -> None:
        try:
            self.handle = path.open(encoding="utf-8", newline=newline)
        except OSError as error:
            raise place.fail(f"cannot be read ({error.strerror})") from None

    def __enter__(self) -> Any:
        return self.handle

    def __exit__(self, *_: object) -> None:
        self.handle.close()


def _decoded(handle: Any, place: Place) -> Iterator[str]:
    """The lines of `handle`; bytes that are not UTF-8 are bad input."""
    try:
        yield from handle
    except UnicodeDecodeError as error:
        raise place.fail(f"is not UTF-8 text ({error.reason} at byte {error.start})") from None


# ----------------------------------------------------------------------------- datasets folders


def is_datasets_folder(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def read_datasets_folder(path: Path, split: str | None, columns: Columns,
                         labels: LabelReader, place: Place) -> Examples:
    """Texts and labels of a `datasets` folder (memory-mapped; read batch by batch); class
    labels (`ClassLabel`) are read by name when the model knows every name, else kept as
    the integers they are."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as error:
        raise place.fail(f"is not a readable datasets folder ({error})") from None
    table = _split_of(loaded, split, place)
    _column_positions(list(table.column_names), columns, place)
    names = _class_names(table, columns.label, labels.label_ids)
    wanted = [columns.text, columns.label] if columns.label in table.column_names \
        else [columns.text]

    def rows() -> Iterator[tuple[str, Any]]:
        for batch in table.select_columns(wanted).iter(batch_size=_BATCH_ROWS):
            cells = batch.get(columns.label) or [_NO_LABEL] * len(batch[columns.text])
            for text, cell in zip(batch[columns.text], cells, strict=True):
                yield text, names[cell] if names and isinstance(cell, int) else cell

    return collect(rows(), labels, place)


def _split_of(loaded: Any, split: str | None, place: Place) -> Any:
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        if split is not None:
            raise place.fail(f"holds one dataset, no splits; drop ?split={split}")
        return loaded
    available = list(loaded)
    chosen = split or next((name for name in DEFAULT_SPLITS if name in loaded), None)
    if chosen not in loaded:
        asked = f"has no split {split!r}" if split else "names no split (?split=…)"
        raise place.fail(f"{asked}; its splits: {shown(available)}")
    return loaded[chosen]


def _class_names(table: Any, column: str, label_ids: Mapping[str, int] | None) -> list[str]:
    """The `ClassLabel` names of `column` when the model knows them all, else []."""
    import datasets

    feature = table.features.get(column)
    if not isinstance(feature, datasets.ClassLabel) or label_ids is None:
        return []
    return list(feature.names) if set(feature.names) <= set(label_ids) else []


# ----------------------------------------------------------------------------- image folders


def read_image_folder(root: Path, label_ids: Mapping[str, int] | None,
                      place: Place) -> Examples:
    """The image files of `root/<class name>/` and their class indices: the model's
    `label2id` when it has one (every folder must be a class it names), else the sorted
    folder names numbered from 0 (stated in a note, as torchvision's ImageFolder does)."""
    classes = sorted(entry.name for entry in root.iterdir()
                     if entry.is_dir() and not entry.name.startswith("."))
    files = {name: _images_in(root / name) for name in classes}
    classes = [name for name in classes if files[name]]
    if not classes:
        raise place.fail(f"holds no images in class folders (root/<class name>/*"
                         f"{'|*'.join(IMAGE_SUFFIXES)})")
    indices, notes = _class_indices(classes, label_ids, place)
    items = [path for name in classes for path in files[name]]
    labels = [indices[name] for name in classes for _ in files[name]]
    return Examples(items, labels, notes)


def _images_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir()
                  if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)


def _class_indices(classes: list[str], label_ids: Mapping[str, int] | None,
                   place: Place) -> tuple[dict[str, int], tuple[str, ...]]:
    if label_ids is not None:
        unknown = [name for name in classes if name not in label_ids]
        if unknown:
            raise place.fail(f"has class folder {unknown[0]!r}, which is not one of the "
                             f"model's labels ({shown(sorted(label_ids))})")
        return {name: label_ids[name] for name in classes}, ()
    indices = {name: index for index, name in enumerate(classes)}
    listed = shown([f"{name}={index}" for name, index in indices.items()])
    return indices, (f"{place.where}: the model names no classes; class folders numbered "
                     f"in sorted order: {listed}",)
