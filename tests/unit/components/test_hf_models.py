"""Hugging Face model folders as a model source: read from local files only, checked,
wrapped to one tensor out, traced and exported like any torch module, and carried with
their tokenizer into the working model.

The folders are tiny models built offline here (BERT with MiniLM's tokenizer, ViT with a
32x32 image processor, a sentence-transformers folder) and written with save_pretrained.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hf_folders import LABELS, copy_tokenizer, tiny_bert_config, write_text_classifier

from modelpress.api import CompressionSpec
from modelpress.components import zoo
from modelpress.components.fetch import check_inputs, fetch
from modelpress.components.hf import (
    HFModel,
    HFTaskModule,
    load_task_module,
    read_hf_folder,
    task_of,
)
from modelpress.components.modelio import (
    PREPROCESSOR,
    check_step_formats,
    export_onnx,
    load_torch,
    read_manifest,
    save_torch,
)
from modelpress.components.sources import folder_member, readable_folder
from modelpress.errors import InvalidInput

TEXTS = ["a short sentence", "a somewhat longer sentence with more words in it", "hi",
         "the standard library has many modules"]
MARKER = "RAN"


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_text_classifier(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=64, num_labels=4)
    ViTForImageClassification(config).save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def embedding_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers layout: CLS pooling, then Normalize."""
    from transformers import BertModel

    folder = tmp_path_factory.mktemp("st")
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(str(folder))
    copy_tokenizer(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": True,
         "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False}))
    return folder


def _tokens(folder: Path, texts: list[str]) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    encoded = tokenizer(texts, padding="longest", return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in ("input_ids", "attention_mask")}


def _example(folder: Path, module: HFTaskModule, rows: int) -> dict[str, np.ndarray]:
    if module.input_names == ("pixel_values",):
        return {"pixel_values": np.random.default_rng(rows).normal(
            size=(rows, 3, 32, 32)).astype(np.float32)}
    return _tokens(folder, (TEXTS * 4)[:rows])


def _read(folder: Path, task: str = "classification", trusted: bool = False) -> HFModel:
    return read_hf_folder(folder, task, trusted, folder.as_uri() + "/", "spec.model.uri")


# ----------------------------------------------------------------------------- reading


def test_a_text_classifier_folder_says_what_it_takes_and_how_data_is_prepared(
        text_folder: Path) -> None:
    read = _read(text_folder, "text-classification")
    inputs = [(spec.name, spec.dtype, spec.shape) for spec in read.signature.inputs]
    assert inputs == [("input_ids", "int64", ("batch", "sequence")),
                      ("attention_mask", "int64", ("batch", "sequence"))]
    assert read.signature.classes == 3
    assert read.preprocessor.folder == text_folder
    assert read.preprocessor.label_ids == LABELS
    assert read.preprocessor.max_tokens == 128
    assert read.preprocessor.input_names == ("input_ids", "attention_mask")


def test_the_wrapper_returns_the_models_own_logits(text_folder: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    module = _read(text_folder).module
    reference = AutoModelForSequenceClassification.from_pretrained(
        str(text_folder), local_files_only=True, attn_implementation="eager").eval()
    tokens = _tokens(text_folder, TEXTS)
    ids, mask = torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
        got = module(ids, mask)
    assert isinstance(got, torch.Tensor)
    torch.testing.assert_close(got, expected)


def test_an_image_classifier_takes_pixels_at_its_processors_size(image_folder: Path) -> None:
    read = _read(image_folder)
    (pixels,) = read.signature.inputs
    assert (pixels.name, pixels.dtype, pixels.shape) == ("pixel_values", "float32",
                                                         ("batch", 3, 32, 32))
    assert read.signature.classes == 4
    assert read.preprocessor.label_ids is None  # LABEL_0 … mean nothing
    assert read.module.task.head == "image-classification"


def test_an_embedding_folder_pools_as_its_modules_declare(embedding_folder: Path) -> None:
    from transformers import AutoModel

    read = _read(embedding_folder, "embedding")
    assert (read.module.task.pooling, read.module.task.normalize) == ("cls", True)
    assert read.signature.classes is None
    tokens = _tokens(embedding_folder, TEXTS)
    ids, mask = torch.from_numpy(tokens["input_ids"]), torch.from_numpy(tokens["attention_mask"])
    encoder = AutoModel.from_pretrained(str(embedding_folder), local_files_only=True,
                                        attn_implementation="eager").eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0], dim=-1)
        got = read.module(ids, mask)
    torch.testing.assert_close(got, expected)


def test_an_embedding_folder_without_modules_is_mean_pooled_and_normalised(
        text_folder: Path) -> None:
    task = task_of(text_folder, {}, "embedding", "uri", "spec.model.uri")
    assert (task.head, task.pooling, task.normalize) == ("embedding", "mean", True)


@pytest.mark.parametrize("which", ["text", "image", "embedding"])
def test_tracing_and_onnx_export_match_the_module_on_other_shapes(
        which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import onnxruntime as ort

    folder = request.getfixturevalue(f"{which}_folder")
    module = _read(folder, "embedding" if which == "embedding" else "classification").module
    names = list(module.input_names)
    sample, other = _example(folder, module, 2), _example(folder, module, 7)
    other_tensors = tuple(torch.from_numpy(other[name]) for name in names)
    with torch.no_grad():
        expected = module(*other_tensors)
        traced = torch.jit.trace(module, tuple(torch.from_numpy(sample[n]) for n in names))
        torch.testing.assert_close(traced(*other_tensors), expected)
    export_onnx(module, sample, names, tmp_path / "m.onnx")
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, other)[0]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)


# ----------------------------------------------------------------------------- refusals


def _write_custom_code_folder(folder: Path) -> Path:
    """A folder whose config names custom code that, if imported, leaves MARKER."""
    write_text_classifier(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    planted = f"import pathlib\npathlib.Path({str(folder / MARKER)!r}).touch()\n"
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (folder / name).write_text(planted)
    return folder


def _spec(model_uri: str, eval_uri: str, steps: list | None = None) -> CompressionSpec:
    return CompressionSpec.model_validate({
        "model": {"uri": model_uri, "task": "text-classification"}, "data": {"eval": eval_uri},
        "steps": steps or [{"quantize": {"mode": "dynamic"}}]})


def _eval_npz(folder: Path, path: Path) -> Path:
    tokens = _tokens(folder, TEXTS)
    np.savez(path, **tokens, y=np.array([0, 1, 2, 1]))
    return path


def test_custom_code_is_refused_without_trust_and_never_runs(tmp_path: Path) -> None:
    folder = _write_custom_code_folder(tmp_path / "custom")
    spec = _spec(folder.as_uri() + "/", _eval_npz(folder, tmp_path / "eval.npz").as_uri())
    with pytest.raises(InvalidInput) as caught:
        check_inputs(spec)
    assert caught.value.where == "spec.model.uri"
    assert "custom code" in caught.value.problem and "--trust-model-code" in caught.value.problem
    assert not (folder / MARKER).exists()


def test_a_folder_with_only_a_pickled_checkpoint_is_refused(tmp_path: Path,
                                                            text_folder: Path) -> None:
    folder = tmp_path / "bin"
    shutil.copytree(text_folder, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(InvalidInput, match=r"^spec.model.uri: .*convert to safetensors"):
        _read(folder)


def test_sharded_safetensors_are_read_and_a_shard_outside_the_folder_is_refused(
        tmp_path: Path, text_folder: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "sharded"
    AutoModelForSequenceClassification.from_pretrained(str(text_folder)).save_pretrained(
        str(folder), max_shard_size="300KB")
    copy_tokenizer(folder)
    assert (folder / "model.safetensors.index.json").is_file()
    assert _read(folder).signature.classes == 3
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = "../elsewhere.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInput, match="shard '../elsewhere.safetensors'"):
        _read(folder)


def test_a_folder_without_config_or_with_a_broken_config_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(InvalidInput, match="has no config.json"):
        _read(folder)
    (folder / "config.json").write_text("[1, 2")
    with pytest.raises(InvalidInput, match="config.json is not a JSON object"):
        _read(folder)


def test_a_classifier_folder_without_its_head_is_refused(embedding_folder: Path) -> None:
    with pytest.raises(InvalidInput, match="no trained weights for classifier"):
        _read(embedding_folder, "text-classification")


@pytest.mark.parametrize("key", ["m/../x.json", "m//x.json", "m/./x.json", "m/a\\b.json",
                                 "other/x.json", "m/x\n.json"])
def test_an_s3_object_that_is_no_plain_path_in_the_folder_is_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match=r"^spec.model.uri: s3://b/m/: object .* is not a "
                                           r"plain path inside the folder"):
        folder_member(key, "m/", "s3://b/m/", "spec.model.uri")


def test_an_s3_object_in_a_subfolder_keeps_its_place() -> None:
    assert folder_member("m/1_Pooling/config.json", "m/", "s3://b/m/",
                         "spec.model.uri").parts == ("1_Pooling", "config.json")


def test_a_file_folder_outside_the_allowed_roots_is_refused(
        tmp_path: Path, text_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_ALLOWED_FILE_ROOTS", json.dumps([str(tmp_path)]))
    with pytest.raises(InvalidInput, match="outside the allowed roots"):
        readable_folder(text_folder.as_uri() + "/", tmp_path, "spec.model.uri")


def test_a_symlink_leading_out_of_the_folder_is_refused(tmp_path: Path,
                                                        text_folder: Path) -> None:
    folder = tmp_path / "linked"
    shutil.copytree(text_folder, folder)
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", folder / "vocab.txt.extra")
    with pytest.raises(InvalidInput, match="symlink leading out of the folder"):
        readable_folder(folder.as_uri() + "/", tmp_path, "spec.model.uri")


# ----------------------------------------------------------------------------- working model


def test_fetch_writes_an_hf_working_model_that_travels_with_its_tokenizer(
        tmp_path: Path, text_folder: Path) -> None:
    spec = _spec(text_folder.as_uri() + "/",
                 _eval_npz(text_folder, tmp_path / "eval.npz").as_uri())
    record = fetch(spec, tmp_path / "model", tmp_path / "data")
    assert (record.format, record.inputs) == ("hf", ["input_ids", "attention_mask"])
    manifest = read_manifest(tmp_path / "model")
    assert (tmp_path / "model" / manifest.file / "model.safetensors").is_file()
    carried = {path.name for path in (tmp_path / "model" / PREPROCESSOR).iterdir()}
    assert {"tokenizer.json", "config.json", "vocab.txt"} <= carried
    reloaded = load_torch(tmp_path / "model")
    tokens = _tokens(text_folder, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(*(torch.from_numpy(tokens[n]) for n in record.inputs)),
            _read(text_folder).module(*(torch.from_numpy(tokens[n]) for n in record.inputs)))
    assert record.lineage_inputs["model"].uri == spec.model.uri


def test_the_hf_format_round_trips_and_is_rebuildable(tmp_path: Path,
                                                     text_folder: Path) -> None:
    from modelpress.components.modelio import Manifest

    module = _read(text_folder).module
    with torch.no_grad():
        module.model.classifier.bias.add_(1.0)  # a change a step would make
    manifest = Manifest(format="hf", task="classification", inputs=list(module.input_names))
    save_torch(module, tmp_path / "w", manifest)
    again = load_task_module(tmp_path / "w" / "hf", module.task, False, "w", "spec.model.uri")
    torch.testing.assert_close(again.model.classifier.bias, module.model.classifier.bias)
    steps = [{"prune": {"structured": True}}, {"quantize": {"mode": "dynamic"}}]
    check_step_formats(_spec("file:///m/", "file:///e.npz", steps), "hf")


def test_structured_prune_of_torchscript_says_what_to_hand_over() -> None:
    spec = _spec("file:///m.ts", "file:///e.npz", [{"prune": {"structured": True}}])
    with pytest.raises(InvalidInput, match="hand over a state_dict with spec.model.architecture, "
                                           "or a Hugging Face folder instead"):
        check_step_formats(spec, "torchscript")


def test_a_builtin_hf_model_is_read_as_the_zoo_folder_it_names(
        tmp_path: Path, text_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(zoo.HF_FOLDERS, "docstring-classifier", lambda: text_folder)
    spec = _spec("builtin://docstring-classifier",
                 _eval_npz(text_folder, tmp_path / "eval.npz").as_uri())
    record = fetch(spec, tmp_path / "model", tmp_path / "data")
    assert record.format == "hf"
    assert (tmp_path / "model" / PREPROCESSOR / "tokenizer.json").is_file()


_CUSTOM_CONFIG = '''from transformers import BertConfig


class TinyConfig(BertConfig):
    model_type = "modelpress-tiny"
'''
_CUSTOM_MODEL = '''from transformers import BertForSequenceClassification

from .configuration_tiny import TinyConfig


class TinyClassifier(BertForSequenceClassification):
    config_class = TinyConfig
'''


def test_trusted_custom_code_is_loaded_and_travels_with_the_working_model(
        tmp_path: Path) -> None:
    folder = write_text_classifier(tmp_path / "custom")
    (folder / "configuration_tiny.py").write_text(_CUSTOM_CONFIG)
    (folder / "modeling_tiny.py").write_text(_CUSTOM_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="modelpress-tiny", auto_map={
        "AutoConfig": "configuration_tiny.TinyConfig",
        "AutoModelForSequenceClassification": "modeling_tiny.TinyClassifier"})
    (folder / "config.json").write_text(json.dumps(config))
    read = _read(folder, trusted=True)
    assert type(read.module.model).__name__ == "TinyClassifier"
    spec = _spec(folder.as_uri() + "/", _eval_npz(folder, tmp_path / "eval.npz").as_uri())
    fetch(spec, tmp_path / "model", tmp_path / "data", trust_model_code=True)
    assert type(load_torch(tmp_path / "model").model).__name__ == "TinyClassifier"
