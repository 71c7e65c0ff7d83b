"""ONNX models whose weights live in external data files beside them.

Every model over 2 GB (protobuf's limit) keeps its initializers in one or more data files,
named by each tensor's `location`, relative to the model's folder. A user's model is
accepted when every location is a plain file name beside the model: absolute paths,
folders, `..` and symlinks that lead out of the folder are refused before anything is read
or downloaded. For s3:// and http(s):// models each data file is fetched from beside the
model (the same prefix), through the same checked download as the model itself.

Working models keep their weights external only when they are large
(`EXTERNAL_DATA_BYTES`); smaller ones are written as one self-contained file, which every
step, runtime and reader handles. The data of `X.onnx` is then `X.onnx.data` beside it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlparse, urlunparse

from modelpress.errors import InvalidInput

if TYPE_CHECKING:
    import onnx

# Above this many bytes of weights a working model keeps them in an external data file:
# well under protobuf's 2 GB limit, so that a single-file copy never fails to serialize.
EXTERNAL_DATA_BYTES = 1536 * 1024 * 1024
DATA_SUFFIX = ".data"

Fetch = Callable[[str, Path, str], Path]  # (uri, destination, field) -> destination


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in `graph`: initializers (sparse ones too) and node attributes,
    subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


def external_locations(model: onnx.ModelProto) -> list[str]:
    """The data files `model`'s tensors name, each once, in the order first named."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    locations = [ExternalDataInfo(tensor).location for tensor in _tensors(model.graph)
                 if uses_external_data(tensor)]
    return list(dict.fromkeys(locations))


def _header(path: Path) -> onnx.ModelProto:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def data_files(path: Path) -> list[Path]:
    """The external data files of the ONNX model at `path` (none for a single file)."""
    return [path.parent / location for location in external_locations(_header(path))]


def size_bytes(path: Path) -> int:
    """Bytes on disk of the model at `path` and its external data."""
    return path.stat().st_size + sum(data.stat().st_size for data in data_files(path))


def is_large(path: Path) -> bool:
    """Whether the model at `path` should keep its weights in external data."""
    return size_bytes(path) > EXTERNAL_DATA_BYTES


# ----------------------------------------------------------------------------- user models


def gather_external_data(model: onnx.ModelProto, path: Path, uri: str, where: str,
                         fetch: Fetch) -> None:
    """Check every external data location of `model`, the user's model read from `uri`
    into `path`, then make its files available beside `path`: in place for file://,
    fetched from beside the model for any other scheme. Nothing is read or downloaded
    before all locations are checked."""
    locations = external_locations(model)
    for location in locations:
        _check_location(location, uri, where, path.name)
    if urlparse(uri).scheme == "file":
        for location in locations:
            _check_in_folder(path.parent, location, uri, where)
        return
    for location in locations:
        fetch(_beside(uri, location), path.parent / location, where)


def _check_location(location: str, uri: str, where: str, model_name: str) -> None:
    plain = location not in ("", ".", "..") and not any(
        mark in location for mark in ("/", "\\", "\0")) and location != model_name
    if not plain:
        raise InvalidInput(where, f"{uri}: external data location {location!r} is not a plain "
                                  "file name beside the model (absolute paths, folders and `..` "
                                  "are refused)")


def _check_in_folder(folder: Path, location: str, uri: str, where: str) -> None:
    """The data file must be a file in `folder` itself, also once symlinks are followed."""
    data = folder / location
    if not data.exists():
        raise InvalidInput(where, f"{uri}: external data file {location!r} is missing beside "
                                  "the model")
    if data.resolve().parent != folder.resolve() or not data.resolve().is_file():
        raise InvalidInput(where, f"{uri}: external data {location!r} leads outside the "
                                  "model's folder (a symlink) or is not a file")


def _beside(uri: str, location: str) -> str:
    """The uri of `location` in the same folder (prefix) as the model at `uri`."""
    parsed = urlparse(uri)
    folder = parsed.path.rsplit("/", 1)[0]
    name = location if parsed.scheme == "s3" else quote(location)
    return urlunparse(parsed._replace(path=f"{folder}/{name}", params="", query="",
                                      fragment=""))


# ----------------------------------------------------------------------------- working models


def write_working_copy(source: Path, target: Path) -> None:
    """Write the user's model at `source` (its data files beside it) to `target`: one file,
    or `target` plus `target.data` when large."""
    import onnx

    if not external_locations(_header(source)):
        shutil.copyfile(source, target)
    else:
        save(onnx.load(str(source)), target, external=is_large(source))


def save(model: onnx.ModelProto, target: Path, external: bool) -> None:
    """Save `model` to `target`, its weights in `target.data` when `external`."""
    import onnx

    target.with_name(target.name + DATA_SUFFIX).unlink(missing_ok=True)
    onnx.save_model(model, str(target), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=target.name + DATA_SUFFIX)


def copy_onnx(source: Path, target: Path) -> None:
    """Copy a working model with its external data: `target` plus `target.data` (or
    `target.N.data` for each further data file), the locations rewritten to match."""
    import onnx

    model = _header(source)
    locations = external_locations(model)
    if not locations:
        shutil.copyfile(source, target)
        return
    renamed = {location: target.name + (f".{index}" if index else "") + DATA_SUFFIX
               for index, location in enumerate(locations)}
    for location, name in renamed.items():
        shutil.copyfile(source.parent / location, target.parent / name)
    for tensor in _tensors(model.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = renamed[entry.value]
    onnx.save_model(model, str(target))
