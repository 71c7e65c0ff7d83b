"""Quantization-aware fine-tuning: train fp32 shadow weights through int8 fake quantization.

Every forward pass uses weights rounded to the int8 grid that onnxruntime will use later
(symmetric, per output channel, scale = max|w| / 127); gradients pass straight through the
rounding to the fp32 shadows (the straight-through estimator). Shadows live outside the
module, so this works for TorchScript models too, whose forward cannot be rewritten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

INT8_LEVELS = 127


def fake_quant_per_channel(weight: torch.Tensor) -> torch.Tensor:
    """`weight` rounded to a symmetric per-output-channel int8 grid, back in float."""
    reduce = tuple(range(1, weight.dim()))
    scale = weight.abs().amax(dim=reduce, keepdim=True).clamp(min=1e-12) / INT8_LEVELS
    return (weight / scale).round().clamp(-INT8_LEVELS, INT8_LEVELS) * scale


class ShadowWeights:
    """fp32 shadows of a module's weight matrices, written into it fake-quantized."""

    def __init__(self, module: torch.nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
        from modelpress.components.prune import prunable_weights

        self._targets = prunable_weights(module)
        self._masks = masks or {}
        self._shadows = {name: weight.detach().clone().requires_grad_(True)
                         for name, weight in self._targets.items()}
        self._others = [parameter for name, parameter in module.named_parameters()
                        if name not in self._targets and parameter.requires_grad]

    def trainable(self) -> list[torch.Tensor]:
        return [*self._shadows.values(), *self._others]

    def quantize_into_module(self) -> None:
        import torch

        with torch.no_grad():
            for name, weight in self._targets.items():
                shadow = self._shadows[name]
                if name in self._masks:
                    shadow = shadow * self._masks[name]  # pruned weights stay pruned
                weight.copy_(fake_quant_per_channel(shadow))

    def pass_gradients_through(self) -> None:
        """The straight-through estimator: d(loss)/d(shadow) := d(loss)/d(quantized)."""
        for name, weight in self._targets.items():
            self._shadows[name].grad = weight.grad
            weight.grad = None
