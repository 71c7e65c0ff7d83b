"""Step states read from a local run's progress events."""

from __future__ import annotations

import json
from pathlib import Path

from modelpress.operator.backends.local import steps_from_events


def _events(tmp_path: Path, *lines: dict[str, object], partial: str = "") -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + partial)
    return path


def test_steps_follow_the_events(tmp_path: Path) -> None:
    path = _events(
        tmp_path,
        {"event": "started", "step": "fetch", "time": 100.0},
        {"event": "finished", "step": "fetch", "time": 101.5, "seconds": 1.234567,
         "message": "fetched"},
        {"event": "started", "step": "prune", "time": 102.0},
        {"event": "finished", "step": "prune", "time": 103.0, "seconds": 1.0, "message": "a"},
        {"event": "started", "step": "prune", "time": 104.0},
        {"event": "failed", "step": "prune", "time": 105.0, "message": "too sparse"},
        partial='{"event": "star')
    steps = steps_from_events(path)
    assert [(s.name, s.phase, s.duration_seconds, s.message) for s in steps] == [
        ("fetch", "Succeeded", 1.235, "fetched"), ("prune", "Succeeded", 1.0, "a"),
        ("prune", "Failed", None, "too sparse")]
    assert steps[0].started_at is not None and steps[0].started_at.timestamp() == 100.0


def test_no_events_yet(tmp_path: Path) -> None:
    assert steps_from_events(tmp_path / "missing.jsonl") == []
