"""The promotion gates: thresholds and an optional CEL condition, judged on a job's results.

Pure, and in core because three places judge with this same code: the report step (the
verdict in results.json and report.html), `modelpress run` (its exit code), and the
operator (which re-judges stored results when `spec.promotion` is edited).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import celpy
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from modelpress.api import Gates, Promotion, Results


@dataclass(frozen=True)
class Verdict:
    decision: Literal["Promoted", "Rejected"]
    reasons: list[str] = field(default_factory=list)


def condition_error(condition: str) -> str | None:
    """Why `condition` is not a CEL expression, or None when it parses."""
    try:
        celpy.Environment().compile(condition)
    except CELParseError as error:
        return f"not a valid CEL expression: {str(error).splitlines()[0]}"
    except RecursionError:
        return "the CEL expression is nested too deeply"
    return None


def gates_set(promotion: Promotion) -> bool:
    """Whether `promotion` asks anything of the results (a gate or a condition)."""
    gates = promotion.gates
    return (gates.min_compression_ratio is not None or gates.max_accuracy_drop is not None
            or bool(gates.min_speedup) or bool(promotion.condition))


def judge(results: Results, promotion: Promotion) -> Verdict:
    """Promoted only when every gate and the condition pass; every failure is listed."""
    failures = [*_gate_failures(results, promotion.gates)]
    if promotion.condition:
        failure = _condition_failure(promotion.condition, results)
        if failure:
            failures.append(failure)
    if failures:
        return Verdict("Rejected", failures)
    return Verdict("Promoted", _passes(results, promotion))


def _gate_failures(results: Results, gates: Gates) -> list[str]:
    failures: list[str] = []
    ratio = results.compression_ratio
    if gates.min_compression_ratio is not None and ratio < gates.min_compression_ratio:
        failures.append(f"compressionRatio {ratio:g} is below minCompressionRatio "
                        f"{gates.min_compression_ratio:g}")
    drop = results.accuracy_drop
    if gates.max_accuracy_drop is not None and drop > gates.max_accuracy_drop:
        failures.append(f"accuracyDrop {drop:g} is above maxAccuracyDrop "
                        f"{gates.max_accuracy_drop:g}")
    for pool, minimum in gates.min_speedup.items():
        failure = _speedup_failure(results, pool, minimum)
        if failure:
            failures.append(failure)
    return failures


def _speedup_failure(results: Results, pool: str, minimum: float) -> str | None:
    measured = results.speedup.get(pool)
    if measured is not None:
        return None if measured >= minimum else \
            f"speedup on pool {pool} {measured:g} is below minSpeedup {minimum:g}"
    benchmark = next((b for b in results.benchmarks if b.pool == pool), None)
    if benchmark is None:
        return f"minSpeedup {minimum:g} on pool {pool}: no such pool was benchmarked"
    why = benchmark.reason or "no measurement"
    return f"minSpeedup {minimum:g} on pool {pool}: the pool was unavailable ({why})"


def _condition_failure(condition: str, results: Results) -> str | None:
    environment = celpy.Environment()
    try:
        program = environment.program(environment.compile(condition))
        value = program.evaluate({"results": celpy.json_to_cel(results.to_wire())})
    except CELParseError as error:
        return f"condition is not a valid CEL expression: {str(error).splitlines()[0]}"
    except CELEvalError as error:
        return f"condition {condition!r} could not be evaluated: {_cel_reason(error)}"
    except RecursionError:
        return "condition is nested too deeply to evaluate"
    if isinstance(value, CELEvalError):  # cel-python returns some errors as values
        return f"condition {condition!r} could not be evaluated: {_cel_reason(value)}"
    if not isinstance(value, celpy.celtypes.BoolType):
        return f"condition {condition!r} must be true or false, got {type(value).__name__}"
    return None if bool(value) else f"condition {condition!r} is false"


def _cel_reason(error: CELEvalError) -> str:
    return str(error.args[0]) if error.args else type(error).__name__


def _passes(results: Results, promotion: Promotion) -> list[str]:
    gates = promotion.gates
    passes = []
    if gates.min_compression_ratio is not None:
        passes.append(f"compressionRatio {results.compression_ratio:g} >= "
                      f"{gates.min_compression_ratio:g}")
    if gates.max_accuracy_drop is not None:
        passes.append(f"accuracyDrop {results.accuracy_drop:g} <= {gates.max_accuracy_drop:g}")
    passes += [f"speedup on pool {pool} {results.speedup[pool]:g} >= {minimum:g}"
               for pool, minimum in gates.min_speedup.items()]
    if promotion.condition:
        passes.append(f"condition {promotion.condition!r} is true")
    return passes if gates_set(promotion) else ["no gates configured"]
