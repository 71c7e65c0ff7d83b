"""The search step on a tiny digits CNN: seeded repeats, stopping early, best so far."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelpress.components import search as search_module
from modelpress.components.search import BEST_PREFIX, TRIALS_KEY, read_progress

sys.path.insert(0, str(Path(__file__).parent))
from search_fixtures import digits_spec, fetched, run_search  # noqa: E402

GRID = {"parameter": "steps[0].prune.sparsity", "values": [0.2, 0.5, 0.8]}
TPE = {"sampler": "tpe", "seed": 7, "maxTrials": 3, "parameters": [
    {"parameter": "steps[0].prune.sparsity", "low": 0.1, "high": 0.8},
    {"parameter": "steps[1].quantize.mode", "values": ["dynamic", "fp16"]}]}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fetched")
    fetched(folder)
    return folder


def _figures(out: Path) -> list[tuple[str, float | None, int | None, bool]]:
    progress = read_progress(out / "output" / TRIALS_KEY)
    return [(t.name, t.accuracy_drop, t.size_bytes, t.chosen) for t in progress.trials]


@pytest.mark.parametrize("shape", [GRID, TPE], ids=["grid", "tpe"])
def test_a_seeded_search_repeated_gives_the_same_trials_and_choice(
        work: Path, tmp_path: Path, shape: dict) -> None:
    first = run_search(work, digits_spec(shape), tmp_path / "first")[1]
    second = run_search(work, digits_spec(shape), tmp_path / "second")[1]
    assert first.chosen is not None and first.chosen == second.chosen
    assert _figures(tmp_path / "first") == _figures(tmp_path / "second")
    assert len(first.candidates) == 3


def test_tpe_draws_from_the_ranges_and_values_it_was_given(work: Path, tmp_path: Path) -> None:
    record = run_search(work, digits_spec({**TPE, "seed": 11}), tmp_path)[1]
    assert "3 trial(s), tpe sampler; maxTrials 3 reached" in record.message
    drawn = [dict(part.split("=") for part in c.name.split(": ")[1].split(", "))
             for c in record.candidates]
    assert all(0.1 <= float(d["steps[0].prune.sparsity"]) <= 0.8 for d in drawn)
    assert {d["steps[1].quantize.mode"] for d in drawn} <= {"dynamic", "fp16"}
    assert len({d["steps[0].prune.sparsity"] for d in drawn}) == 3


def test_max_trials_below_the_grid_ends_with_the_best_so_far(work: Path, tmp_path: Path) -> None:
    ledger, record = run_search(work, digits_spec({**GRID, "maxTrials": 2}), tmp_path)
    assert "2 trial(s), grid sampler; maxTrials 2 reached" in record.message
    assert [c.name.split(": ")[1] for c in record.candidates] == [
        "steps[0].prune.sparsity=0.2", "steps[0].prune.sparsity=0.5"]
    progress = read_progress(tmp_path / "output" / TRIALS_KEY)
    assert progress.finished and progress.chosen == record.chosen
    best = (tmp_path / "output" / BEST_PREFIX / "model.onnx").read_bytes()
    assert best == (tmp_path / "compressed" / "model.onnx").read_bytes()
    assert [r.name for r in ledger][-3:] == ["prune", "quantize", "validate"]


def test_the_time_budget_ends_the_search_between_trials(
        work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count(step=40)  # every look at the clock: 40 s later
    monkeypatch.setattr(search_module.time, "monotonic", lambda: float(next(ticks)))
    record = run_search(work, digits_spec({**GRID, "timeBudgetSeconds": 100}), tmp_path)[1]
    assert "time budget of 100 s reached" in record.message
    assert 1 <= len(record.candidates) < 3
    assert read_progress(tmp_path / "output" / TRIALS_KEY).chosen == record.chosen


def test_a_search_killed_half_way_leaves_its_best_model_and_every_figure(
        work: Path, tmp_path: Path) -> None:
    import onnxruntime

    spec = digits_spec({"parameter": "steps[0].prune.sparsity",
                        "values": [0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7]})
    script = Path(__file__).parent / "search_fixtures.py"
    process = subprocess.Popen([sys.executable, str(script), str(work), spec.model_dump_json(),
                                str(tmp_path)], env={"PYTHONSAFEPATH": "1", "PATH": ""},
                               stderr=subprocess.DEVNULL)
    trials = tmp_path / "output" / TRIALS_KEY
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            trials.is_file() and len(read_progress(trials).trials) >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    progress = read_progress(trials)
    assert not progress.finished and 2 <= len(progress.trials) < 10
    chosen = next(t for t in progress.trials if t.chosen)
    assert chosen.name == progress.chosen and chosen.accuracy_drop is not None
    best = tmp_path / "output" / BEST_PREFIX / "model.onnx"
    assert onnxruntime.InferenceSession(str(best)).get_inputs()
    assert json.loads((tmp_path / "output" / BEST_PREFIX / "manifest.json").read_text())
