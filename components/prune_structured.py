"""Structured pruning: physically remove channels, so the dense model gets smaller and faster.

Transformers (BERT-style encoders) lose FFN neurons: the intermediate projection's rows
and the output projection's matching columns, ranked by the product of their L2 norms.
Other models go through torch-pruning's dependency graph, which removes conv channels and
linear neurons together with everything that depends on them; the output layer is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def ffn_blocks(module: torch.nn.Module) -> list[tuple[torch.nn.Linear, torch.nn.Linear]]:
    """(up-projection, down-projection) pairs of every BERT-style feed-forward block."""
    blocks = []
    for layer in module.modules():
        intermediate, output = getattr(layer, "intermediate", None), getattr(layer, "output", None)
        if intermediate is not None and hasattr(intermediate, "dense") and \
                output is not None and hasattr(output, "dense"):
            blocks.append((intermediate.dense, output.dense))
    return blocks


def _neuron_scores(up: torch.nn.Linear, down: torch.nn.Linear) -> torch.Tensor:
    return up.weight.detach().norm(dim=1) * down.weight.detach().norm(dim=0)


def prune_ffn_neurons(module: torch.nn.Module, ratio: float, scope: str) -> int:
    """Remove `ratio` of FFN neurons (per block, or ranked across blocks); return removed."""
    import torch
    import torch_pruning as tp

    blocks = ffn_blocks(module)
    scores = [_neuron_scores(up, down) for up, down in blocks]
    if scope == "global":
        everything = torch.cat(scores)
        threshold = everything.kthvalue(max(1, int(ratio * everything.numel()))).values
        doomed = [torch.nonzero(score <= threshold).flatten() for score in scores]
    else:
        doomed = [score.argsort()[: int(ratio * score.numel())] for score in scores]
    removed = 0
    for (up, down), indices in zip(blocks, doomed, strict=True):
        keep_at_least_one = indices[: up.out_features - 1].tolist()
        if keep_at_least_one:
            tp.prune_linear_out_channels(up, keep_at_least_one)
            tp.prune_linear_in_channels(down, keep_at_least_one)
            removed += len(keep_at_least_one)
    return removed


def _channel_count(module: torch.nn.Module) -> int:
    """Output channels of every convolution plus output features of every linear layer."""
    import torch

    return sum(layer.out_channels if isinstance(layer, torch.nn.Conv2d) else layer.out_features
               for layer in module.modules()
               if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)))


def prune_channels(module: torch.nn.Module, example: tuple[torch.Tensor, ...], ratio: float,
                   scope: str) -> int:
    """torch-pruning over the whole dependency graph; the final layer keeps its outputs.
    Returns how many channels (and linear neurons) were removed."""
    import torch
    import torch_pruning as tp

    last_layer = [m for m in module.modules() if isinstance(m, (torch.nn.Linear,
                                                                torch.nn.Conv2d))][-1]
    pruner = tp.pruner.MetaPruner(
        module, example, importance=tp.importance.MagnitudeImportance(p=2),
        global_pruning=scope == "global", pruning_ratio=ratio, ignored_layers=[last_layer])
    before = _channel_count(module)
    pruner.step()
    return before - _channel_count(module)


def prune_structured(module: torch.nn.Module, example: tuple[torch.Tensor, ...], ratio: float,
                     scope: str) -> dict[str, Any]:
    """Prune in place by the strategy that fits the architecture; say which one ran and
    how much it removed."""
    if ffn_blocks(module):
        return {"strategy": "ffn-neurons", "removedNeurons": prune_ffn_neurons(module, ratio,
                                                                               scope)}
    return {"strategy": "channels",
            "removedChannels": prune_channels(module, example, ratio, scope)}
