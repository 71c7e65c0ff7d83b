"""The candidate step of a verification run: the model files the operator staged, taken as
the compressed model in place of the compression chain (docs/verification.md).

Each file is read from the staged location and kept only when its sha256 is the one the
operator computed while staging it (its record, handed to this step when the pipeline was
built); the working model is then ONNX with the original's task and inputs, so validate,
benchmark and report measure exactly those bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

from modelpress.api import StagedCandidate
from modelpress.components.report import MODEL  # the name the run's report published
from modelpress.errors import StoreError
from modelpress.records import CandidateRecord
from modelpress.store import Store, open_store, sha256_of

# A staged file is a plain name in the candidate's folder: nothing that could climb out.
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def take_candidate(candidate: StagedCandidate, original: Path, model_out: Path
                   ) -> CandidateRecord:
    """The staged files in `model_out` as an ONNX working model, each checked against the
    operator's record (StoreError naming the file when one differs or is missing)."""
    from modelpress.components.modelio import Manifest, read_manifest, write_manifest
    from modelpress.components.result import timed

    with timed() as clock:
        if MODEL not in candidate.sha256:
            raise StoreError(f"the staged candidate at {candidate.uri} records no {MODEL}")
        store = open_store(candidate.uri)
        model_out.mkdir(parents=True, exist_ok=True)
        for key, expected in sorted(candidate.sha256.items()):
            _checked_copy(store, key, expected, model_out)
        manifest = read_manifest(original)
        write_manifest(model_out, Manifest(format="onnx", task=manifest.task,
                                           inputs=manifest.inputs, source=candidate.uri))
        record = CandidateRecord(uri=candidate.uri, sha256=candidate.sha256, message=(
            f"took the staged candidate {candidate.uri}: {len(candidate.sha256)} file(s), "
            "each matching the operator's sha256"))
    return clock.stamp(record)


def _checked_copy(store: Store, key: str, expected: str, folder: Path) -> None:
    if not _FILE_NAME.match(key):
        raise StoreError(f"staged file name {key!r} is not a plain file name")
    local = store.get_file(key, folder / key)
    actual = sha256_of(local)
    if actual != expected:
        local.unlink()
        raise StoreError(f"{store.uri(key)} has sha256 {actual} but the operator staged "
                         f"{expected}: the candidate changed after staging, nothing measured")
