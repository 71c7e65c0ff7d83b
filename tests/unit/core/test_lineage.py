"""Consumers verify artifacts against lineage.json before using them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpress.errors import StoreError
from modelpress.lineage import verify_outputs
from modelpress.store import LocalStore


def _publish(root: Path, tmp_path: Path) -> LocalStore:
    store = LocalStore(root)
    (tmp_path / "model.onnx").write_bytes(b"weights")
    stored = store.put_file(tmp_path / "model.onnx", "model.onnx")
    lineage = {"artifacts": {"model.onnx": {"uri": stored.uri, "sha256": stored.sha256,
                                            "sizeBytes": stored.size_bytes,
                                            "producer": "quantize"}}}
    (tmp_path / "lineage.json").write_text(json.dumps(lineage))
    store.put_file(tmp_path / "lineage.json", "lineage.json")
    return store


def test_untouched_outputs_verify(tmp_path: Path) -> None:
    store = _publish(tmp_path / "out", tmp_path)
    assert set(verify_outputs(store)["artifacts"]) == {"model.onnx"}


def test_a_changed_artifact_is_named(tmp_path: Path) -> None:
    store = _publish(tmp_path / "out", tmp_path)
    (tmp_path / "out" / "model.onnx").write_bytes(b"weightz")
    with pytest.raises(StoreError, match=r"model\.onnx was modified after publication"):
        verify_outputs(store)


def test_a_missing_artifact_is_named(tmp_path: Path) -> None:
    store = _publish(tmp_path / "out", tmp_path)
    (tmp_path / "out" / "model.onnx").unlink()
    with pytest.raises(StoreError, match=r"model\.onnx does not exist"):
        verify_outputs(store)


def test_keys_cannot_escape_the_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="escapes"):
        LocalStore(tmp_path / "out").put_file(tmp_path / "x", "../x")
