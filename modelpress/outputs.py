"""Where a run publishes: checked before any step runs, and held by one run at a time.

A second run into the same location would interleave its artifacts with the first's (and
print the other's figures); an output that is or holds one of the job's own inputs would
overwrite the user's model or data. Both are refused up front, naming the field.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from modelpress.api import CREDENTIALS_REFUSED, holds_credentials
from modelpress.errors import InvalidInput, StoreError
from modelpress.settings import get_settings
from modelpress.store import check_destination, local_folder


def check_output(location: str, where: str, inputs: Mapping[str, str]) -> None:
    """InvalidInput naming `where` when the output is unusable: refused by the store, an
    existing file, or the folder of (or above) one of `inputs` (field -> uri)."""
    check_uri(location, where)
    check_destination(location, where)
    if location.startswith("s3://"):
        _check_s3_clear_of_inputs(location, where, inputs)
        return
    folder = _resolved(location)
    if folder.exists() and not folder.is_dir():
        raise InvalidInput(where, f"{location} is an existing file; an output must be a folder")
    for field, uri in inputs.items():
        if not uri.startswith("file://"):
            continue
        try:
            source = _resolved(uri)
        except StoreError as error:
            raise InvalidInput(field, str(error)) from None
        if source == folder or folder in source.parents:
            raise InvalidInput(where, f"{location} holds {field} ({uri}); publishing there "
                                      "could overwrite it: choose another output folder")


def check_uri(location: str, where: str) -> None:
    """A location given on the command line obeys the spec's rule: no credentials in it
    (they would land in logs, the run's records and a compiled pipeline)."""
    if holds_credentials(location):
        raise InvalidInput(where, CREDENTIALS_REFUSED)


def _check_s3_clear_of_inputs(location: str, where: str, inputs: Mapping[str, str]) -> None:
    prefix = location.rstrip("/") + "/"
    for field, uri in inputs.items():
        if uri.startswith("s3://") and (uri + "/").startswith(prefix):
            raise InvalidInput(where, f"{location} holds {field} ({uri}); publishing there "
                                      "could overwrite it: choose another output prefix")


def _resolved(location: str) -> Path:
    return local_folder(location).expanduser().resolve()


def lock_path(location: str) -> Path:
    """The lock file of an output location, in the cache (never inside the output)."""
    key = location if location.startswith("s3://") else str(_resolved(location))
    digest = hashlib.sha256(key.rstrip("/").encode()).hexdigest()[:32]
    return get_settings().cache_dir / "locks" / f"{digest}.lock"


@contextmanager
def output_lock(location: str, where: str) -> Iterator[None]:
    """Hold `location` for this run; InvalidInput naming `where` when another run on this
    machine holds it. The kernel drops the lock when the process ends, however it ends."""
    path = lock_path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "?"
            raise InvalidInput(where, f"another modelpress run (pid {holder}) is publishing "
                                      f"to {location}; wait for it or choose another output")\
                from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(descriptor)
