"""Auto's per-layer int4 sensitivity: RTN as MLAS stores it, a deterministic ranking, and
mixed candidates whose int4 layers are the least sensitive ones."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from modelpress.components.llm_sensitivity import (
    int4_rtn,
    layer_kl,
    least_sensitive_first,
)
from modelpress.components.llm_steps import MIXED_BLOCK, auto_recipes

LAYERS = 6
PRE_ROUNDED = 3


def _model() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_int4_rtn_keeps_16_levels_per_block_and_is_idempotent() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 2 * MIXED_BLOCK + 10)  # a ragged last block
    rounded = int4_rtn(weight, MIXED_BLOCK)
    assert rounded.shape == weight.shape
    block = rounded[0, :MIXED_BLOCK]
    scale = weight[0, :MIXED_BLOCK][weight[0, :MIXED_BLOCK].abs().argmax()] / -8
    levels = torch.round(block / scale)
    assert torch.allclose(levels * scale, block) and levels.min() >= -8 and levels.max() <= 7
    assert torch.equal(int4_rtn(rounded, MIXED_BLOCK), rounded)
    assert torch.equal(int4_rtn(torch.zeros(2, MIXED_BLOCK), MIXED_BLOCK),
                       torch.zeros(2, MIXED_BLOCK))


def test_the_ranking_is_deterministic_and_puts_an_already_int4_layer_first() -> None:
    model = _model()
    with torch.no_grad():  # this layer loses nothing more to int4: its KL is zero
        for linear in model.model.layers[PRE_ROUNDED].modules():
            if isinstance(linear, torch.nn.Linear):
                linear.weight.data = int4_rtn(linear.weight.data, MIXED_BLOCK)
    windows = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    first = least_sensitive_first(layer_kl(model, windows, MIXED_BLOCK))
    again = least_sensitive_first(layer_kl(model, windows, MIXED_BLOCK))
    assert first == again
    assert [entry.layer for entry in first][0] == PRE_ROUNDED
    assert first[0].kl < 1e-9 < first[1].kl
    assert sorted(entry.layer for entry in first) == list(range(LAYERS))


def test_replaying_the_layers_before_gives_the_kl_of_a_full_pass() -> None:
    model = _model()
    windows = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    ranked = layer_kl(model, windows, MIXED_BLOCK)
    with torch.no_grad():
        reference = torch.log_softmax(model(windows).logits.double(), -1)
        for linear in model.model.layers[PRE_ROUNDED].modules():
            if isinstance(linear, torch.nn.Linear):
                linear.weight.data = int4_rtn(linear.weight.data, MIXED_BLOCK)
        rounded = torch.log_softmax(model(windows).logits.double(), -1)
    full = (reference.exp() * (reference - rounded)).sum(-1).mean().item()
    assert ranked[PRE_ROUNDED].kl == pytest.approx(full, rel=1e-6)


def test_the_mixed_candidates_put_the_least_sensitive_layers_in_int4() -> None:
    ranking = [4, 1, 5, 0, 2, 3]
    recipes = auto_recipes({"tie_word_embeddings": True, "num_hidden_layers": LAYERS}, ranking)
    mixed = {name: recipe for name, recipe in recipes.items() if recipe.layer_overrides}
    assert list(mixed) == ["int8-b64-int4-layers-4-1", "int8-b64-int4-layers-4-1-5-0"]
    for name, recipe in mixed.items():
        (override,) = recipe.layer_overrides
        assert override.weights == "int4" and recipe.weights == "int8"
        assert recipe.block_size == MIXED_BLOCK
        assert name.endswith("-".join(map(str, override.layers)))
        assert override.layers == ranking[:len(override.layers)]
    # Without a ranking there is nothing to mix; a 2-layer model mixes one layer.
    assert not any(r.layer_overrides for r in auto_recipes({}).values())
    two = auto_recipes({}, [1, 0])
    assert [r.layer_overrides[0].layers for r in two.values() if r.layer_overrides] == [[1]]
