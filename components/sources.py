"""Bring a model or data uri to a local file: file://, s3://, http(s)://."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

from modelpress.errors import InvalidInput, StoreError
from modelpress.settings import get_settings, within_allowed_roots
from modelpress.store import file_uri_path


def local_file(uri: str) -> Path:
    """The path a file:// uri names; it must exist and lie under an allowed root, if any."""
    path = file_uri_path(uri).resolve()
    if not within_allowed_roots(path):
        raise FileNotFoundError(f"{uri} lies outside the allowed roots")
    if not path.is_file():
        raise FileNotFoundError(f"{uri} does not exist")
    return path


def fetch_to(uri: str, destination: Path, where: str) -> Path:
    """Copy what `uri` names to `destination`; errors name `where` (a spec field) and the uri."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    scheme = urlparse(uri).scheme
    try:
        if scheme == "file":
            shutil.copyfile(local_file(uri), destination)
        elif scheme == "s3":
            _fetch_s3(uri, destination)
        elif scheme in ("http", "https"):
            with urllib.request.urlopen(uri, timeout=60) as response, destination.open("wb") as out:
                shutil.copyfileobj(response, out)
        else:
            raise InvalidInput(where, f"{uri}: scheme {scheme}:// cannot be fetched here")
    except (FileNotFoundError, StoreError, urllib.error.URLError, OSError) as error:
        raise InvalidInput(where, str(error)) from None
    return destination


def readable_path(uri: str, scratch: Path, where: str) -> Path:
    """A local file holding what `uri` names: a file:// uri's own file, read in place (no
    copy), or a download into `scratch`."""
    if urlparse(uri).scheme == "file":
        try:
            return local_file(uri)
        except (FileNotFoundError, StoreError) as error:
            raise InvalidInput(where, str(error)) from None
    return fetch_to(uri, scratch / f"download{file_suffix(uri)}", where)


def _fetch_s3(uri: str, destination: Path) -> None:
    from modelpress.store import open_store

    bucket_and_key = uri.removeprefix("s3://")
    bucket, _, key = bucket_and_key.partition("/")
    open_store(f"s3://{bucket}").get_file(key, destination)


def file_suffix(uri: str) -> str:
    return Path(urlparse(uri).path).suffix.lower()


def builtin_name(uri: str) -> str:
    """`builtin://digits?split=test` -> "digits"."""
    parsed = urlparse(uri)
    return parsed.netloc + parsed.path


def builtin_options(uri: str, where: str, known: Mapping[str, tuple[str, ...]]) -> dict[str, str]:
    """The query of a `builtin://` uri, each key one of `known` and each value one it lists;
    anything else is bad input, never silently replaced by a default."""
    pairs = parse_qsl(urlparse(uri).query, keep_blank_values=True)
    options = dict(pairs)
    if len(options) != len(pairs):
        raise InvalidInput(where, f"{uri} repeats an option")
    for key, value in options.items():
        if key not in known:
            accepted = ", ".join(known) or "none"
            raise InvalidInput(where, f"{uri}: unknown option {key!r}; accepted: {accepted}")
        if value not in known[key]:
            raise InvalidInput(where, f"{uri}: {key}={value!r} is not one of "
                                      f"{', '.join(known[key])}")
    return options


def assert_fetchable(uri: str, where: str) -> None:
    """Fail early on schemes this installation cannot fetch (hf:// needs the internet)."""
    if uri.startswith("hf://"):
        raise InvalidInput(where, f"{uri}: hf:// needs network access to the Hugging Face hub; "
                                  "export the model to ONNX or a state_dict and use file:// or s3://")
    if get_settings().s3_endpoint is None and uri.startswith("s3://"):
        raise InvalidInput(where, f"{uri}: set MODELPRESS_S3_ENDPOINT to read from S3")
