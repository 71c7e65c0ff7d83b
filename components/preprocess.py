"""How raw text and images become a model's input arrays, with the model's own files.

A `Preprocessor` is made by fetch from the model it read (a Hugging Face folder's tokenizer
or image-processor files and its `id2label`; a builtin's shipped tokenizer) and handed to
the dataset readers, so data is tokenized exactly as the model expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
