"""Lineage: what each published artifact is, who produced it, and from which inputs.

`lineage.json` records every artifact's sha256 and size; `verify_outputs` recomputes them
from the store, so a consumer never uses an artifact that changed after publication.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from modelpress.errors import StoreError
from modelpress.store import Store, sha256_of

LINEAGE = "lineage.json"


def read_lineage(store: Store, scratch: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(store.get_file(LINEAGE, scratch / LINEAGE).read_text())
    return document


def verify_outputs(store: Store) -> dict[str, Any]:
    """Download every artifact lineage.json names and check its digest; return the lineage."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        lineage = read_lineage(store, folder)
        for key, record in lineage["artifacts"].items():
            local = store.get_file(key, folder / "artifact")
            digest = sha256_of(local)
            if digest != record["sha256"]:
                raise StoreError(f"{store.uri(key)} was modified after publication: sha256 "
                                 f"{digest[:12]}… differs from lineage.json's "
                                 f"{record['sha256'][:12]}…")
    return lineage
