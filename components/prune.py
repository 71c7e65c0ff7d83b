"""Prune: global or per-layer magnitude pruning of weight matrices, optionally gradual.

Unstructured sparsity zeroes that fraction of the weights; it does not make the dense model
smaller or faster by itself, so the step reports nonzero counts, never a speedup.
Structured sparsity removes that fraction of heads, FFN neurons or channels
(prune_structured.py); the step reports the fraction it actually removed of each and the
parameter reduction that produced, which is larger (docs/pruning.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelpress.api import PruneStep
from modelpress.components.data import Arrays
from modelpress.components.modelio import load_torch, read_manifest, save_torch
from modelpress.components.result import timed
from modelpress.components.training import TrainingPlan, fine_tune
from modelpress.records import PruneRecord

if TYPE_CHECKING:
    import torch

    from modelpress.components.prune_structured import Units


def prunable_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weight matrices and kernels (2-D and up); biases, norms and embeddings stay dense."""
    return {name: parameter for name, parameter in module.named_parameters()
            if name.endswith("weight") and parameter.dim() >= 2 and "embeddings" not in name}


def current_masks(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Keep-masks of the weights already pruned, so training keeps their zeros."""
    return {name: (weight != 0).to(weight.dtype)
            for name, weight in prunable_weights(module).items()}


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float,
                    scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the `sparsity` fraction of smallest |w|, globally or per layer."""
    import torch

    if sparsity <= 0:
        return {name: torch.ones_like(weight) for name, weight in weights.items()}
    if scope == "layer":
        return {name: _mask_above(weight.abs(), _threshold(weight.abs().flatten(), sparsity))
                for name, weight in weights.items()}
    magnitudes = torch.cat([weight.detach().abs().flatten() for weight in weights.values()])
    threshold = _threshold(magnitudes, sparsity)
    return {name: _mask_above(weight.abs(), threshold) for name, weight in weights.items()}


def _threshold(magnitudes: torch.Tensor, sparsity: float) -> float:
    count = max(1, int(sparsity * magnitudes.numel()))
    return float(magnitudes.detach().kthvalue(count).values)


def _mask_above(magnitudes: torch.Tensor, threshold: float) -> torch.Tensor:
    return (magnitudes.detach() > threshold).to(magnitudes.dtype)


def schedule_sparsities(target: float, iterations: int) -> list[float]:
    """Cubic ramp (Zhu & Gupta 2017): prune fast early, gently near the target."""
    return [target * (1 - (1 - step / iterations) ** 3) for step in range(1, iterations + 1)]


def apply_masks(module: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    import torch

    parameters = dict(module.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            parameters[name].mul_(mask)


def step_ratios(cumulative: list[float]) -> list[float]:
    """Per-iteration ratios of what is left, so the iterations compose to the cumulative ones."""
    ratios, kept = [], 1.0
    for target in cumulative:
        ratios.append(1 - (1 - target) / kept if kept > 0 else 0.0)
        kept = 1 - target
    return ratios


def _prune_unstructured(student: torch.nn.Module, options: PruneStep,
                        fine: Callable[[dict[str, torch.Tensor] | None], None]) -> None:
    weights = prunable_weights(student)
    for sparsity in schedule_sparsities(options.sparsity, options.schedule.iterations):
        masks = magnitude_masks(weights, sparsity, options.scope)
        apply_masks(student, masks)
        fine(masks)


def _prune_structured(student: torch.nn.Module, options: PruneStep, example: tuple,
                      fine: Callable[[dict[str, torch.Tensor] | None], None]) -> dict[str, Any]:
    """Prune in `options.schedule.iterations` steps; return what all of them removed together
    (PruneRecord's structure fields, wire names)."""
    from modelpress.components.prune_structured import count_units, prune_structured

    before = count_units(student)
    for ratio in step_ratios(schedule_sparsities(options.sparsity, options.schedule.iterations)):
        prune_structured(student, example, ratio, options.scope)
        fine(None)
    return structure_figures(before, count_units(student))


def structure_figures(before: Units, after: Units) -> dict[str, Any]:
    """Counts and ratios removed, for the kinds of structure the model has."""
    from modelpress.components.prune_structured import strategy_name

    figures: dict[str, Any] = {"strategy": strategy_name(before)}
    for kind, wire in (("heads", "Heads"), ("neurons", "Neurons"), ("channels", "Channels")):
        total = getattr(before, kind)
        if total:
            removed = total - getattr(after, kind)
            figures[f"removed{wire}"] = removed
            figures[f"removed{wire[:-1]}Ratio"] = round(removed / total, 4)
    return figures


def removed_structure(record: PruneRecord) -> list[str]:
    """What a structured prune removed, one part per kind: "0.5 of the attention heads (6)"."""
    return [f"{ratio:g} of the {label} ({removed:,})" for label, removed, ratio in (
        ("attention heads", record.removed_heads, record.removed_head_ratio),
        ("FFN neurons", record.removed_neurons, record.removed_neuron_ratio),
        ("channels", record.removed_channels, record.removed_channel_ratio))
        if removed is not None and ratio is not None]


def _structure_message(record: PruneRecord) -> str:
    """The ratio of structure removed and the parameter reduction it produced, in one line."""
    parts = removed_structure(record)
    return (f"structured ({record.strategy}): removing {', '.join(parts) or 'nothing'} "
            f"removed {record.parameter_reduction:.1%} of the parameters "
            f"({record.parameters:,} of {record.parameters_before:,} left)")


def _unstructured_message(record: PruneRecord) -> str:
    return (f"unstructured: {record.parameters:,} parameters "
            f"({record.nonzero_parameters:,} nonzero) of {record.parameters_before:,}")


def _counts(module: torch.nn.Module) -> tuple[int, int]:
    parameters = list(module.parameters())
    return sum(int(p.numel()) for p in parameters), sum(int(p.count_nonzero()) for p in parameters)


def prune_record(pruned: torch.nn.Module, parameters_before: int,
                 structure: dict[str, Any] | None) -> PruneRecord:
    """What the prune did to `pruned`; `structure`: `_prune_structured`'s figures, None when
    the prune was unstructured. The parameter reduction counts the parameters a structured
    prune removed, the weights an unstructured one zeroed."""
    after, nonzero = _counts(pruned)
    left = nonzero if structure is None else after
    record = PruneRecord.model_validate({
        **(structure or {}), "parametersBefore": parameters_before, "parameters": after,
        "nonzeroParameters": nonzero, "parameterReduction": round(1 - left / parameters_before, 4)})
    message = _unstructured_message if structure is None else _structure_message
    return record.model_copy(update={"message": message(record)})


def prune(model_in: Path, original: Path, options: PruneStep, sample: Arrays,
          train: Arrays | None, model_out: Path) -> PruneRecord:
    """Prune the working model in `model_in`, fine-tuning against `original` between steps."""
    from modelpress.components.modelio import save_traced, torch_inputs

    with timed() as clock:
        manifest = read_manifest(model_in)
        student = load_torch(model_in)
        before, _ = _counts(student)
        plan = TrainingPlan(task=manifest.task, inputs=manifest.inputs,
                            epochs=options.schedule.fine_tune_epochs, alpha=0.5)
        teacher = load_torch(original) if train is not None and plan.epochs > 0 else None

        def fine(masks: dict[str, torch.Tensor] | None) -> None:
            if teacher is not None and train is not None:
                fine_tune(student, teacher, train, plan, masks)

        structure: dict[str, Any] | None = None
        if options.structured:
            example = torch_inputs({k: v[:2] for k, v in sample.items()}, manifest.inputs)
            structure = _prune_structured(student, options, example, fine)
            manifest = save_traced(student, example, model_out, manifest)
        else:
            _prune_unstructured(student, options, fine)
            save_torch(student, model_out, manifest)
        record = prune_record(student, before, structure)
    return clock.stamp(record)
