"""Read a job file into a CompressionJob, with one-line errors that name the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelpress.api import API_GROUP, API_VERSION, KIND, CompressionJob
from modelpress.errors import InvalidInput


def field_path(location: tuple[int | str, ...]) -> str:
    """('spec', 'steps', 0, 'prune', 'sparsity') -> 'spec.steps[0].prune.sparsity'."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not part.isidentifier():
            text += f"[{part!r}]"  # a key with spaces, dots or newlines stays readable
        elif not text:
            text = part
        else:
            text += f".{part}"
    return text


_UNION_MEMBERS = {"float", "int", "str", "bool", "none"}
# A whole-model validator names the field inside its message: "steps[1]: quantize must …".
_NAMED_IN_MESSAGE = re.compile(r"^((?:steps|search|data|model|benchmark|promotion)"
                               r"[\w.\[\]]*): (.+)$", re.DOTALL)


_TAG = re.compile(r"^[a-z-]+\[.*\]$", re.DOTALL)


def _meaningful(location: tuple[int | str, ...], kind: str = "") -> tuple[int | str, ...]:
    """Drop pydantic's union-branch and validator tags ('literal[...]', 'float', …); an
    unknown field's own name, the last part, is always kept whatever it looks like."""
    *path, last = location or ("",)
    kept = [p for p in path if not (isinstance(p, str) and (_TAG.match(p) or p in _UNION_MEMBERS))]
    if kind == "extra_forbidden" or not (isinstance(last, str) and (
            _TAG.match(last) or last in _UNION_MEMBERS)):
        kept.append(last)
    return tuple(kept)


def describe(error: ValidationError) -> str:
    """One line: the field path, what is wrong, and how many other fields are wrong."""
    problems = error.errors()
    first = problems[0]
    where = field_path(_meaningful(first["loc"], first["type"])) or "the job"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    named = _NAMED_IN_MESSAGE.match(message)
    if named:
        where, message = f"{where}.{named[1]}", named[2]
    extra = len({field_path(_meaningful(p["loc"], p["type"])) for p in problems}) - 1
    return f"{where}: {message}" + (f" (and {extra} more problem(s))" if extra else "")


def _shown(value: Any) -> str:
    """A short, safe rendering of a value the user gave (repr of deep nesting recurses)."""
    return repr(value[:80]) if isinstance(value, str) else f"a {type(value).__name__}"


def parse_job(document: Any, source: str) -> CompressionJob:
    if not isinstance(document, dict):
        raise InvalidInput(source, "a job file must hold one YAML mapping (a CompressionJob)")
    expected = f"{API_GROUP}/{API_VERSION}"
    if document.get("apiVersion") != expected or document.get("kind") != KIND:
        raise InvalidInput(f"{source}: apiVersion/kind",
                           f"expected apiVersion {expected} and kind {KIND}, got "
                           f"{_shown(document.get('apiVersion'))} / "
                           f"{_shown(document.get('kind'))}")
    job = validate_job(document)
    if isinstance(job, str):
        raise InvalidInput(source, job)
    return job


def validate_job(document: Mapping[str, Any]) -> CompressionJob | str:
    """The CompressionJob in `document`, or one line naming the field that is wrong.

    The one validation of a job, shared by the CLI and the operator. Fields go by their
    camelCase names only: a snake_case key would pass pydantic by name but be pruned by
    the cluster's CRD, so a job that runs on a laptop would run differently on a cluster.
    """
    try:
        return CompressionJob.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as error:
        return describe(error)
    except RecursionError:
        return "the job is nested too deeply to be a CompressionJob"


def load_job(path: Path) -> CompressionJob:
    """The job in `path`; InvalidInput names the file and the field when it is not valid."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInput(str(path), f"cannot read the job file ({error.__class__.__name__})")\
            from None
    return parse_job(_parse_yaml(text, str(path)), str(path))


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise InvalidInput(source, f"{line}YAML syntax error "
                                   f"({getattr(error, 'problem', None) or 'unparseable'})")\
            from None
    except Exception as error:
        # The YAML parses, but PyYAML cannot build a value (an impossible date, an empty
        # !!int, deep nesting) and raises whatever its constructor hits.
        raise InvalidInput(source, f"YAML value error ({type(error).__name__}: "
                                   f"{str(error)[:160]})") from None
