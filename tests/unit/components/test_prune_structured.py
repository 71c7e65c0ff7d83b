"""An iterative structured prune reports what all its iterations removed together."""

from __future__ import annotations

import pytest
import torch

from modelpress.api import PruneSchedule, PruneStep
from modelpress.components.prune import _prune_structured
from modelpress.components.zoo import digits_cnn


def _widths(module: torch.nn.Module) -> int:
    return sum(layer.out_channels if isinstance(layer, torch.nn.Conv2d) else layer.out_features
               for layer in module.modules()
               if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)))


class _Dense(torch.nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(inputs, outputs)


class _Block(torch.nn.Module):
    """A BERT-style feed-forward block: `intermediate.dense` up, `output.dense` down."""

    def __init__(self) -> None:
        super().__init__()
        self.intermediate, self.output = _Dense(8, 32), _Dense(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(torch.relu(self.intermediate.dense(x)))


def _options(iterations: int) -> PruneStep:
    return PruneStep(structured=True, sparsity=0.5,
                     schedule=PruneSchedule(iterations=iterations))


@pytest.mark.parametrize("iterations", [1, 3])
def test_removed_channels_add_up_over_iterations(iterations: int) -> None:
    torch.manual_seed(0)
    module = digits_cnn()
    before = _widths(module)
    figures = _prune_structured(module, _options(iterations), (torch.zeros(2, 1, 8, 8),),
                                lambda _: None)
    assert figures["strategy"] == "channels"
    assert figures["removedChannels"] == before - _widths(module) > 0


@pytest.mark.parametrize("iterations", [1, 3])
def test_removed_neurons_add_up_over_iterations(iterations: int) -> None:
    torch.manual_seed(0)
    blocks = [_Block(), _Block()]
    figures = _prune_structured(torch.nn.Sequential(*blocks), _options(iterations),
                                (torch.zeros(2, 8),), lambda _: None)
    left = sum(block.intermediate.dense.out_features for block in blocks)
    assert figures["strategy"] == "ffn-neurons"
    assert figures["removedNeurons"] == 64 - left > 16  # more than one iteration's share
