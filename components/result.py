"""What each step reports: its own compute time and its figures, appended to a ledger.

The ledger is a JSON list that flows through the pipeline beside the model, so the report
step sees every step's figures without the pipeline needing variadic inputs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepResult:
    step: str
    started_at: float = 0.0
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@contextmanager
def timed(step: str) -> Iterator[StepResult]:
    """Measure the step's own compute time (wall clock inside the step function)."""
    result = StepResult(step=step, started_at=time.time())
    begin = time.perf_counter()
    yield result
    result.seconds = time.perf_counter() - begin


def read_ledger(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    return list(json.loads(path.read_text()))


def append_ledger(previous: Path | None, result: StepResult, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(read_ledger(previous) + [asdict(result)], indent=2))
