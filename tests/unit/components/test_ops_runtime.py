"""The step runner: a step's record lands in the ledger under its planned name, and a
failure of any kind is reported as what it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.components.ops_runtime import _recorded, failure_line
from modelpress.errors import InvalidInput
from modelpress.events import EVENTS_ENV, MESSAGE_LIMIT, read_events
from modelpress.records import DecomposeRecord, FetchRecord, read_ledger, write_ledger


class InvalidArgument(Exception):  # noqa: N818 (named as onnxruntime names its own)
    """Stands in for onnxruntime's pybind InvalidArgument, which is no ModelpressError."""


def _fetched() -> FetchRecord:
    return FetchRecord(name="fetch", format="onnx", inputs=["x"], eval_rows=3, lineage_inputs={})


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(EVENTS_ENV, str(path))
    return path


def test_a_record_is_appended_under_its_planned_name(tmp_path: Path, events: Path) -> None:
    write_ledger([_fetched()], tmp_path / "in.json")
    record = DecomposeRecord(seconds=1.5, replaced_layers=2, parameters_before=10,
                             parameters=6, message="2 layers")
    _recorded("decompose", lambda: (read_ledger(tmp_path / "in.json"), record),
              tmp_path / "out.json")
    ledger = read_ledger(tmp_path / "out.json")
    assert [entry.name for entry in ledger] == ["fetch", "decompose"]
    assert ledger[1] == record.model_copy(update={"name": "decompose"})
    assert [(e.event, e.step, e.seconds, e.message) for e in read_events(events)] == [
        ("started", "decompose", None, ""), ("finished", "decompose", 1.5, "2 layers")]


def _fail(error: Exception) -> tuple:
    raise error


@pytest.mark.parametrize(("error", "message"), [
    (InvalidArgument("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Unexpected input data type."
                     " Actual: (tensor(double)) , expected: (tensor(float))\nmore detail"),
     "InvalidArgument: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Unexpected input data type."
     " Actual: (tensor(double)) , expected: (tensor(float))"),
    (RuntimeError(""), "RuntimeError"),
    (KeyError("weight"), "KeyError: 'weight'"),
    (InvalidInput("spec.data.train", "distill trains, so it needs data.train"),
     "spec.data.train: distill trains, so it needs data.train"),
])
def test_any_failure_is_reported_with_its_type_and_first_line(
        tmp_path: Path, events: Path, capsys: pytest.CaptureFixture[str], error: Exception,
        message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        _recorded("quantize", lambda: _fail(error), tmp_path / "out.json")
    assert exited.value.code == 1
    assert [(e.event, e.step, e.message) for e in read_events(events)] == [
        ("started", "quantize", ""), ("failed", "quantize", message)]
    assert not (tmp_path / "out.json").exists()
    log = capsys.readouterr().err
    if isinstance(error, InvalidInput):
        assert log.strip() == f"modelpress: {message}"
    else:
        assert "Traceback (most recent call last)" in log and type(error).__name__ in log


def test_a_failure_message_never_carries_a_whole_file(tmp_path: Path, events: Path) -> None:
    content = "\x00\x01binary" * 500
    with pytest.raises(SystemExit):
        _recorded("fetch", lambda: _fail(ValueError(content)), tmp_path / "out.json")
    failed = read_events(events)[-1]
    assert len(failed.message) <= MESSAGE_LIMIT
    assert failed.message.startswith("ValueError: \\x00\\x01binary")


def test_failure_line_takes_the_first_non_empty_line() -> None:
    assert failure_line(OSError("\n  disk full\nerrno 28")) == "OSError: disk full"
