"""Structured pruning on the models teams hold: Hugging Face encoders lose attention heads and
FFN neurons, a ResNet loses conv channels; the pruned module still traces and exports, and
the record says what ratio of structure went and what parameter reduction that produced."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from modelpress.api import PruneSchedule, PruneStep
from modelpress.components.modelio import export_onnx
from modelpress.components.prune import _prune_structured, prune_record
from modelpress.components.prune_structured import (
    Units,
    attention_blocks,
    count_units,
    ffn_blocks,
)

_LAYERS, _HEADS, _NEURONS = 2, 4, 64


class _TaskModule(torch.nn.Module):
    """Stand-in for hf.HFTaskModule: the transformers model under `.model`, tensors in
    positionally, the first output (logits) out."""

    def __init__(self, model: torch.nn.Module, inputs: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.input_names = model.eval(), inputs

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True)),
                          return_dict=False)[0]


_TEXT = dict(vocab_size=60, hidden_size=32, num_hidden_layers=_LAYERS,
             num_attention_heads=_HEADS, intermediate_size=_NEURONS, num_labels=3,
             max_position_embeddings=40, attn_implementation="eager")


def _bert() -> _TaskModule:
    config = transformers.BertConfig(**_TEXT)
    return _TaskModule(transformers.BertForSequenceClassification(config),
                       ("input_ids", "attention_mask", "token_type_ids"))


def _roberta() -> _TaskModule:
    config = transformers.RobertaConfig(**_TEXT, pad_token_id=1)
    return _TaskModule(transformers.RobertaForSequenceClassification(config),
                       ("input_ids", "attention_mask"))


def _distilbert() -> _TaskModule:
    config = transformers.DistilBertConfig(
        vocab_size=60, dim=32, n_layers=_LAYERS, n_heads=_HEADS, hidden_dim=_NEURONS,
        num_labels=3, max_position_embeddings=40, attn_implementation="eager")
    return _TaskModule(transformers.DistilBertForSequenceClassification(config),
                       ("input_ids", "attention_mask"))


def _vit() -> _TaskModule:
    config = transformers.ViTConfig(
        image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS, intermediate_size=_NEURONS, num_labels=3,
        attn_implementation="eager")
    return _TaskModule(transformers.ViTForImageClassification(config), ("pixel_values",))


def _resnet() -> _TaskModule:
    config = transformers.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32],
                                       depths=[1, 1], layer_type="basic", num_labels=3)
    return _TaskModule(transformers.ResNetForImageClassification(config), ("pixel_values",))


_ENCODERS: dict[str, Callable[[], _TaskModule]] = {
    "bert": _bert, "roberta": _roberta, "distilbert": _distilbert, "vit": _vit}


def _inputs(module: _TaskModule, rows: int = 2) -> dict[str, np.ndarray]:
    generator = np.random.default_rng(0)
    if module.input_names == ("pixel_values",):
        size = 16 if isinstance(module.model, transformers.ViTForImageClassification) else 32
        return {"pixel_values": generator.standard_normal((rows, 3, size, size), np.float32)}
    mask = np.ones((rows, 9), np.int64)
    mask[0, 6:] = 0  # padding, so the attention mask matters
    arrays = {"input_ids": generator.integers(2, 60, (rows, 9)), "attention_mask": mask,
              "token_type_ids": np.zeros((rows, 9), np.int64)}
    return {name: arrays[name] for name in module.input_names}


def _tensors(arrays: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(array) for array in arrays.values())


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _prune(module: torch.nn.Module, sparsity: float = 0.5, scope: str = "global",
           iterations: int = 1) -> dict:
    options = PruneStep(structured=True, sparsity=sparsity, scope=scope,
                        schedule=PruneSchedule(iterations=iterations))
    return _prune_structured(module, options, _tensors(_inputs(module)), lambda _: None)


def _assert_exports_match(module: _TaskModule, tmp_path: Path) -> None:
    """The pruned module, traced as prune saves it and exported as the pipeline exports it,
    computes what the module computes, on a batch size the example did not have."""
    import onnxruntime as ort

    arrays = _inputs(module, rows=3)
    with torch.no_grad():
        expected = module.eval()(*_tensors(arrays)).numpy()
        traced = torch.jit.trace(module, _tensors(_inputs(module)), check_trace=False,
                                 strict=False)
        np.testing.assert_allclose(traced(*_tensors(arrays)).numpy(), expected, atol=1e-4)
    export_onnx(module, _inputs(module), list(module.input_names), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    np.testing.assert_allclose(session.run(None, arrays)[0], expected, atol=1e-4)


@pytest.mark.parametrize("name", sorted(_ENCODERS))
def test_encoders_lose_half_their_heads_and_neurons_and_still_export(name: str,
                                                                     tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _ENCODERS[name]()
    before = _parameters(module)
    figures = _prune(module)
    assert figures["strategy"] == "heads+ffn-neurons"
    assert figures["removedHeads"] == _LAYERS * _HEADS // 2
    assert figures["removedNeurons"] == _LAYERS * _NEURONS // 2
    assert figures["removedHeadRatio"] == figures["removedNeuronRatio"] == 0.5
    blocks = attention_blocks(module)
    assert len(blocks) == _LAYERS
    assert sum(b.projections[0].out_features for b in blocks) == _LAYERS * 32 // 2
    assert sum(b.out.in_features for b in blocks) == _LAYERS * 32 // 2
    assert sum(up.out_features for up, _ in ffn_blocks(module)) == _LAYERS * _NEURONS // 2
    assert _parameters(module) < before
    _assert_exports_match(module, tmp_path)


def test_record_states_the_ratio_and_the_parameter_reduction_it_produced() -> None:
    torch.manual_seed(0)
    module = _bert()
    before = _parameters(module)
    record = prune_record(module, before, _prune(module, iterations=2))
    assert record.parameters == _parameters(module) < before
    assert record.parameter_reduction == round(1 - _parameters(module) / before, 4)
    assert (record.removed_heads, record.removed_neurons) == (4, 64)
    assert record.removed_channels is None
    assert "0.5 of the attention heads (4), 0.5 of the FFN neurons (64)" in record.message
    assert f"{record.parameter_reduction:.1%} of the parameters" in record.message
    wire = record.model_dump(by_alias=True, exclude_none=True)
    assert wire["removedHeads"] == 4 and wire["removedHeadRatio"] == 0.5
    assert wire["removedNeuronRatio"] == 0.5 and "removedChannels" not in wire


def _shrink_first_layer(module: _TaskModule) -> None:
    """Make the first layer's weights small, so a global ranking takes from it first."""
    first_attention, first_ffn = attention_blocks(module)[0], ffn_blocks(module)[0]
    with torch.no_grad():
        for linear in (*first_attention.projections, first_attention.out, *first_ffn):
            linear.weight.mul_(0.1)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_layer_scope_prunes_each_layer_alike_global_ranks_across_layers(scope: str) -> None:
    torch.manual_seed(0)
    module = _bert()
    _shrink_first_layer(module)
    _prune(module, sparsity=0.5, scope=scope)
    heads = [block.heads for block in attention_blocks(module)]
    neurons = [up.out_features for up, _ in ffn_blocks(module)]
    assert sum(heads) == _LAYERS * _HEADS // 2 and sum(neurons) == _LAYERS * _NEURONS // 2
    if scope == "layer":
        assert heads == [2, 2] and neurons == [32, 32]
    else:  # the small first layer loses all it can (one stays), the second the rest
        assert heads == [1, 3] and neurons == [1, 63]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_every_layer_keeps_a_head_and_a_neuron(scope: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _distilbert()
    _shrink_first_layer(module)
    figures = _prune(module, sparsity=0.95, scope=scope)
    assert [block.heads for block in attention_blocks(module)] == [1, 1]
    assert figures["removedHeadRatio"] == 0.75  # short of 0.95: one head per layer stays
    neurons = [up.out_features for up, _ in ffn_blocks(module)]
    if scope == "layer":
        assert neurons == [_NEURONS - round(0.95 * _NEURONS)] * _LAYERS
    else:  # the shrunk first layer is ranked lowest and keeps one
        assert neurons[0] == 1
        assert sum(neurons) == _LAYERS * _NEURONS - round(0.95 * _LAYERS * _NEURONS)
    assert count_units(module) == Units(heads=2, neurons=sum(neurons))
    _assert_exports_match(module, tmp_path)


def test_resnet_loses_half_its_channels_keeps_its_classes_and_still_exports(tmp_path: Path
                                                                           ) -> None:
    torch.manual_seed(0)
    module = _resnet()
    before = _parameters(module)
    figures = _prune(module)
    record = prune_record(module, before, figures)
    assert record.strategy == "channels"
    assert record.removed_channel_ratio == pytest.approx(0.5, abs=0.05)
    assert record.removed_heads is None and record.removed_neurons is None
    assert record.parameter_reduction > 0.6  # both sides of a conv shrink: about 3/4
    assert module.model.classifier[-1].out_features == 3
    assert "of the channels" in record.message
    _assert_exports_match(module, tmp_path)
