"""A bad data file stops `modelpress run` before any step: exit 2, one line naming the field."""

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
