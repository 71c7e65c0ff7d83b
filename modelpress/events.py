"""Progress events: what a step process tells whoever watches the run (the CLI's progress
lines, the operator's local backend), one JSON line each in the file MODELPRESS_EVENTS
names.

One owner for the record, its writer and its tolerant reader: a step may be killed while
it writes, so a torn last line is skipped, never fatal.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

EVENTS_ENV = "MODELPRESS_EVENTS"
# An error line never carries a whole file's content: a step's message is capped here.
MESSAGE_LIMIT = 300


class ProgressEvent(BaseModel):
    """One line of the events file."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    event: Literal["started", "finished", "failed"]
    step: str
    time: float
    seconds: float | None = None
    message: str = ""


def capped(message: str, limit: int = MESSAGE_LIMIT) -> str:
    """`message` as one line of at most `limit` characters (bytes escaped, newlines shown)."""
    from modelpress.errors import one_line

    line = one_line(message)
    return line if len(line) <= limit else line[:limit - 1] + "…"


def append_event(path: Path, event: ProgressEvent) -> None:
    with path.open("a", encoding="utf-8") as events:
        events.write(event.model_dump_json(exclude_none=True) + "\n")


def emit(event: Literal["started", "finished", "failed"], step: str, *,
         seconds: float | None = None, message: str = "") -> None:
    """Append an event to the file MODELPRESS_EVENTS names; nothing when it is unset."""
    path = os.environ.get(EVENTS_ENV)
    if path:
        append_event(Path(path), ProgressEvent(event=event, step=step, time=time.time(),
                                               seconds=seconds, message=capped(message)))


def read_events(path: Path) -> list[ProgressEvent]:
    """Every complete, well-formed event in `path` (none when it does not exist)."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(ProgressEvent.model_validate_json(line))
        except ValidationError:
            continue  # a line torn by a killed writer
    return events


def failed_step(events: list[ProgressEvent]) -> str | None:
    """The step that reported a failure, else the last one that started and never finished
    (its process died)."""
    failures = [e.step for e in events if e.event == "failed"]
    if failures:
        return failures[-1]
    unfinished = [e.step for e in events if e.event == "started"]
    for event in events:
        if event.event == "finished" and event.step in unfinished:
            unfinished.remove(event.step)
    return unfinished[-1] if unfinished else None


def failure_message(events: list[ProgressEvent]) -> str | None:
    """What the last failed step said about its failure."""
    failures = [e for e in events if e.event == "failed"]
    return failures[-1].message if failures else None
