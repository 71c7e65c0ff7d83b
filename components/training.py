"""Fine-tuning shared by prune (between schedule iterations) and distill.

The loss follows the task: classification mixes the teacher's softened logits with the
labels (Hinton et al.); embeddings regress the teacher's embedding (MSE). Masks, when
given, keep pruned weights at zero after every optimiser step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelpress.components.data import LABELS, Arrays
from modelpress.components.modelio import torch_inputs, without_trailing_padding

if TYPE_CHECKING:
    import torch

BATCH_SIZE = 64
# Texts are batched with others of about their length, within groups of this many batches
# drawn at random (Hugging Face Trainer's group_by_length): little padding, random order.
LENGTH_GROUP_BATCHES = 50


@dataclass(frozen=True)
class TrainingPlan:
    task: str
    inputs: list[str]
    epochs: int
    learning_rate: float = 1e-3
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the teacher's term; 1.0 = teacher only


def distillation_loss(student_out: torch.Tensor, teacher_out: torch.Tensor,
                      labels: torch.Tensor | None, plan: TrainingPlan) -> torch.Tensor:
    import torch.nn.functional as F

    if plan.task == "embedding":
        return F.mse_loss(student_out, teacher_out)
    soft = F.kl_div(F.log_softmax(student_out / plan.temperature, dim=-1),
                    F.softmax(teacher_out / plan.temperature, dim=-1),
                    reduction="batchmean") * plan.temperature ** 2
    if labels is None or plan.alpha >= 1.0:
        return soft
    return plan.alpha * soft + (1 - plan.alpha) * F.cross_entropy(student_out, labels)


def fine_tune(student: torch.nn.Module, teacher: torch.nn.Module, train: Arrays,
              plan: TrainingPlan, masks: dict[str, torch.Tensor] | None = None,
              fake_quant: bool = False) -> float:
    """Train `student` towards `teacher` (and labels); return the last epoch's mean loss.

    With `fake_quant`, the weights are trained through int8 fake quantization and end on
    the int8 grid (quantization-aware training).
    """
    import torch

    from modelpress.components.fakequant import ShadowWeights

    torch.manual_seed(0)
    inputs = dict(zip(plan.inputs, torch_inputs(train, plan.inputs), strict=True))
    labels = torch.from_numpy(train[LABELS]) if LABELS in train else None
    with torch.no_grad():
        targets = _batched(teacher.eval(), inputs)
    shadows = ShadowWeights(student, masks) if fake_quant else None
    trainable = shadows.trainable() if shadows else [
        p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=plan.learning_rate)
    parameters = dict(student.named_parameters())
    last_loss = 0.0
    for _ in range(plan.epochs):
        student.train()
        losses = []
        for batch in epoch_batches(len(targets), inputs.get("attention_mask")):
            optimizer.zero_grad()
            if shadows:
                shadows.quantize_into_module()
            out = student(*_rows(inputs, batch).values())
            loss = distillation_loss(out, targets[batch],
                                     None if labels is None else labels[batch], plan)
            loss.backward()
            if shadows:
                shadows.pass_gradients_through()
            optimizer.step()
            if masks:
                with torch.no_grad():
                    for name, mask in masks.items():
                        parameters[name].mul_(mask)
            losses.append(float(loss))
        last_loss = sum(losses) / len(losses)
    if shadows:
        shadows.quantize_into_module()
    student.eval()
    return last_loss


def epoch_batches(rows: int, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """An epoch's batches of row indices: a random order, and for texts (`attention_mask`)
    each group of LENGTH_GROUP_BATCHES batches sorted by length, so a batch pads only to its
    own longest text (modelio.without_trailing_padding cuts the rest), the batches then
    shuffled."""
    import torch

    order = torch.randperm(rows)
    if attention_mask is None:
        return list(order.split(BATCH_SIZE))
    lengths = attention_mask.sum(dim=1)
    grouped = [group[torch.argsort(lengths[group], descending=True, stable=True)]
               for group in order.split(BATCH_SIZE * LENGTH_GROUP_BATCHES)]
    batches = torch.cat(grouped).split(BATCH_SIZE)
    return [batches[index] for index in torch.randperm(len(batches))]


def _rows(inputs: dict[str, torch.Tensor], rows: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    """The named inputs of `rows`, in the model's input order, without padding they all share."""
    return without_trailing_padding({name: tensor[rows] for name, tensor in inputs.items()})


def _batched(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    import torch

    count = len(next(iter(inputs.values())))
    return torch.cat([module(*_rows(inputs, slice(start, start + 256)).values())
                      for start in range(0, count, 256)])
