"""Which decoder layers of a causal LM take int4 weights with the least harm (docs/llm.md).

Each decoder layer's Linear weights alone are rounded to int4 (round-to-nearest, symmetric,
blocks along the input dimension: what MatMulNBits' RTN stores), and the harm is the mean KL
divergence of the next-token distribution from the fp32 model's, on a few windows of the
job's calibration text. One torch forward pass per layer; deterministic (fixed windows, no
sampling). Auto's mixed candidates put the least sensitive layers in int4.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelpress.api import Model
from modelpress.components.llm_metrics import token_windows

if TYPE_CHECKING:
    import torch

# A few windows rank the layers well enough (SmolLM2-135M, least sensitive first: 25, 4, 26, 24
# on 2 windows of 256 tokens, 25, 4, 26, 5 on 4; the mixed candidates are judged against the
# bar anyway); each window is more work in every layer's pass (SmolLM2-135M on 2 windows:
# about 1 min on one thread).
SENSITIVITY_WINDOWS = 2
SENSITIVITY_TOKENS = 256


class LayerSensitivity(Model):
    """One decoder layer's harm when its weights alone are int4: KL(fp32 || int4 layer)."""

    layer: int
    kl: float


def int4_rtn(weight: torch.Tensor, block_size: int) -> torch.Tensor:
    """`weight` (out, in) rounded to symmetric int4 per block of `block_size` inputs, as
    MLAS' RTN does: the block's largest-magnitude value maps to -8, so scale = value / -8."""
    import torch

    rows, width = weight.shape
    padded = torch.nn.functional.pad(weight, (0, (-width) % block_size))
    blocks = padded.reshape(rows, -1, block_size)
    peak = torch.gather(blocks, -1, blocks.abs().argmax(-1, keepdim=True))
    scale = torch.where(peak == 0, torch.ones_like(peak), peak / -8)
    rounded = torch.clamp(torch.round(blocks / scale), -8, 7) * scale
    return rounded.reshape(rows, -1)[:, :width]


def decoder_layers(model: torch.nn.Module, layers: int) -> torch.nn.ModuleList:
    """The model's decoder layers: its ModuleList of `layers` blocks (model.layers in the
    Llama family, transformer.h in GPT-2)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return module
    raise ValueError(f"no list of {layers} decoder layers in {type(model).__name__}")


def layer_kl(model: torch.nn.Module, windows: torch.Tensor, block_size: int
             ) -> list[LayerSensitivity]:
    """Every decoder layer's KL divergence from `model`'s next-token distribution on
    `windows` (batch, tokens) when that layer's Linear weights alone are int4. The layers
    before it replay their fp32 outputs (unchanged by a later layer) instead of computing
    them again: half the work of a full pass per layer, on average."""
    import torch

    def log_probs() -> torch.Tensor:
        return torch.log_softmax(model(windows, use_cache=False).logits.double(), -1)

    layers = decoder_layers(model, int(model.config.num_hidden_layers))
    outputs: list[Any] = []
    hooks = [layer.register_forward_hook(lambda _module, _inputs, out: outputs.append(out))
             for layer in layers]
    with torch.no_grad():
        try:
            reference = log_probs()
        finally:
            for hook in hooks:
                hook.remove()
        ranked = []
        for index, layer in enumerate(layers):
            with _replaying(layers[:index], outputs[:index]), _int4_weights(layer, block_size):
                kl = (reference.exp() * (reference - log_probs())).sum(-1).mean().item()
            ranked.append(LayerSensitivity(layer=index, kl=kl))
    return ranked


@contextlib.contextmanager
def _replaying(layers: Sequence[torch.nn.Module], outputs: Sequence[Any]) -> Iterator[None]:
    """Each of `layers` returns its recorded output instead of computing (its instance
    `forward` shadows the class's until the block ends)."""
    for layer, output in zip(layers, outputs, strict=True):
        layer.forward = _returning(output)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _returning(output: Any) -> Callable[..., Any]:
    def forward(*_args: Any, **_kwargs: Any) -> Any:
        return output
    return forward


@contextlib.contextmanager
def _int4_weights(layer: torch.nn.Module, block_size: int) -> Iterator[None]:
    import torch

    linears = [module for module in layer.modules() if isinstance(module, torch.nn.Linear)]
    saved = [linear.weight.data for linear in linears]
    for linear in linears:
        linear.weight.data = int4_rtn(linear.weight.data, block_size)
    try:
        yield
    finally:
        for linear, weight in zip(linears, saved, strict=True):
            linear.weight.data = weight


def rank_layers(hf_folder: Path, texts: Sequence[str], block_size: int, threads: int = 1
                ) -> list[LayerSensitivity]:
    """Every decoder layer of the HF causal LM in `hf_folder`, least sensitive to int4 first
    (ties by layer index), measured on the first SENSITIVITY_WINDOWS windows of `texts`."""
    import torch
    from transformers import AutoModelForCausalLM

    windows = token_windows(hf_folder, texts, SENSITIVITY_TOKENS)[:SENSITIVITY_WINDOWS]
    full = [window for window in windows if len(window) == len(windows[0])]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(hf_folder), dtype=torch.float32)
        ranked = layer_kl(model.eval(), torch.from_numpy(np.stack(full)).long(), block_size)
    finally:
        torch.set_num_threads(previous)
    return least_sensitive_first(ranked)


def least_sensitive_first(ranked: Sequence[LayerSensitivity]) -> list[LayerSensitivity]:
    return sorted(ranked, key=lambda entry: (entry.kl, entry.layer))
