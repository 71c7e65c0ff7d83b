"""Where inputs come from: file:// uris (read like outputs), builtin:// names and options,
and the shipped sentence set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelpress.api import CompressionSpec
from modelpress.components import zoo
from modelpress.components.data import ReadOptions, load_dataset
from modelpress.components.fetch import check_inputs, fetch, load_datasets, read_model
from modelpress.components.preprocess import Preprocessor
from modelpress.components.sources import builtin_options, fetch_to, local_file
from modelpress.errors import InvalidInput, StoreError
from modelpress.store import file_uri_path, local_folder, open_store, sha256_of

# ----------------------------------------------------------------------------- file://


@pytest.mark.parametrize("prefix", ["file://", "file://localhost"])
def test_inputs_and_outputs_read_a_file_uri_the_same_way(tmp_path: Path, prefix: str) -> None:
    (tmp_path / "data.npz").write_bytes(b"x")
    assert local_file(f"{prefix}{tmp_path}/data.npz") == (tmp_path / "data.npz").resolve()
    assert local_folder(f"{prefix}{tmp_path}/out") == tmp_path / "out"
    assert file_uri_path(f"{prefix}{tmp_path}/a%20b") == tmp_path / "a b"


def test_a_file_uri_naming_another_host_is_refused_for_inputs_and_outputs(
        tmp_path: Path) -> None:
    (tmp_path / "data.npz").write_bytes(b"x")
    uri = f"file://elsewhere{tmp_path}/data.npz"
    with pytest.raises(StoreError, match="names host 'elsewhere'"):
        local_file(uri)
    with pytest.raises(StoreError, match="names host 'elsewhere'"):
        open_store(uri)
    with pytest.raises(InvalidInput, match="^spec.data.eval: .*names host 'elsewhere'"):
        fetch_to(uri, tmp_path / "copy.npz", "spec.data.eval")


def test_a_file_uri_without_a_path_is_refused() -> None:
    with pytest.raises(StoreError, match="names no path"):
        file_uri_path("file://localhost")


@pytest.mark.parametrize("uri", ["file://[0/models/", "s3://[bucket/models/"])
def test_a_malformed_host_is_a_store_error_naming_the_uri(uri: str) -> None:
    with pytest.raises(StoreError, match=r"not a valid uri"):
        open_store(uri)


# ----------------------------------------------------------------------------- builtin://


SPLITS = {"split": ("test", "train")}


def test_builtin_options_are_read() -> None:
    assert builtin_options("builtin://digits?split=train", "f", SPLITS) == {"split": "train"}
    assert builtin_options("builtin://digits", "f", SPLITS) == {}


@pytest.mark.parametrize(("uri", "problem"), [
    ("builtin://digits?splt=train", "unknown option 'splt'; accepted: split"),
    ("builtin://digits?split=validation", "split='validation' is not one of test, train"),
    ("builtin://digits?split=", "split='' is not one of"),
    ("builtin://digits?train", "unknown option 'train'"),
    ("builtin://digits?split=test&split=train", "repeats an option"),
])
def test_unknown_builtin_options_are_bad_input(uri: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        builtin_options(uri, "spec.data.eval", SPLITS)
    assert caught.value.where == "spec.data.eval"
    assert problem in caught.value.problem


@pytest.mark.parametrize(("uri", "problem"), [
    ("builtin://sentences?split=test", "split='test' is not one of eval, train"),
    ("builtin://digits?splt=train", "unknown option 'splt'"),
    ("builtin://mnist", "unknown builtin dataset 'mnist'"),
])
def test_builtin_datasets_refuse_what_they_do_not_have(uri: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=f"^spec.data.train: .*{problem}"):
        load_dataset(uri, "spec.data.train", Preprocessor())


def test_a_builtin_model_takes_no_options() -> None:
    spec = CompressionSpec.model_validate({
        "model": {"uri": "builtin://digits-cnn?version=2"}, "data": {"eval": "builtin://digits"},
        "steps": [{"quantize": {}}]})
    with pytest.raises(InvalidInput, match=r"^spec.model.uri: .*unknown option 'version'"):
        check_inputs(spec)


# ----------------------------------------------------------------------------- sentences


def test_the_sentence_splits_come_from_the_shipped_file() -> None:
    pool = zoo.SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    evaluation, train = zoo.sentences("eval"), zoo.sentences("train")
    assert len(evaluation) == 256 and len(train) == len(pool) - 256
    assert sorted(evaluation + train) == sorted(pool)
    assert all(line.strip() == line and line for line in pool)


def _minilm_spec() -> CompressionSpec:
    return CompressionSpec.model_validate({
        "model": {"uri": "builtin://minilm-l6", "task": "embedding"},
        "data": {"eval": "builtin://sentences"}, "steps": [{"quantize": {}}]})


def test_sentences_record_the_shipped_files_digest() -> None:
    dataset = load_dataset("builtin://sentences?split=eval", "spec.data.eval",
                           read_model(_minilm_spec(), Path("."), False).preprocessor)
    assert dataset.source_sha256 == sha256_of(zoo.SENTENCES_FILE)
    assert dataset.arrays["input_ids"].shape[0] == 256


# ----------------------------------------------------------------------------- reading once


def test_lineage_records_the_digest_of_the_file_read(tmp_path: Path) -> None:
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 1, 8, 8)), y=np.arange(4))
    uri = (tmp_path / "eval.npz").as_uri()
    spec = CompressionSpec.model_validate({
        "model": {"uri": "builtin://digits-cnn"}, "data": {"eval": uri},
        "steps": [{"quantize": {}}]})
    record = fetch(spec, tmp_path / "model", tmp_path / "data")
    assert record.lineage_inputs["data.eval"].sha256 == sha256_of(tmp_path / "eval.npz")
    assert record.lineage_inputs["model"].sha256 == sha256_of(tmp_path / "model" / "weights.pt")


def test_a_uri_named_twice_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import modelpress.components.fetch as fetch_module

    calls: list[str] = []
    real = fetch_module.load_one_dataset

    def counted(uri: str, where: str, preprocessor: Preprocessor,
                options: ReadOptions | None = None) -> object:
        calls.append(uri)
        return real(uri, where, preprocessor, options)

    monkeypatch.setattr(fetch_module, "load_one_dataset", counted)
    spec = CompressionSpec.model_validate({
        "model": {"uri": "builtin://digits-cnn"},
        "data": {"eval": "builtin://digits", "calibration": "builtin://digits?split=train",
                 "train": "builtin://digits?split=train"},
        "steps": [{"quantize": {}}]})
    datasets = load_datasets(spec, Preprocessor())
    assert calls == ["builtin://digits", "builtin://digits?split=train"]
    assert datasets["train"] is datasets["calibration"]
