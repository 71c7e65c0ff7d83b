"""Distill: train the working model (student) towards the fetched model (teacher).

Logit distillation for classification, embedding regression for embeddings. Weights that
an earlier prune step zeroed stay zero, so distillation never undoes compression.
"""

from __future__ import annotations

from pathlib import Path

from modelpress.api import DistillStep
from modelpress.components.data import Arrays
from modelpress.components.modelio import load_torch, read_manifest, save_torch
from modelpress.components.prune import prunable_weights
from modelpress.components.result import StepResult, timed
from modelpress.components.training import TrainingPlan, fine_tune


def distill(model_in: Path, original: Path, options: DistillStep, train: Arrays,
            model_out: Path) -> StepResult:
    with timed("distill") as result:
        manifest = read_manifest(model_in)
        student, teacher = load_torch(model_in), load_torch(original)
        masks = {name: (weight != 0).to(weight.dtype)
                 for name, weight in prunable_weights(student).items()}
        plan = TrainingPlan(task=manifest.task, inputs=manifest.inputs, epochs=options.epochs,
                            learning_rate=options.learning_rate,
                            temperature=options.temperature, alpha=options.alpha)
        loss = fine_tune(student, teacher, train, plan, masks)
        save_torch(student, model_out, manifest)
        result.figures = {"finalLoss": round(loss, 6), "epochs": options.epochs}
        result.message = f"{options.epochs} epochs, final loss {loss:.4g}"
    return result
