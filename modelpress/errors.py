"""Errors a user can cause or act on; the CLI and the operator map them in one place each."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """A message safe to print as one line: colour codes dropped, control characters shown
    escaped (a YAML key may hold a newline)."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], _ANSI.sub("", text))


class ModelpressError(Exception):
    """Base for errors with a message meant for a user."""


class InvalidInput(ModelpressError):
    """Bad input: a spec field, a file or a uri the user gave. CLI exit code 2."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = one_line(where)
        self.problem = one_line(problem)
        super().__init__(f"{self.where}: {self.problem}")


class StepFailed(ModelpressError):
    """A pipeline step failed while running. CLI exit code 1."""

    def __init__(self, step: str, problem: str) -> None:
        self.step = step
        self.problem = problem
        super().__init__(f"step {step} failed: {problem}")


class StoreError(ModelpressError):
    """The artifact store refused or lost something; the message names the uri."""
