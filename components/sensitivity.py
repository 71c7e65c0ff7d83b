"""Sensitivity: what quantizing each node of a recipe costs, most harmful first.

Method (one node at a time, measured end to end): the recipe is built once per node with
only that node quantized (every other node named in onnxruntime's `nodes_to_exclude`), and
the node's cost is that build's accuracy drop against the original on the decision rows.
Chosen over the alternative (every node quantized but that one, the drop it buys back)
after measuring both on MiniLM-L6 (docs/quantization.md): the two rankings agree (Spearman
0.83), the costs add up to the whole recipe's drop (0.0071 of 0.0077) instead of going
negative in noise, the search they order meets the bar with as few or fewer nodes, and a
build that quantizes one weight costs under half the CPU of one that quantizes all but
one. A coarse metric (accuracy on a few rows) ties often; ties are broken by the outputs'
relative squared error to the original's.

What is ranked: the MatMul, Gemm and Conv nodes the recipe did quantize, read off the
built graph (a node replaced by an integer op, or fed by a DequantizeLinear). A graph with
more than MAX_UNITS of them is ranked in MAX_UNITS groups of consecutive nodes, each kept in
fp32 as a whole.

Cost: one build and one scoring per node, on SENSITIVITY_ROWS rows sampled evenly from the
decision data (docs/quantization.md gives MiniLM-L6's time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelpress.api import SensitivityEntry
from modelpress.components.data import LABELS, Arrays
from modelpress.components.onnxfiles import data_files
from modelpress.components.onnxstats import run_batched, session
from modelpress.components.quantize import Recipe
from modelpress.components.validate import headline_drop

RANKED_OPS = ("MatMul", "Gemm", "Conv")
SENSITIVITY_ROWS = 32
MAX_UNITS = 48


@dataclass(frozen=True)
class Judge:
    """Scores built files on the decision rows against the original model's outputs."""

    task: str
    decision: Arrays
    reference: np.ndarray

    @classmethod
    def against(cls, task: str, decision: Arrays, baseline_onnx: Path) -> Judge:
        return cls(task, decision, run_batched(session(baseline_onnx), decision))

    def drop(self, path: Path) -> float:
        """The file's headline metric drop against the original, on these rows."""
        return self.figures(path)[0]

    def figures(self, path: Path) -> tuple[float, float]:
        """(headline metric drop, relative squared error of the outputs) against the
        original's, on these rows."""
        outputs = run_batched(session(path), self.decision)
        drop = headline_drop(self.task, outputs, self.reference, self.decision.get(LABELS))
        error = float(np.mean((outputs - self.reference) ** 2)
                      / max(float(np.mean(self.reference ** 2)), 1e-12))
        return round(drop, 6), round(error, 6)

    def sampled(self, rows: int) -> Judge:
        """The same judge on `rows` rows spread evenly over the data (all when fewer)."""
        length = len(self.reference)
        if length <= rows:
            return self
        picked = np.linspace(0, length - 1, rows).round().astype(int)
        return Judge(self.task, {name: array[picked] for name, array in self.decision.items()},
                     self.reference[picked])


@dataclass(frozen=True)
class Unit:
    """What is ranked and kept in fp32 as one: a node, or a group of consecutive nodes."""

    nodes: tuple[str, ...]
    op_type: str

    @property
    def label(self) -> str:
        return self.nodes[0] if len(self.nodes) == 1 else f"{self.nodes[0]} .. {self.nodes[-1]}"


def quantized_units(fp32: Path, quantized: Path) -> list[Unit]:
    """The MatMul, Gemm and Conv nodes of `fp32` that the recipe quantized in `quantized`,
    in graph order; grouped into MAX_UNITS runs of consecutive nodes when there are more."""
    import onnx

    original = onnx.load(str(fp32), load_external_data=False).graph
    built = onnx.load(str(quantized), load_external_data=False).graph
    twins = {node.name: node for node in built.node}
    dequantized = {name for node in built.node if node.op_type == "DequantizeLinear"
                   for name in node.output}
    ranked = [node for node in original.node
              if node.op_type in RANKED_OPS and _quantized(node, twins, dequantized)]
    groups = np.array_split(np.arange(len(ranked)), min(len(ranked), MAX_UNITS))
    return [Unit(tuple(ranked[i].name for i in group), ranked[group[0]].op_type)
            for group in groups if len(group)]


def _quantized(node: Any, twins: dict[str, Any], dequantized: set[str]) -> bool:
    twin = twins.get(node.name)
    if twin is None or twin.op_type != node.op_type:  # replaced by an integer op
        return True
    return any(name in dequantized for name in twin.input)  # QDQ: fed by DequantizeLinear


def rank(recipe: Recipe, fp32: Path, full: Path, judge: Judge,
         scratch: Path) -> list[SensitivityEntry]:
    """Every unit the recipe quantized in `full`, most harmful first: the drop (and output
    error) of a build with only that unit quantized, on `judge`'s rows."""
    import onnx

    units = quantized_units(fp32, full)
    every_node = {node.name for node in onnx.load(str(fp32), load_external_data=False).graph.node}
    build = scratch / "sensitivity.onnx"
    measured: list[tuple[Unit, float, float]] = []
    for unit in units:
        # An unnamed node ("") is excluded by its empty name, like every other one.
        recipe.build(fp32, build, sorted(every_node - set(unit.nodes)))
        measured.append((unit, *judge.figures(build)))
    _remove(build)
    measured.sort(key=lambda item: (-item[1], -item[2]))
    return [SensitivityEntry(node=unit.label, op_type=unit.op_type, nodes=list(unit.nodes),
                             recipe=recipe.name, accuracy_drop=drop, output_error=error,
                             rank=position)
            for position, (unit, drop, error) in enumerate(measured, start=1)]


def nodes_of(ranking: Sequence[SensitivityEntry], count: int) -> list[str]:
    """The graph nodes of the `count` most harmful entries, in ranking order."""
    return [node for entry in ranking[:count] for node in entry.nodes]


def _remove(path: Path) -> None:
    for data in data_files(path) if path.exists() else []:
        data.unlink()
    path.unlink(missing_ok=True)
