"""Bring a model or data uri to a local file: file://, s3://, http(s)://."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from modelpress.errors import InvalidInput, StoreError
from modelpress.settings import get_settings, within_allowed_roots


def local_file(uri: str) -> Path:
    """The path a file:// uri names; it must exist and lie under an allowed root, if any."""
    path = Path(unquote(urlparse(uri).netloc + urlparse(uri).path)).resolve()
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


def _fetch_s3(uri: str, destination: Path) -> None:
    from modelpress.store import open_store

    bucket_and_key = uri.removeprefix("s3://")
    bucket, _, key = bucket_and_key.partition("/")
    open_store(f"s3://{bucket}").get_file(key, destination)


def file_suffix(uri: str) -> str:
    return Path(urlparse(uri).path).suffix.lower()


def builtin_name(uri: str) -> tuple[str, dict[str, str]]:
    """`builtin://digits?split=test` -> ("digits", {"split": "test"})."""
    parsed = urlparse(uri)
    options = dict(pair.split("=", 1) for pair in parsed.query.split("&") if "=" in pair)
    return parsed.netloc + parsed.path, options


def assert_fetchable(uri: str, where: str) -> None:
    """Fail early on schemes this installation cannot fetch (hf:// needs the internet)."""
    if uri.startswith("hf://"):
        raise InvalidInput(where, f"{uri}: hf:// needs network access to the Hugging Face hub; "
                                  "export the model to ONNX or a state_dict and use file:// or s3://")
    if get_settings().s3_endpoint is None and uri.startswith("s3://"):
        raise InvalidInput(where, f"{uri}: set MODELPRESS_S3_ENDPOINT to read from S3")
