"""How a step times its own work: the clock every step function stamps its record with.

The records themselves (one type per step kind) and the ledger they travel in live in
`modelpress.records`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from modelpress.records import StepRecord

R = TypeVar("R", bound=StepRecord)


@dataclass
class Clock:
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    seconds: float = 0.0

    def stamp(self, record: R) -> R:
        """`record` with this clock's start and measured seconds."""
        return record.model_copy(update={"started_at": self.started_at,
                                         "seconds": self.seconds})


@contextmanager
def timed() -> Iterator[Clock]:
    """Measure the step's own compute time (wall clock inside the step function)."""
    clock = Clock()
    begin = time.perf_counter()
    yield clock
    clock.seconds = time.perf_counter() - begin
