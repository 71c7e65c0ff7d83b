"""Consumers verify artifacts against lineage.json before using them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelpress.errors import StoreError
from modelpress.lineage import (
    Lineage,
    LineageArtifact,
    LineageInput,
    verify_outputs,
    write_lineage,
)
from modelpress.store import LocalStore


def _publish(root: Path, tmp_path: Path) -> LocalStore:
    store = LocalStore(root)
    (tmp_path / "model.onnx").write_bytes(b"weights")
    stored = store.put_file(tmp_path / "model.onnx", "model.onnx")
    lineage = Lineage(
        inputs={"model": LineageInput(uri="builtin://digits-cnn", sha256="0" * 64)},
        artifacts={"model.onnx": LineageArtifact(uri=stored.uri, sha256=stored.sha256,
                                                 size_bytes=stored.size_bytes,
                                                 producer="quantize")})
    store.put_file(write_lineage(lineage, tmp_path / "lineage.json"), "lineage.json")
    return store


def test_untouched_outputs_verify(tmp_path: Path) -> None:
    store = _publish(tmp_path / "out", tmp_path)
    lineage = verify_outputs(store)
    assert set(lineage.artifacts) == {"model.onnx"}
    assert lineage.artifacts["model.onnx"].producer == "quantize"
    assert lineage.inputs["model"].uri == "builtin://digits-cnn"


def test_lineage_is_camel_case_on_the_wire(tmp_path: Path) -> None:
    _publish(tmp_path / "out", tmp_path)
    wire = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert set(wire["artifacts"]["model.onnx"]) == {"uri", "sha256", "sizeBytes", "producer"}


def test_a_lineage_that_is_not_one_is_named(tmp_path: Path) -> None:
    store = _publish(tmp_path / "out", tmp_path)
    (tmp_path / "out" / "lineage.json").write_text('{"artifacts": {"model.onnx": {}}}')
    with pytest.raises(StoreError, match=r"lineage\.json is not a modelpress lineage document: "
                                         r"artifacts\.model\.onnx\.uri"):
        verify_outputs(store)


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
