"""The one owner of step names and order.

A run of a job goes through: fetch, each of the spec's steps in order, validate (with a
search: select instead, which runs them in its trials), one benchmark per pool, report.
The pipeline's task display names, the names each step records in the ledger and its
progress events, the operator's planned steps in status, and the KFP backend's task filter
all come from here.

A name may repeat (two prune steps); consumers match the n-th observation of a name to its
n-th planned entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from modelpress.api import CompressionSpec

StepKind = Literal["fetch", "prune", "distill", "decompose", "quantize", "validate", "select",
                   "benchmark", "report"]
FETCH, VALIDATE, SELECT, REPORT = "fetch", "validate", "select", "report"
# A verification run's step that takes the operator's staged model (docs/verification.md).
CANDIDATE = "candidate"
BENCHMARK_PREFIX = "benchmark-"
_COMPRESSION_KINDS = ("prune", "distill", "decompose", "quantize")
_NAME = re.compile(
    rf"^({FETCH}|{VALIDATE}|{SELECT}|{CANDIDATE}|{REPORT}|{'|'.join(_COMPRESSION_KINDS)}"
    rf"|{BENCHMARK_PREFIX}[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")


@dataclass(frozen=True)
class PlannedStep:
    name: str
    kind: StepKind
    index: int | None = None  # its position in spec.steps (compression steps)
    pool: str | None = None  # the pool it measures on (benchmark steps)

    @property
    def in_chain(self) -> bool:
        """Whether it is one of the steps that make and validate a model (a search runs
        them inside select instead, once per trial)."""
        return self.index is not None or self.kind == "validate"


def planned_steps(spec: CompressionSpec) -> list[PlannedStep]:
    """Every step a run of `spec` goes through, in order."""
    plan = [PlannedStep(FETCH, "fetch")]
    if spec.search is not None:  # its trials run the steps and validate inside it
        plan.append(PlannedStep(SELECT, "select"))
    else:
        plan += [PlannedStep(step.kind, step.kind, index=index)  # type: ignore[arg-type]
                 for index, step in enumerate(spec.steps)]
        plan.append(PlannedStep(VALIDATE, "validate"))
    plan += [PlannedStep(BENCHMARK_PREFIX + pool.name, "benchmark", pool=pool.name)
             for pool in spec.benchmark.pools]
    plan.append(PlannedStep(REPORT, "report"))
    return plan


def is_step_name(name: str) -> bool:
    """Whether a task or event name is one a planned step can have (an engine's own tasks,
    such as KFP's root DAG, loops and drivers, are not)."""
    return _NAME.match(name) is not None
