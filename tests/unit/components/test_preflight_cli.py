"""Bad input (a data file, a step the model cannot take) stops `modelpress run` before any
step: exit 2, one line naming the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

RUN_TIMEOUT_S = 120


def test_a_csv_without_the_text_column_exits_2_naming_the_field(tmp_path: Path) -> None:
    data = tmp_path / "eval.csv"
    data.write_text("sentence,label\nA fine day.,1\n", encoding="utf-8")
    job = {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
           "metadata": {"name": "bad-csv", "namespace": "ml-team"},
           "spec": {"model": {"uri": "builtin://minilm-l6", "task": "embedding"},
                    "data": {"eval": data.as_uri()},
                    "steps": [{"quantize": {"mode": "dynamic"}}]}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job), encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-m", "modelpress.cli", "run", str(tmp_path / "job.yaml"),
         "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    shown = f"exit {completed.returncode}\n{completed.stdout}\n{completed.stderr}"
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert completed.returncode == 2, shown
    assert len(lines) == 1, shown
    assert lines[0].startswith("error: spec.data.eval: "), shown
    assert f"{data.as_uri()} has no column 'text' (columns: sentence, label)" in lines[0], shown
    assert not (tmp_path / "out" / "results.json").exists(), shown


def _program_files(folder: Path) -> dict[str, Path]:
    """The digits CNN as TorchScript and as a torch.export program (dynamic batch)."""
    import torch

    from modelpress.components import zoo

    module = zoo.digits_cnn().eval()
    example = (torch.zeros(2, 1, 8, 8),)
    torch.jit.save(torch.jit.trace(module, example), str(folder / "cnn.ts"))
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, example, dynamic_shapes=({0: batch},))
    torch.export.save(program, str(folder / "cnn.pt2"))
    return {"torchscript": folder / "cnn.ts", "pt2": folder / "cnn.pt2"}


def test_structured_prune_of_a_program_is_refused_before_any_step(tmp_path: Path) -> None:
    """TorchScript and .pt2 cannot be rebuilt by torch-pruning: exit 2, one line saying
    what to hand over instead, even with the program trusted."""
    for kind, path in _program_files(tmp_path).items():
        job = {"apiVersion": "modelpress.io/v1alpha1", "kind": "CompressionJob",
               "metadata": {"name": f"prune-{kind}", "namespace": "ml-team"},
               "spec": {"model": {"uri": path.as_uri()}, "data": {"eval": "builtin://digits"},
                        "steps": [{"prune": {"structured": True}}]}}
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(job), encoding="utf-8")
        completed = subprocess.run(
            [sys.executable, "-m", "modelpress.cli", "run", str(tmp_path / "job.yaml"),
             "-o", str(tmp_path / "out"), "--trust-model-code"],
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        shown = f"{kind}: exit {completed.returncode}\n{completed.stderr}"
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        assert completed.returncode == 2, shown
        assert len(lines) == 1 and lines[0].startswith("error: spec.steps[0]: "), shown
        assert "a state_dict with spec.model.architecture, or a Hugging Face folder" in lines[0]
        assert not (tmp_path / "out").exists(), shown
