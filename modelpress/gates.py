"""The promotion gates: thresholds and an optional CEL condition, judged on a job's results.

In core because three places judge with this same code: the report step (the verdict in
results.json and report.html), `modelpress run` (its exit code), and the operator (which
re-judges stored results when `spec.promotion` is edited).

A condition is a tenant's program, and cel-python has no cost limit: a few nested `map`s
take minutes. So conditions are compiled and evaluated in a separate evaluator process
(`python -m modelpress.gates`), never on the caller's thread, and one that runs past
MODELPRESS_CEL_BUDGET_SECONDS is killed; the caller gets a verdict either way.
"""

from __future__ import annotations

import atexit
import math
import os
import select
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import IO, Literal

import celpy
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError
from pydantic import BaseModel

from modelpress.api import Gates, Promotion, Results
from modelpress.settings import get_settings

# Starting an evaluator (an interpreter importing celpy) is not the condition's cost.
_START_SECONDS = 60.0
# Idle evaluators kept for the next condition; more run at once when callers overlap.
_IDLE_KEPT = 2


@dataclass(frozen=True)
class Verdict:
    decision: Literal["Promoted", "Rejected"]
    reasons: list[str] = field(default_factory=list)


def condition_error(condition: str) -> str | None:
    """Why `condition` is not a CEL expression, or None when it compiles (within budget)."""
    try:
        return _EVALUATORS.ask(_CelRequest(condition=condition)).problem
    except _Unanswered as error:
        return f"the CEL expression {error}"


def gates_set(promotion: Promotion) -> bool:
    """Whether `promotion` asks anything of the results (a gate or a condition)."""
    gates = promotion.gates
    return (gates.min_compression_ratio is not None or gates.max_accuracy_drop is not None
            or gates.max_perplexity_increase is not None or bool(gates.min_speedup)
            or bool(promotion.condition))


def judge(results: Results, promotion: Promotion) -> Verdict:
    """Promoted only when every gate and the condition pass; every failure is listed."""
    failures = [*_gate_failures(results, promotion.gates)]
    if promotion.condition:
        failure = _bounded_condition_failure(promotion.condition, results)
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
                        f"{gates.max_accuracy_drop:g}{_spender(results, gates.max_accuracy_drop)}")
    for failure in (_confidence_failure(results, gates),
                    _perplexity_failure(results, gates.max_perplexity_increase)):
        if failure:
            failures.append(failure)
    for pool, minimum in gates.min_speedup.items():
        failure = _speedup_failure(results, pool, minimum)
        if failure:
            failures.append(failure)
    return failures


def _spender(results: Results, bar: float) -> str:
    """Which step spent the accuracy budget, as a clause: the first whose cumulative drop
    on the validation split went over `bar`, else the one that spent most; "" when no step
    measured its spend."""
    over = next((spend for spend in results.budget if spend.cumulative_drop > bar), None)
    if over is not None:
        return (f"; {over.step} spent the budget (drop {over.cumulative_drop:g} on validation "
                f"after it, {over.spent:g} of it its own)")
    largest = max(results.budget, key=lambda spend: spend.spent, default=None)
    if largest is None or largest.spent <= 0:
        return ""
    return (f"; the largest spender was {largest.step} ({largest.spent:g} of the drop on "
            "validation)")


def _upper_bound(results: Results, confidence: float) -> float | None:
    """The high end of accuracyDrop's interval at `confidence`, if it was measured."""
    return next((interval.high for interval in results.accuracy_drop_intervals
                 if math.isclose(interval.confidence, confidence)), None)


def _confidence_failure(results: Results, gates: Gates) -> str | None:
    """gates.confidence: the drop's upper bound at that confidence must pass the bar too."""
    if gates.confidence is None or gates.max_accuracy_drop is None:
        return None
    bar, confidence = gates.max_accuracy_drop, gates.confidence
    upper = _upper_bound(results, confidence)
    if upper is None:
        return f"confidence {confidence:g}: no interval of accuracyDrop was measured"
    return None if upper <= bar else (
        f"accuracyDrop's {confidence:.0%} upper bound {upper:g} is above maxAccuracyDrop "
        f"{bar:g} (gates.confidence){_spender(results, bar)}")


def _perplexity_failure(results: Results, maximum: float | None) -> str | None:
    if maximum is None:
        return None
    increase = results.perplexity_increase
    if increase is None:
        return f"maxPerplexityIncrease {maximum:g}: no perplexity was measured"
    return None if increase <= maximum else \
        f"perplexityIncrease {increase:g} is above maxPerplexityIncrease {maximum:g}"


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


def _bounded_condition_failure(condition: str, results: Results) -> str | None:
    try:
        return _EVALUATORS.ask(_CelRequest(condition=condition, results=results)).problem
    except _Unanswered as error:
        return f"condition {condition!r} {error}"


def _compile_problem(condition: str) -> str | None:
    try:
        celpy.Environment().compile(condition)
    except CELParseError as error:
        return f"not a valid CEL expression: {str(error).splitlines()[0]}"
    except RecursionError:
        return "the CEL expression is nested too deeply"
    return None


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
    if gates.confidence is not None:
        passes.append(f"accuracyDrop's {gates.confidence:.0%} upper bound "
                      f"{_upper_bound(results, gates.confidence):g} <= "
                      f"{gates.max_accuracy_drop:g}")
    if gates.max_perplexity_increase is not None:
        passes.append(f"perplexityIncrease {results.perplexity_increase:g} <= "
                      f"{gates.max_perplexity_increase:g}")
    passes += [f"speedup on pool {pool} {results.speedup[pool]:g} >= {minimum:g}"
               for pool, minimum in gates.min_speedup.items()]
    if promotion.condition:
        passes.append(f"condition {promotion.condition!r} is true")
    return passes if gates_set(promotion) else ["no gates configured"]


# ------------------------------------------------------------- the evaluator process


class _CelRequest(BaseModel):
    """One question to the evaluator: does `condition` compile, and, given `results`,
    what failure (if any) does it report on them."""

    condition: str
    results: Results | None = None


class _CelAnswer(BaseModel):
    problem: str | None = None


class _Unanswered(Exception):
    """The evaluator gave no answer in time (it has been killed); the message completes
    a sentence that starts with the condition."""


def _answer(request: _CelRequest) -> _CelAnswer:
    if request.results is None:
        return _CelAnswer(problem=_compile_problem(request.condition))
    return _CelAnswer(problem=_condition_failure(request.condition, request.results))


def _serve() -> None:
    """The evaluator's loop: one request per line on stdin, one answer per line."""
    answers, sys.stdout = sys.stdout, sys.stderr  # nothing else may write to the answers
    _compile_problem("true")  # builds cel-python's parser: a cost of starting, not of a condition
    answers.write("ready\n")
    answers.flush()
    for line in sys.stdin:
        answers.write(_answer(_CelRequest.model_validate_json(line)).model_dump_json() + "\n")
        answers.flush()


class _Evaluator:
    """One evaluator process, asked by one caller at a time. It inherits no credentials:
    its environment holds only Python's own variables and PATH."""

    def __init__(self) -> None:
        environment = {key: value for key, value in os.environ.items()
                       if key.startswith("PYTHON") or key == "PATH"}
        self._process = subprocess.Popen(
            [sys.executable, "-P", "-m", "modelpress.gates"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environment)
        if self._read_line(_START_SECONDS) != b"ready\n":
            self.close()
            raise _Unanswered("could not be judged: the CEL evaluator did not start")

    def ask(self, request: _CelRequest, seconds: float) -> _CelAnswer:
        try:
            self._stdin.write(request.model_dump_json().encode() + b"\n")
            self._stdin.flush()
        except OSError:
            line: bytes | None = b""
        else:
            line = self._read_line(seconds)
        if line is None:
            self.close()
            raise _Unanswered(f"exceeded its evaluation budget ({seconds:g} s)")
        if not line:
            raise _Unanswered(f"stopped the CEL evaluator (exit code {self.close()})")
        return _CelAnswer.model_validate_json(line)

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> int:
        """Stop the process at once; its exit code."""
        self._process.kill()
        self._stdin.close()
        assert self._process.stdout is not None
        self._process.stdout.close()
        return self._process.wait()

    @property
    def _stdin(self) -> IO[bytes]:
        assert self._process.stdin is not None
        return self._process.stdin

    def _read_line(self, seconds: float) -> bytes | None:
        """The next line, b"" when the process ended, None when none came in `seconds`."""
        stdout = self._process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], seconds)
        return stdout.readline() if ready else None


class _Evaluators:
    """Evaluator processes for this process's callers, each used by one at a time."""

    def __init__(self) -> None:
        self._idle: list[_Evaluator] = []
        self._lock = threading.Lock()

    def ask(self, request: _CelRequest) -> _CelAnswer:
        seconds = get_settings().cel_budget_seconds
        evaluator = self._take()
        try:
            answer = evaluator.ask(request, seconds)
        except _Unanswered:
            raise  # the evaluator is closed already
        except BaseException:
            evaluator.close()
            raise
        self._put_back(evaluator)
        return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for evaluator in idle:
            evaluator.close()

    def forget(self) -> None:
        """In a forked child: the parent's evaluators are the parent's to use."""
        self._idle = []
        self._lock = threading.Lock()

    def _take(self) -> _Evaluator:
        with self._lock:
            while self._idle:
                evaluator = self._idle.pop()
                if evaluator.alive:
                    return evaluator
                evaluator.close()  # ended while idle (killed from outside): reap it
        return _Evaluator()

    def _put_back(self, evaluator: _Evaluator) -> None:
        with self._lock:
            if len(self._idle) < _IDLE_KEPT:
                self._idle.append(evaluator)
                return
        evaluator.close()


_EVALUATORS = _Evaluators()
atexit.register(_EVALUATORS.close)
os.register_at_fork(after_in_child=_EVALUATORS.forget)


if __name__ == "__main__":
    _serve()
