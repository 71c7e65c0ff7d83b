"""The builtin Hugging Face folders and their data: built offline, loadable, actually trained.

The folders are trained on first use (about 2.5 minutes for the docstring classifier and under
a minute for the digits ViT on 2 shared cores), into the cache every job uses, so the
end-to-end tests that hand them over as folders build nothing again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelpress.components import zoo
from modelpress.errors import InvalidInput
from modelpress.settings import get_settings


@pytest.fixture(scope="module")
def cache() -> Path:
    return get_settings().cache_dir


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_docstrings_splits_are_deterministic_and_disjoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_CACHE_DIR", str(tmp_path / "one"))
    first = {split: zoo.docstrings_file(split).read_bytes() for split in ("eval", "train")}
    monkeypatch.setenv("MODELPRESS_CACHE_DIR", str(tmp_path / "two"))
    again = {split: zoo.docstrings_file(split).read_bytes() for split in ("eval", "train")}
    assert first == again
    evaluation, train = _rows(zoo.docstrings_file("eval")), _rows(zoo.docstrings_file("train"))
    shipped = _rows(zoo.DOCSTRINGS_FILE)
    assert not {row["text"] for row in evaluation} & {row["text"] for row in train}
    assert len(evaluation) + len(train) == len(shipped)
    assert abs(len(evaluation) / len(shipped) - 0.2) < 0.01
    labels = zoo.docstring_labels()
    assert {row["label"] for row in evaluation} == {row["label"] for row in train} == set(labels)
    assert len(labels) >= 6


def test_the_shipped_docstrings_are_unique_sentences() -> None:
    rows = _rows(zoo.DOCSTRINGS_FILE)
    texts = [row["text"] for row in rows]
    assert len(set(texts)) == len(texts)
    assert all(len(text.split()) >= 4 and "\n" not in text for text in texts)


def test_docstring_classifier_folder_classifies_held_out_docstrings(cache: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = zoo.HF_FOLDERS["docstring-classifier"]()
    assert folder.parent.parent == cache and (folder / "model.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, local_files_only=True, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert [model.config.id2label[index] for index in range(model.config.num_labels)] == \
        zoo.docstring_labels()
    rows = _rows(zoo.dataset_path("docstrings", "eval"))
    encoded = tokenizer([row["text"] for row in rows], truncation=True,
                        max_length=zoo.MINILM_MAX_TOKENS, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**encoded).logits.argmax(-1).tolist()
    accuracy = np.mean([model.config.id2label[index] == row["label"]
                        for index, row in zip(predicted, rows, strict=True)])
    assert accuracy > 0.7  # measured 0.80; chance (the largest package) is 0.2


def test_digits_vit_folder_classifies_the_test_images(cache: Path) -> None:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    folder = zoo.HF_FOLDERS["digits-vit"]()
    assert folder.parent.parent == cache and (folder / "model.safetensors").is_file()
    model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    files = sorted(zoo.dataset_path("digits-images", "test").glob("*/*.png"))
    with torch.no_grad():
        pixels = processor([Image.open(path) for path in files], return_tensors="pt")
        predicted = model(**pixels).logits.argmax(-1).tolist()
    accuracy = np.mean([model.config.id2label[index] == path.parent.name
                        for index, path in zip(predicted, files, strict=True)])
    assert accuracy > 0.85  # measured 0.93; chance is 0.1


def test_digits_image_folder_holds_the_digits_split(cache: Path) -> None:
    from PIL import Image

    for split in zoo.DATASET_SPLITS["digits-images"]:
        root = zoo.digits_image_folder(split)
        arrays = zoo.digits(split)
        assert sorted(path.name for path in root.iterdir()) == [str(d) for d in range(10)]
        for digit in range(10):
            assert len(list((root / str(digit)).glob("*.png"))) == int((arrays["y"] == digit).sum())
    first = sorted((zoo.digits_image_folder("test") / str(zoo.digits("test")["y"][0])).glob("*"))[0]
    image = Image.open(first)
    assert image.mode == "RGB" and image.size == (zoo.DIGITS_IMAGE_SIZE,) * 2
    expected = np.round(zoo.digits("test")["x"][0, 0] * 255)
    assert np.array_equal(np.asarray(image)[::4, ::4, 0], expected)


def test_builtin_hf_names_are_builtin_models_and_datasets_have_splits() -> None:
    assert set(zoo.HF_FOLDERS) <= set(zoo.BUILTIN_MODELS)
    assert zoo.DATASET_SPLITS["docstrings"][0] == "eval"
    assert zoo.DATASET_SPLITS["digits-images"][0] == "test"
    with pytest.raises(InvalidInput, match="digits"):
        zoo.dataset_path("digits", "test")


def test_a_builder_that_loses_the_race_keeps_the_winners_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_CACHE_DIR", str(tmp_path))
    final = tmp_path / "builtin" / "thing-v1"

    def build_while_another_finishes(scratch: Path) -> None:
        (scratch / "mine").write_text("loser")
        final.mkdir()
        (final / "theirs").write_text("winner")

    assert zoo._cached_folder("thing-v1", build_while_another_finishes) == final
    assert [path.name for path in final.iterdir()] == ["theirs"]
    assert [path.name for path in final.parent.iterdir()] == ["thing-v1"]  # no scratch left


def test_a_failed_build_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_CACHE_DIR", str(tmp_path))

    def broken(scratch: Path) -> None:
        (scratch / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        zoo._cached_folder("thing-v1", broken)
    assert list((tmp_path / "builtin").iterdir()) == []
