"""Structured pruning: physically remove heads, neurons or channels, so the dense model gets
smaller and faster.

What `sparsity` (the ratio handed here) removes depends on the architecture:
- Transformer encoders (BERT, RoBERTa, DistilBERT, ViT and the like, found by their own
  module structure): that ratio of the attention heads AND that ratio of the FFN neurons.
  A head goes with its query/key/value rows and its output-projection columns; a neuron
  with its up-projection row and down-projection column. Both are ranked by magnitude
  (the product of the L2 norms of what goes), across all layers (`global`) or within each
  layer (`layer`). Every layer keeps at least one head and one neuron, so the ratio
  actually removed can fall short of the one asked for; the caller reports the real one.
- Everything else (CNNs): torch-pruning's dependency graph removes that ratio of conv
  channels and linear neurons, together with what depends on them (batch norms, residual
  partners); the output layer keeps its outputs.
Parameters fall faster than the ratio: a conv loses input and output channels, so 0.5 of
the channels removes about 3/4 of its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# How transformers' encoders spell their attention and feed-forward parts.
_HEAD_COUNTS = ("num_attention_heads", "n_heads", "num_heads")
_HEAD_SIZES = ("attention_head_size", "head_dim", "head_size")
_PROJECTIONS = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"),
                ("q_proj", "k_proj", "v_proj"))
_OUT_PROJECTIONS = ("out_lin", "o_proj", "out_proj")
_FFN_PAIRS = (("intermediate.dense", "output.dense"), ("ffn.lin1", "ffn.lin2"),
              ("mlp.fc1", "mlp.fc2"))


@dataclass(frozen=True)
class AttentionBlock:
    """One self-attention: the module whose head count forward reads, its q/k/v projections
    and the projection that mixes the heads back."""

    owner: torch.nn.Module
    projections: tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Linear]
    out: torch.nn.Linear
    head_size: int

    @property
    def heads(self) -> int:
        return self.projections[0].out_features // self.head_size


@dataclass(frozen=True)
class Units:
    """The structure a strategy removes from, counted: heads, FFN neurons, or prunable
    channels (conv channels and linear neurons, the output layer's excluded)."""

    heads: int = 0
    neurons: int = 0
    channels: int = 0


def _submodule(module: torch.nn.Module, dotted: str) -> Any:
    found: Any = module
    for name in dotted.split("."):
        found = getattr(found, name, None)
        if found is None:
            return None
    return found


def _linear(module: torch.nn.Module, dotted: str) -> torch.nn.Linear | None:
    import torch

    found = _submodule(module, dotted)
    return found if isinstance(found, torch.nn.Linear) else None


def ffn_blocks(module: torch.nn.Module) -> list[tuple[torch.nn.Linear, torch.nn.Linear]]:
    """(up-projection, down-projection) pairs of every transformer feed-forward block."""
    blocks = []
    for layer in module.modules():
        for up_name, down_name in _FFN_PAIRS:
            up, down = _linear(layer, up_name), _linear(layer, down_name)
            if up is not None and down is not None and up.out_features == down.in_features:
                blocks.append((up, down))
    return blocks


def _first_int(module: torch.nn.Module, names: tuple[str, ...]) -> int | None:
    return next((value for name in names
                 if isinstance(value := getattr(module, name, None), int)), None)


def _projections(module: torch.nn.Module, head_size: int
                 ) -> tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Linear] | None:
    """q/k/v of equal width made of whole heads (grouped-query attention does not qualify)."""
    for names in _PROJECTIONS:
        query, key, value = (_linear(module, name) for name in names)
        if query is not None and key is not None and value is not None and \
                query.out_features == key.out_features == value.out_features and \
                query.out_features % head_size == 0:
            return query, key, value
    return None


def _out_projection(module: torch.nn.Module, parent: torch.nn.Module | None
                    ) -> torch.nn.Linear | None:
    """DistilBERT and ViT keep it beside q/k/v; BERT in the sibling `output.dense`."""
    own = next((linear for name in _OUT_PROJECTIONS if (linear := _linear(module, name))), None)
    if own is not None or parent is None:
        return own
    return _linear(parent, "output.dense") if getattr(parent, "self", None) is module else None


def attention_blocks(module: torch.nn.Module) -> list[AttentionBlock]:
    """Every self-attention whose heads can be removed whole."""
    parents = {id(child): owner for owner in module.modules() for child in owner.children()}
    blocks = []
    for candidate in module.modules():
        head_size = _first_int(candidate, _HEAD_SIZES)
        if head_size is None or _first_int(candidate, _HEAD_COUNTS) is None:
            continue
        projections = _projections(candidate, head_size)
        out = _out_projection(candidate, parents.get(id(candidate)))
        if projections is not None and out is not None:
            blocks.append(AttentionBlock(candidate, projections, out, head_size))
    return blocks


def _head_scores(block: AttentionBlock) -> torch.Tensor:
    import torch

    rows = torch.cat([p.weight.detach() for p in block.projections], dim=1)  # out x 3·in
    per_head_in = rows.reshape(block.heads, -1).norm(dim=1)
    columns = block.out.weight.detach().t().reshape(block.heads, -1).norm(dim=1)
    return per_head_in * columns


def _neuron_scores(up: torch.nn.Linear, down: torch.nn.Linear) -> torch.Tensor:
    return up.weight.detach().norm(dim=1) * down.weight.detach().norm(dim=0)


def doomed_units(scores: list[torch.Tensor], ratio: float, scope: str) -> list[list[int]]:
    """Per block, the indices of the lowest-scored units: `ratio` of all units (rounded)
    ranked together (`global`) or of each block's own (`layer`). Every block keeps at least one
    unit; a global ranking then takes the next-lowest units of other blocks instead."""
    import torch

    if not scores:
        return []
    if scope == "layer":
        return [sorted(score.argsort()[: min(round(ratio * score.numel()), score.numel() - 1)]
                       .tolist()) for score in scores]
    everything = torch.cat(scores)
    owners = torch.cat([torch.full((s.numel(),), block) for block, s in enumerate(scores)])
    offsets = [0, *torch.tensor([s.numel() for s in scores]).cumsum(0).tolist()]
    left, target = [s.numel() for s in scores], round(ratio * everything.numel())
    doomed: list[list[int]] = [[] for _ in scores]
    for unit in everything.argsort().tolist():
        if target == 0:
            break
        block = int(owners[unit])
        if left[block] > 1:
            doomed[block].append(unit - offsets[block])
            left[block], target = left[block] - 1, target - 1
    return [sorted(indices) for indices in doomed]


def _remove_heads(block: AttentionBlock, heads: list[int]) -> None:
    """Drop whole heads and tell the attention module, whose forward reads its head count."""
    import torch_pruning as tp

    if not heads:
        return
    rows = [head * block.head_size + offset for head in heads for offset in range(block.head_size)]
    for projection in block.projections:
        tp.prune_linear_out_channels(projection, rows)
    tp.prune_linear_in_channels(block.out, rows)
    left = block.heads
    for name in _HEAD_COUNTS:
        if hasattr(block.owner, name):
            setattr(block.owner, name, left)
    if hasattr(block.owner, "all_head_size"):
        setattr(block.owner, "all_head_size", left * block.head_size)  # noqa: B010


def prune_attention_heads(module: torch.nn.Module, ratio: float, scope: str) -> int:
    """Remove `ratio` of attention heads (per layer, or ranked across layers); return removed."""
    blocks = attention_blocks(module)
    doomed = doomed_units([_head_scores(block) for block in blocks], ratio, scope)
    for block, heads in zip(blocks, doomed, strict=True):
        _remove_heads(block, heads)
    return sum(len(heads) for heads in doomed)


def prune_ffn_neurons(module: torch.nn.Module, ratio: float, scope: str) -> int:
    """Remove `ratio` of FFN neurons (per block, or ranked across blocks); return removed."""
    import torch_pruning as tp

    blocks = ffn_blocks(module)
    doomed = doomed_units([_neuron_scores(up, down) for up, down in blocks], ratio, scope)
    for (up, down), neurons in zip(blocks, doomed, strict=True):
        if neurons:
            tp.prune_linear_out_channels(up, neurons)
            tp.prune_linear_in_channels(down, neurons)
    return sum(len(neurons) for neurons in doomed)


def _weighted_layers(module: torch.nn.Module) -> list[torch.nn.Linear | torch.nn.Conv2d]:
    import torch

    return [layer for layer in module.modules()
            if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d))]


def _channel_count(module: torch.nn.Module) -> int:
    """Output channels of every convolution plus output features of every linear layer."""
    import torch

    return sum(layer.out_channels if isinstance(layer, torch.nn.Conv2d) else layer.out_features
               for layer in _weighted_layers(module))


def prune_channels(module: torch.nn.Module, example: tuple[torch.Tensor, ...], ratio: float,
                   scope: str) -> int:
    """torch-pruning over the whole dependency graph; the final layer keeps its outputs.
    Returns how many channels (and linear neurons) were removed."""
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        module, example, importance=tp.importance.MagnitudeImportance(p=2),
        global_pruning=scope == "global", pruning_ratio=ratio,
        ignored_layers=[_weighted_layers(module)[-1]])
    before = _channel_count(module)
    pruner.step()
    return before - _channel_count(module)


def is_encoder(module: torch.nn.Module) -> bool:
    """Whether the heads-and-neurons strategy applies rather than graph channel pruning."""
    return bool(attention_blocks(module) or ffn_blocks(module))


def count_units(module: torch.nn.Module) -> Units:
    """What the strategy for `module` removes from, as it stands now."""
    if is_encoder(module):
        return Units(heads=sum(block.heads for block in attention_blocks(module)),
                     neurons=sum(up.out_features for up, _ in ffn_blocks(module)))
    layers = _weighted_layers(module)
    kept_outputs = _channel_count(layers[-1]) if layers else 0
    return Units(channels=_channel_count(module) - kept_outputs)


def strategy_name(units: Units) -> str:
    """`heads+ffn-neurons`, `ffn-neurons`, `heads` or `channels`: what the strategy removes."""
    parts = [name for name, count in (("heads", units.heads), ("ffn-neurons", units.neurons),
                                      ("channels", units.channels)) if count]
    return "+".join(parts) or "nothing"


def prune_structured(module: torch.nn.Module, example: tuple[torch.Tensor, ...], ratio: float,
                     scope: str) -> None:
    """Prune in place by the strategy that fits the architecture (see the module docstring)."""
    if is_encoder(module):
        prune_attention_heads(module, ratio, scope)
        prune_ffn_neurons(module, ratio, scope)
    else:
        prune_channels(module, example, ratio, scope)
