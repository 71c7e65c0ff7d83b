"""The artifact store: a local folder (the embedded default) or an S3 / MinIO bucket.

Every write goes to a temporary name first and is then published under its final key,
so a crash never leaves an object that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import ParseResult, unquote, urlparse

from modelpress.errors import InvalidInput, StoreError
from modelpress.settings import within_allowed_roots

PUBLISHED_MODE = 0o644


@dataclass(frozen=True)
class StoredObject:
    uri: str
    sha256: str
    size_bytes: int


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Store(Protocol):
    """Where a job's artifacts live. Keys are '/'-separated and relative to the store root."""

    root_uri: str

    def put_file(self, local: Path, key: str) -> StoredObject: ...

    def get_file(self, key: str, local: Path) -> Path: ...

    def exists(self, key: str) -> bool: ...

    def uri(self, key: str) -> str: ...


class LocalStore:
    """A folder on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root_uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents and path != self.root:
            raise StoreError(f"key {key!r} escapes the store root {self.root}")
        return path

    def put_file(self, local: Path, key: str) -> StoredObject:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(handle)
        try:
            shutil.copyfile(local, temporary)
            os.chmod(temporary, PUBLISHED_MODE)  # mkstemp made it 0600
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return StoredObject(self.uri(key), sha256_of(target), target.stat().st_size)

    def get_file(self, key: str, local: Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise StoreError(f"{self.uri(key)} does not exist")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, local)
        return local

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()


def open_store(location: str | Path) -> Store:
    """A store for `file://…`, a plain path, or `s3://bucket/prefix`; a local one only
    under MODELPRESS_ALLOWED_FILE_ROOTS when that is set."""
    text = str(location)
    if text.startswith("s3://"):
        from modelpress.s3store import S3Store

        return S3Store.from_uri(text)
    folder = local_folder(text)
    if not within_allowed_roots(folder):
        raise StoreError(f"{text} lies outside the allowed roots (MODELPRESS_ALLOWED_FILE_ROOTS)")
    return LocalStore(folder)


def parsed_uri(uri: str) -> ParseResult:
    """`urlparse(uri)`, with StoreError naming the uri where urlparse raises ValueError
    (e.g. an unclosed `[` in the host, read as an IPv6 address), so that a hostile
    location is refused as invalid input rather than crashing its reader."""
    try:
        return urlparse(uri)
    except ValueError as error:
        raise StoreError(f"{uri[:200]}: not a valid uri ({error})") from None


def file_uri_path(uri: str) -> Path:
    """The path on this machine a `file://` uri names, for inputs and outputs alike.

    As RFC 8089 has it, no host or `localhost` means this machine; any other host names a
    file elsewhere, which modelpress cannot reach, so it is refused rather than dropped
    (`file://host/x` is not `/x`) or read as a relative path (`host/x`).
    """
    parsed = parsed_uri(uri)
    if parsed.netloc not in ("", "localhost"):
        raise StoreError(f"{uri} names host {parsed.netloc!r}; a file:// uri names a file on "
                         "this machine: file:///absolute/path")
    if not parsed.path:
        raise StoreError(f"{uri} names no path: file:///absolute/path")
    return Path(unquote(parsed.path))


def local_folder(location: str) -> Path:
    """The folder a `file://` uri or a plain path names (StoreError for other schemes)."""
    if location.startswith("file://"):
        return file_uri_path(location)
    if "://" in location:
        raise StoreError(f"{location}: an output must be a folder, file:// or s3:// uri")
    return Path(location)


def check_destination(location: str, where: str) -> None:
    """InvalidInput naming `where` when the store would refuse a local `location` (outside
    the allowed roots, or an unknown scheme): said before any step runs, not at publishing."""
    if location.startswith("s3://"):
        return
    try:
        open_store(location)
    except StoreError as error:
        raise InvalidInput(where, str(error)) from None
