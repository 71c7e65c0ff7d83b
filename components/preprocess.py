"""How raw text and images become a model's input arrays, with the model's own files.

A `Preprocessor` is made by fetch from the model it read (a Hugging Face folder's tokenizer
or image-processor files and its `id2label`; a builtin's shipped tokenizer) and handed to
the dataset readers, so data is tokenized exactly as the model expects.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.errors import InvalidInput


@dataclass(frozen=True)
class Preprocessor:
    """The model's preprocessing files and label names.

    `folder` holds a tokenizer (`tokenizer.json` / `tokenizer_config.json` …) or an image
    processor (`preprocessor_config.json`), read with transformers from local files only;
    None: the model ships neither (numeric arrays only, images get the documented default).
    `label_ids` maps a label name to its class index (the model's `config.label2id`), so
    string labels in the data can be read; None: labels must be class indices.
    `input_names` are the model's inputs in order, when known (a tokenizer's outputs are
    kept only where the model takes them, e.g. no `token_type_ids` for DistilBERT).
    """

    folder: Path | None = None
    label_ids: dict[str, int] | None = None
    max_tokens: int = 128
    input_names: tuple[str, ...] | None = None

    def tokenize(self, texts: Sequence[str], where: str) -> dict[str, np.ndarray]:
        """Token arrays as the model's own tokenizer makes them for all `texts` at once
        (truncated at `max_tokens`, padded to the longest, int64). Built batch by batch,
        and kept unpadded until the longest is known, so what exists besides the result is
        one batch of the tokenizer's output and the real tokens as int32."""
        if self.folder is None:
            raise InvalidInput(where, "the data is text, but the model ships no tokenizer; "
                                      "give token ids as .npz arrays named after its inputs")
        tokenizer = _tokenizer(self.folder, where)
        batches = [self._encoded(tokenizer, texts[start:start + _BATCH_TEXTS])
                   for start in range(0, len(texts), _BATCH_TEXTS)]
        longest = max(int(batch.lengths.max()) for batch in batches)
        arrays = {name: np.full((len(texts), longest), _pad_value(tokenizer, name), np.int64)
                  for name in batches[0].tokens}
        start = 0
        for batch in batches:
            real = _real_positions(batch.lengths, longest, tokenizer.padding_side)
            for name, tokens in batch.tokens.items():
                arrays[name][start:start + len(real)][real] = tokens
            batch.tokens.clear()
            start += len(real)
        return arrays

    def _encoded(self, tokenizer: Any, texts: Sequence[str]) -> _Unpadded:
        encoded = tokenizer(list(texts), truncation=True, max_length=self.max_tokens,
                            padding="longest", return_attention_mask=True, return_tensors="np")
        real = encoded["attention_mask"].astype(bool)
        wanted = self.input_names or tuple(encoded)
        return _Unpadded(real.sum(axis=1), {name: encoded[name][real].astype(np.int32)
                                            for name in wanted if name in encoded})

    def images(self, files: Sequence[Path], root: Path, where: str,
               root_uri: str) -> np.ndarray:
        """Pixel arrays (N, channels, height, width), float32, for the image `files`: the
        model's image processor (`preprocessor_config.json`) when it ships one, else the
        default: RGB, scaled to [0, 1], channels first, not resized (so every image must
        have one size, which the model's input shape is then checked against). Messages
        name a file as `root_uri` (the folder's uri, ending in /) plus its path in `root`."""
        processor = _image_processor(self.folder, where)
        pixels: np.ndarray | None = None
        for start in range(0, len(files), _BATCH_IMAGES):
            chunk = files[start:start + _BATCH_IMAGES]
            names = [root_uri + path.relative_to(root).as_posix() for path in chunk]
            images = [_opened_image(path, name, where) for path, name in zip(chunk, names,
                                                                             strict=True)]
            batch = _processed(processor, images) if processor is not None else \
                _default_pixels(images, names, pixels, where)
            if pixels is None:
                pixels = np.empty((len(files), *batch.shape[1:]), dtype=np.float32)
            pixels[start:start + len(chunk)] = batch
        assert pixels is not None  # the readers never hand over an empty list
        return pixels

    @property
    def image_input(self) -> str:
        """The name an image array takes: the model's single input, else `pixel_values`
        (a Hugging Face vision model's) with a processor, or `x`."""
        if self.input_names:
            return self.input_names[0]
        return "pixel_values" if self.folder is not None and \
            (self.folder / _PROCESSOR_FILE).is_file() else "x"


_BATCH_TEXTS = 1024
_BATCH_IMAGES = 64
_PROCESSOR_FILE = "preprocessor_config.json"


def _tokenizer(folder: Path, where: str) -> Any:
    try:
        return _loaded("AutoTokenizer", folder)
    except (OSError, ValueError) as error:
        raise InvalidInput(where, f"the data is text, but the model's tokenizer in {folder} "
                                  f"cannot be read ({_first_line(error)})") from None


@functools.cache
def _loaded(kind: str, folder: Path) -> Any:
    """A tokenizer or image processor from the model's folder, never the hub; read once
    per process (eval, calibration and train share it)."""
    import transformers

    return getattr(transformers, kind).from_pretrained(str(folder), local_files_only=True)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def _pad_value(tokenizer: Any, name: str) -> int:
    if name == "input_ids":
        return int(tokenizer.pad_token_id or 0)
    if name == "token_type_ids":
        return int(getattr(tokenizer, "pad_token_type_id", 0))
    return 0


@dataclass(frozen=True)
class _Unpadded:
    """One batch of tokens without its padding: each row's length, and per output the
    real tokens of all rows in row order."""

    lengths: np.ndarray
    tokens: dict[str, np.ndarray]


def _real_positions(lengths: np.ndarray, longest: int, side: str) -> np.ndarray:
    """Where the real tokens of rows of `lengths` go in rows padded to `longest`."""
    columns = np.arange(longest)
    if side == "left":
        return columns >= longest - lengths[:, None]
    return columns < lengths[:, None]


def _image_processor(folder: Path | None, where: str) -> Any:
    if folder is None or not (folder / _PROCESSOR_FILE).is_file():
        return None
    try:
        return _loaded("AutoImageProcessor", folder)
    except (OSError, ValueError) as error:
        raise InvalidInput(where, f"the model's image processor in {folder} cannot be read "
                                  f"({_first_line(error)})") from None


def _opened_image(path: Path, name: str, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InvalidInput(where, f"{name} is not a readable image "
                                  f"({type(error).__name__})") from None


def _processed(processor: Any, images: list[Any]) -> np.ndarray:
    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    return np.asarray(pixels, dtype=np.float32)


def _default_pixels(images: list[Any], names: list[str], earlier: np.ndarray | None,
                    where: str) -> np.ndarray:
    """RGB in [0, 1], channels first; every image the size of the first one."""
    width, height = (earlier.shape[3], earlier.shape[2]) if earlier is not None \
        else images[0].size
    for image, name in zip(images, names, strict=True):
        if image.size != (width, height):
            raise InvalidInput(where, f"{name} is {image.size[0]}x"
                                      f"{image.size[1]}, other images {width}x{height}; "
                                      "the model ships no image processor "
                                      f"({_PROCESSOR_FILE}), so images are not resized: "
                                      "give images of the size the model takes")
    batch = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 255.0
    return batch.transpose(0, 3, 1, 2)
