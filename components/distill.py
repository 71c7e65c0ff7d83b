"""Distill: train the working model (student) towards the fetched model (teacher).

Logit distillation for classification, embedding regression for embeddings. Weights that
an earlier prune step zeroed stay zero, so distillation never undoes compression.

KD does not always beat plain fine-tuning. When the data has labels, the same student is
also trained on the labels alone; both are scored on the job's validation split (never on
the eval set; components.splits) and the better one is kept. Both scores are reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from modelpress.api import DistillStep
from modelpress.components.data import LABELS, Arrays
from modelpress.components.modelio import (
    Manifest,
    load_torch,
    read_manifest,
    save_torch,
    torch_inputs,
)
from modelpress.components.prune import current_masks
from modelpress.components.result import timed
from modelpress.components.training import TrainingPlan, fine_tune
from modelpress.components.zoo import build_architecture
from modelpress.records import DistillRecord

if TYPE_CHECKING:
    import torch

def holdout_accuracy(module: torch.nn.Module, holdout: Arrays, inputs: list[str]) -> float:
    import torch

    with torch.no_grad():
        logits = module.eval()(*torch_inputs(holdout, inputs))
    return float((logits.argmax(-1).numpy() == holdout[LABELS]).mean())


def student_source(model_in: Path, options: DistillStep
                   ) -> tuple[Manifest, Callable[[], torch.nn.Module]]:
    """The student's manifest, and a way to make a fresh student: the current model, or
    the architecture the step names, initialised from a fixed seed."""
    manifest = read_manifest(model_in)
    if options.student is None:
        return manifest, lambda: load_torch(model_in)
    architecture = options.student

    def fresh() -> torch.nn.Module:
        import torch

        torch.manual_seed(0)
        return build_architecture(architecture)

    return replace(manifest, format="bundle", architecture=architecture), fresh


def distill(model_in: Path, original: Path, options: DistillStep, train: Arrays,
            model_out: Path, validation: Arrays | None = None) -> DistillRecord:
    """Distill into the student; with labels in `train` and `validation`, keep KD or
    labels-only training, whichever scores better on `validation`."""
    with timed() as clock:
        manifest, fresh_student = student_source(model_in, options)
        student, teacher = fresh_student(), load_torch(original)
        masks = current_masks(student)
        plan = TrainingPlan(task=manifest.task, inputs=manifest.inputs, epochs=options.epochs,
                            learning_rate=options.learning_rate,
                            temperature=options.temperature, alpha=options.alpha)
        student_name = options.student or "the current model"
        if manifest.task == "classification" and LABELS in train and validation is not None \
                and LABELS in validation:
            plain = fresh_student()  # not a deep copy: deep-copied TorchScript won't train
            student, record = _kd_against_labels_only(student, plain, teacher,
                                                      (train, validation), plan, masks,
                                                      student_name)
        else:
            loss = fine_tune(student, teacher, train, plan, masks)
            record = DistillRecord(epochs=options.epochs, student=student_name, kept="kd",
                                   final_loss=round(loss, 6),
                                   message=f"{options.epochs} epochs, final loss {loss:.4g}")
        save_torch(student, model_out, manifest)
    return clock.stamp(record)


def _kd_against_labels_only(student: torch.nn.Module, plain: torch.nn.Module,
                            teacher: torch.nn.Module, data: tuple[Arrays, Arrays],
                            plan: TrainingPlan, masks: dict, student_name: str
                            ) -> tuple[torch.nn.Module, DistillRecord]:
    """Train both students on `data`'s train half; keep the better on its validation half."""
    fit, holdout = data
    fine_tune(student, teacher, fit, plan, masks)
    fine_tune(plain, teacher, fit, replace(plan, alpha=0.0), masks)
    kd_score = holdout_accuracy(student, holdout, plan.inputs)
    plain_score = holdout_accuracy(plain, holdout, plan.inputs)
    kd_wins = kd_score >= plain_score
    record = DistillRecord(
        epochs=plan.epochs, student=student_name, kept="kd" if kd_wins else "labels-only",
        holdout_accuracy_kd=round(kd_score, 6), holdout_accuracy_labels_only=round(plain_score, 6),
        holdout_rows=len(holdout[LABELS]),
        message=f"kept {'kd' if kd_wins else 'labels-only'}: validation accuracy KD "
                f"{kd_score:.4f} vs labels only {plain_score:.4f}")
    return (student if kd_wins else plain), record
