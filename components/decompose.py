"""Decompose: replace Linear layers by two thinner ones from a truncated SVD.

W (out x in) ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T): rank r is the smallest that keeps
`energy` of the squared singular values (or `rankRatio` of the full rank). A layer is
only replaced when the two factors hold fewer parameters than W.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelpress.api import DecomposeStep
from modelpress.components.data import Arrays
from modelpress.components.modelio import (
    REBUILDABLE,
    load_torch,
    read_manifest,
    save_traced,
    torch_inputs,
)
from modelpress.components.result import timed
from modelpress.errors import InvalidInput
from modelpress.records import DecomposeRecord

if TYPE_CHECKING:
    import torch


def rank_for(singular_values: torch.Tensor, options: DecomposeStep) -> int:
    if options.rank_ratio is not None:
        return max(1, int(round(options.rank_ratio * len(singular_values))))
    energy = (singular_values ** 2).cumsum(0) / (singular_values ** 2).sum()
    return int((energy < options.energy).sum()) + 1


def factorize(layer: torch.nn.Linear, options: DecomposeStep) -> torch.nn.Module | None:
    """Two Linear layers equal to `layer` up to the truncated rank, or None if not smaller."""
    import torch

    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    rank = rank_for(s, options)
    if rank * (layer.in_features + layer.out_features) >= layer.in_features * layer.out_features:
        return None
    root = s[:rank].sqrt()
    first = torch.nn.Linear(layer.in_features, rank, bias=False)
    second = torch.nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root[None, :])
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return torch.nn.Sequential(first, second)


def decompose_linears(module: torch.nn.Module, options: DecomposeStep) -> int:
    """Replace every Linear except the output layer in place; return how many changed."""
    import torch

    linears = [(name, m) for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    replaced = 0
    for name, layer in linears[:-1]:
        factors = factorize(layer, options)
        if factors is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, factors)
            replaced += 1
    return replaced


def decompose(model_in: Path, options: DecomposeStep, sample: Arrays,
              model_out: Path) -> DecomposeRecord:
    with timed() as clock:
        manifest = read_manifest(model_in)
        if manifest.format not in REBUILDABLE:
            raise InvalidInput("spec.steps", "decompose needs a model it can rebuild: a "
                                             "builtin, state_dict, Hugging Face folder or "
                                             "python:// model, before any structured prune or "
                                             "decompose step")
        module = load_torch(model_in)
        before = sum(p.numel() for p in module.parameters())
        replaced = decompose_linears(module, options)
        after = sum(p.numel() for p in module.parameters())
        example = torch_inputs({k: v[:2] for k, v in sample.items()}, manifest.inputs)
        save_traced(module, example, model_out, manifest)
    return clock.stamp(DecomposeRecord(
        replaced_layers=replaced, parameters_before=int(before), parameters=int(after),
        message=f"{replaced} Linear layers factorized: {before:,} -> {after:,} parameters"))
