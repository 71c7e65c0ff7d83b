"""Progress events: one record, one writer, one tolerant reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.events import (
    EVENTS_ENV,
    MESSAGE_LIMIT,
    emit,
    failed_step,
    failure_message,
    read_events,
)


def test_emit_appends_typed_lines_read_back_in_order(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(EVENTS_ENV, str(path))
    emit("started", "prune")
    emit("finished", "prune", seconds=1.5, message="pruned")
    emit("started", "quantize")
    events = read_events(path)
    assert [(e.event, e.step) for e in events] == [("started", "prune"), ("finished", "prune"),
                                                   ("started", "quantize")]
    assert events[1].seconds == 1.5 and events[1].message == "pruned"
    assert failed_step(events) == "quantize" and failure_message(events) is None


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "started", "step": "fetch", "time": 1}\n{"event": "fini')
    assert [e.step for e in read_events(path)] == ["fetch"]
    assert read_events(tmp_path / "missing.jsonl") == []


def test_a_failure_message_is_one_capped_line(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(EVENTS_ENV, str(path))
    emit("failed", "validate", message="ValueError: \x1b[31mbad\x1b[0m\n" + "x" * 1000)
    (event,) = read_events(path)
    assert "\n" not in event.message and "\x1b" not in event.message
    assert len(event.message) <= MESSAGE_LIMIT
    assert failed_step([event]) == "validate"


def test_a_repeated_step_name_finishes_one_entry_at_a_time(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(EVENTS_ENV, str(path))
    for event in ("started", "finished", "started"):
        emit(event, "prune")  # type: ignore[arg-type]
    assert failed_step(read_events(path)) == "prune"
