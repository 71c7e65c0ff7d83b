"""Structured pruning, low-rank decomposition and quantization recipes on small real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelpress.api import DecomposeStep, QuantizeStep
from modelpress.components import zoo
from modelpress.components.decompose import decompose_linears
from modelpress.components.modelio import export_onnx
from modelpress.components.prune_structured import ffn_blocks, prune_channels, prune_ffn_neurons
from modelpress.components.quantize import (
    convert_fp16,
    quantize_dynamic_int8,
    quantize_static_qdq,
)


def test_decompose_keeps_the_output_layer() -> None:
    model = zoo.digits_cnn()
    replaced = decompose_linears(model, DecomposeStep(energy=0.5))
    assert replaced == 1
    assert isinstance(model[-1], torch.nn.Linear)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_channel_pruning_shrinks_the_cnn_and_keeps_its_outputs() -> None:
    model = zoo.digits_cnn()
    before = sum(p.numel() for p in model.parameters())
    prune_channels(model, (torch.zeros(2, 1, 8, 8),), 0.5, "global")
    after = sum(p.numel() for p in model.parameters())
    assert after < before * 0.5
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def _tiny_bert() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)
    return BertModel(config, add_pooling_layer=False).eval()


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_ffn_neurons_are_removed_from_every_block(scope: str) -> None:
    model = _tiny_bert()
    removed = prune_ffn_neurons(model, 0.5, scope)
    widths = [up.out_features for up, _ in ffn_blocks(model)]
    assert removed == 128 - sum(widths)
    assert sum(widths) == pytest.approx(64, abs=2)
    if scope == "layer":
        assert widths == [32, 32]
    ids = torch.randint(0, 50, (2, 7))
    assert model(input_ids=ids)[0].shape == (2, 7, 32)


@pytest.fixture(scope="module")
def digits_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_onnx(zoo.digits_cnn(), {"x": zoo.digits("test")["x"][:4]}, ["x"], path)
    return path


@pytest.mark.parametrize(("recipe", "options", "max_ratio"), [
    (quantize_dynamic_int8, QuantizeStep(mode="dynamic"), 0.3),
    (quantize_static_qdq, QuantizeStep(mode="static"), 0.3),
    (convert_fp16, QuantizeStep(mode="fp16"), 0.55),
])
def test_recipes_shrink_the_model_and_still_run(digits_fp32: Path, tmp_path: Path, recipe,
                                                options: QuantizeStep, max_ratio: float) -> None:
    import onnxruntime as ort

    out = tmp_path / "q.onnx"
    recipe(digits_fp32, out, options, zoo.digits("train"))
    assert out.stat().st_size < digits_fp32.stat().st_size * max_ratio
    x = zoo.digits("test")["x"][:5]
    logits = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    assert logits.shape == (5, 10) and np.isfinite(logits).all()


def test_fake_quant_rounds_to_a_symmetric_per_channel_grid() -> None:
    from modelpress.components.fakequant import fake_quant_per_channel

    weight = torch.tensor([[1.0, -0.5, 0.26], [0.01, 0.02, -0.04]])
    quantized = fake_quant_per_channel(weight)
    scales = weight.abs().amax(dim=1, keepdim=True) / 127
    steps = quantized / scales
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert torch.allclose(quantized[:, 0].abs().max(), torch.tensor(1.0))
    assert torch.allclose(fake_quant_per_channel(quantized), quantized, atol=1e-7)


def test_quantization_aware_training_ends_on_the_grid_and_keeps_pruned_zeros() -> None:
    from modelpress.components.fakequant import fake_quant_per_channel
    from modelpress.components.prune import prunable_weights
    from modelpress.components.training import TrainingPlan, fine_tune

    torch.manual_seed(0)
    teacher = zoo.digits_cnn().eval()
    student = zoo.digits_cnn()
    student.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        student[0].weight[:4] = 0.0
    masks = {name: (w != 0).float() for name, w in prunable_weights(student).items()}
    train = {k: v[:256] for k, v in zoo.digits("train").items()}
    plan = TrainingPlan(task="classification", inputs=["x"], epochs=1, learning_rate=1e-3)
    before = student[6].weight.detach().clone()
    fine_tune(student, teacher, train, plan, masks, fake_quant=True)
    for weight in prunable_weights(student).values():
        assert torch.allclose(fake_quant_per_channel(weight), weight, atol=1e-6)
    assert torch.count_nonzero(student[0].weight[:4]) == 0
    assert not torch.allclose(student[6].weight, before)  # it trained


def test_distill_trains_a_named_student_and_reports_kd_against_labels_only(tmp_path: Path
                                                                           ) -> None:
    from modelpress.api import DistillStep
    from modelpress.components.distill import distill
    from modelpress.components.modelio import Manifest, load_torch, read_manifest, save_torch

    teacher = zoo.digits_cnn()
    teacher.load_state_dict(zoo.pretrained_state("digits-cnn"))
    manifest = Manifest(format="bundle", task="classification", inputs=["x"],
                        architecture="builtin://digits-cnn")
    save_torch(teacher, tmp_path / "original", manifest)
    from modelpress.components.splits import carve_rows, taken

    options = DistillStep(student="builtin://digits-mlp", epochs=3, learning_rate=3e-3)
    train = zoo.digits("train")
    kept, carved = carve_rows(len(train["y"]))
    result = distill(tmp_path / "original", tmp_path / "original", options,
                     taken(train, kept), tmp_path / "student", taken(train, carved))
    assert result.holdout_rows == len(carved)  # the pick was made on the validation split
    assert read_manifest(tmp_path / "student").architecture == "builtin://digits-mlp"
    assert result.kept in ("kd", "labels-only")
    assert result.holdout_accuracy_kd is not None and result.holdout_accuracy_kd > 0.7
    assert result.holdout_accuracy_labels_only is not None
    assert result.holdout_accuracy_labels_only > 0.7
    assert result.seconds > 0 and result.message.startswith(f"kept {result.kept}")
    student = load_torch(tmp_path / "student")
    assert sum(p.numel() for p in student.parameters()) < 5000
