"""Per-node sensitivity on a tiny ONNX chain whose layers are fragile by design.

Each layer adds a constant feature to its input before its MatMul, whose weights ignore
that feature: in fp32 it changes nothing, but dynamic int8 quantizes the MatMul's input
per tensor, so a large constant stretches the quantization step over the real signal.
The first layer's constant is the largest: it is the most fragile node.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelpress.api import QuantizeStep
from modelpress.components.quantize import Recipe, quantize_dynamic_int8
from modelpress.components.sensitivity import Judge, nodes_of, quantized_units, rank

WIDTH = 16
ROWS = 96
# The constant feature each layer's MatMul sees: layer0 most fragile, the last three sound.
MAGNITUDES = (1000.0, 300.0, 100.0, 0.0, 0.0, 0.0)
DYNAMIC = Recipe("dynamic-int8-per-channel", quantize_dynamic_int8,
                 QuantizeStep(per_channel=True), {})


def layer(index: int) -> str:
    return f"layer{index}"


def fragile_chain(path: Path, magnitudes: tuple[float, ...] = MAGNITUDES, seed: int = 0,
                  noise: float = 0.0) -> Path:
    """Add(constant) -> MatMul -> Relu per layer (the last without Relu), written to `path`;
    `noise` perturbs every weight (a lossy earlier step, with the same seed's weights)."""
    rng = np.random.default_rng(seed)
    nodes, initializers, current = [], [], "x"
    for index, magnitude in enumerate(magnitudes):
        shift = np.zeros(WIDTH, np.float32)
        shift[0] = magnitude
        weight = rng.normal(0.0, np.sqrt(2.0 / WIDTH), (WIDTH, WIDTH)).astype(np.float32)
        weight += noise * rng.normal(0.0, np.sqrt(2.0 / WIDTH), weight.shape).astype(np.float32)
        weight[0, :] = weight[:, 0] = 0.0  # the constant feature never reaches the output
        initializers += [numpy_helper.from_array(shift, f"shift{index}"),
                         numpy_helper.from_array(weight, f"weight{index}")]
        nodes += [helper.make_node("Add", [current, f"shift{index}"], [f"shifted{index}"],
                                   name=f"add{index}"),
                  helper.make_node("MatMul", [f"shifted{index}", f"weight{index}"],
                                   [f"mm{index}"], name=layer(index))]
        current = f"mm{index}"
        if index < len(magnitudes) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"relu{index}"],
                                          name=f"relu{index}"))
            current = f"relu{index}"
    graph = helper.make_graph(
        nodes, "fragile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["n", WIDTH])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def rows(seed: int = 1) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(ROWS, WIDTH)).astype(np.float32)
    x[:, 0] = 0.0
    return {"x": x}


@pytest.fixture(scope="module")
def ranked(tmp_path_factory: pytest.TempPathFactory) -> list:
    scratch = tmp_path_factory.mktemp("sensitivity")
    fp32 = fragile_chain(scratch / "fp32.onnx")
    full = scratch / "full.onnx"
    DYNAMIC.build(fp32, full)
    judge = Judge.against("embedding", rows(), fp32)
    return rank(DYNAMIC, fp32, full, judge.sampled(64), scratch)


def test_the_deliberately_fragile_node_ranks_first(ranked) -> None:
    assert [entry.nodes for entry in ranked[:3]] == [[layer(0)], [layer(1)], [layer(2)]]
    assert [entry.rank for entry in ranked] == list(range(1, len(MAGNITUDES) + 1))
    assert ranked[0].accuracy_drop > 10 * max(entry.accuracy_drop for entry in ranked[3:])
    assert all(entry.op_type == "MatMul" and entry.recipe == DYNAMIC.name for entry in ranked)


def test_every_quantized_matmul_is_ranked_once(ranked) -> None:
    assert sorted(node for entry in ranked for node in entry.nodes) == \
        sorted(layer(i) for i in range(len(MAGNITUDES)))
    assert nodes_of(ranked, 2) == [layer(0), layer(1)]


def test_nodes_left_in_fp32_are_not_ranked(tmp_path: Path) -> None:
    fp32 = fragile_chain(tmp_path / "fp32.onnx")
    partial = tmp_path / "partial.onnx"
    DYNAMIC.build(fp32, partial, [layer(0), layer(3)])
    units = quantized_units(fp32, partial)
    assert [unit.nodes for unit in units] == [(layer(1),), (layer(2),), (layer(4),), (layer(5),)]


def test_a_large_graph_is_ranked_in_groups(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from modelpress.components import sensitivity

    monkeypatch.setattr(sensitivity, "MAX_UNITS", 4)
    fp32 = fragile_chain(tmp_path / "fp32.onnx")
    full = tmp_path / "full.onnx"
    DYNAMIC.build(fp32, full)
    units = quantized_units(fp32, full)
    assert [len(unit.nodes) for unit in units] == [2, 2, 1, 1]
    assert units[0].label == f"{layer(0)} .. {layer(1)}"


def test_sampled_rows_spread_over_the_data() -> None:
    decision = {"x": np.arange(100, dtype=np.float32)[:, None]}
    judge = Judge("embedding", decision, decision["x"])
    picked = judge.sampled(5).decision["x"][:, 0]
    assert picked.tolist() == [0.0, 25.0, 50.0, 74.0, 99.0]
    assert judge.sampled(500) is judge


def test_the_report_shows_the_ranking_and_marks_the_nodes_kept_in_fp32(ranked) -> None:
    from modelpress.api import Candidate, MetricValue, ModelFigures, Results
    from modelpress.components.report import sensitivity_section

    figures = ModelFigures(size_bytes=1, parameters=1, metric=MetricValue(name="cosine",
                                                                          value=1.0))
    kept = Candidate(name="mixed", accuracy_drop=0.01, fp32_nodes=[layer(0)], chosen=True)
    results = Results(baseline=figures, compressed=figures, compression_ratio=1.0,
                      accuracy_drop=0.0, candidates=[kept], sensitivity=ranked)
    section = sensitivity_section(results)
    assert section.count("<tr><td>") == len(MAGNITUDES)
    assert f"<tr><td>1</td><td>{layer(0)}</td><td>MatMul</td>" in section
    assert section.count("<td>yes</td>") == 1 and 'alt="sensitivity"' in section
    assert sensitivity_section(results.model_copy(update={"sensitivity": []})) == ""
