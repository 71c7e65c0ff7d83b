"""Lineage: what each published artifact is, who produced it, and from which inputs.

`lineage.json` records every artifact's sha256 and size; `verify_outputs` recomputes them
from the store, so a consumer never uses an artifact that changed after publication.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field, ValidationError

from modelpress.api import Model
from modelpress.errors import StoreError
from modelpress.store import Store, sha256_of

LINEAGE = "lineage.json"


class LineageInput(Model):
    """One input the job read (the model, each dataset): where from, and its digest. A
    validation split carved by modelpress names the set it came from and its seed; the set
    it came from says how many rows it gave up (docs/evaluation.md)."""

    uri: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    rows: int | None = Field(default=None, description="Datasets: the rows the job used.")
    carved_from: str | None = Field(default=None,
                                    description="A carved split: the field it came from.")
    seed: int | None = Field(default=None, description="A carved split: its seed.")
    held_out_rows: int | None = Field(
        default=None, description="Rows carved out of this set into the validation split.")


class LineageStep(Model):
    name: str
    seconds: float
    message: str = ""


class LineageArtifact(Model):
    uri: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int
    producer: str = Field(description="The step that wrote it, named as the steps record.")


class Lineage(Model):
    """lineage.json: the inputs, the steps in order, and every published artifact by key."""

    inputs: dict[str, LineageInput] = Field(default_factory=dict)
    steps: list[LineageStep] = Field(default_factory=list)
    artifacts: dict[str, LineageArtifact]


def write_lineage(lineage: Lineage, path: Path) -> Path:
    path.write_text(lineage.model_dump_json(by_alias=True, exclude_none=True, indent=2),
                    encoding="utf-8")
    return path


def read_lineage(store: Store, scratch: Path) -> Lineage:
    local = store.get_file(LINEAGE, scratch / LINEAGE)
    try:
        return Lineage.model_validate_json(local.read_text(encoding="utf-8"))
    except ValidationError as error:
        raise StoreError(f"{store.uri(LINEAGE)} is not a modelpress lineage document: "
                         f"{first_problem(error)}") from None


def first_problem(error: ValidationError) -> str:
    """The first thing a document got wrong, as one line: `field.path: what`."""
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"])
    return f"{where}: {problem['msg']}" if where else str(problem["msg"])


def verify_outputs(store: Store) -> Lineage:
    """Download every artifact lineage.json names and check its digest; return the lineage."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        lineage = read_lineage(store, folder)
        for key, record in lineage.artifacts.items():
            local = store.get_file(key, folder / "artifact")
            digest = sha256_of(local)
            if digest != record.sha256:
                raise StoreError(f"{store.uri(key)} was modified after publication: sha256 "
                                 f"{digest[:12]}… differs from lineage.json's "
                                 f"{record.sha256[:12]}…")
    return lineage
