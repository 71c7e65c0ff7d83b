"""Write components/data/docstrings.jsonl: which standard-library package a docstring is from.

Run once (the file is shipped, so the set is the same on every Python version):

    .venv/bin/python -I scripts/make_docstrings.py

Each row is the first sentence of the docstring of a function, class or method defined in
one of PACKAGES, labelled with that package. Sentences that say nothing about their
package (short ones, dunder boilerplate) are dropped, as are sentences that occur in two
packages; each package keeps at most PER_PACKAGE rows, chosen with a fixed seed.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import random
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

PACKAGES = ("asyncio", "email", "http", "logging", "multiprocessing", "tkinter", "unittest",
            "xml")
PER_PACKAGE = 300
MIN_WORDS, MAX_WORDS = 4, 40
OUTPUT = Path(__file__).resolve().parent.parent / "components" / "data" / "docstrings.jsonl"
_BOILERPLATE = re.compile(r"^(Return self|Initialize self|Implement|Create and return|Same as|"
                          r"Deprecated|Alias|See |Helper|Internal|XXX|TODO|Override)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`'\"])")


def _modules(package: str) -> Iterator[ModuleType]:
    """The package and its submodules, skipping tests and `__main__` (which run on import)."""
    root = importlib.import_module(package)
    yield root
    for info in pkgutil.walk_packages(getattr(root, "__path__", []), f"{package}."):
        if "test" in info.name.split(".")[-1] or info.name.endswith("__main__"):
            continue
        try:
            yield importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - optional platform modules (e.g. Windows-only)
            continue


def _docstrings(module: ModuleType) -> Iterator[str]:
    """Docstrings of the classes and functions this module defines, and of their methods."""
    for value in vars(module).values():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            yield from _own_doc(value)
        if inspect.isclass(value):
            for member in vars(value).values():
                if inspect.isfunction(member):
                    yield from _own_doc(member)


def _own_doc(value: object) -> Iterator[str]:
    doc = getattr(value, "__doc__", None)
    if isinstance(doc, str) and doc.strip():
        yield doc


def first_sentence(doc: str) -> str | None:
    """The docstring's first sentence on one line, or None when it says too little."""
    paragraph = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    sentence = _SENTENCE_END.split(paragraph)[0].strip()
    words = len(sentence.split())
    if not MIN_WORDS <= words <= MAX_WORDS or _BOILERPLATE.match(sentence) or ">>>" in sentence:
        return None
    return sentence


def collect() -> dict[str, set[str]]:
    """Each package's distinct first sentences."""
    found: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for package in PACKAGES:
        for module in _modules(package):
            for doc in _docstrings(module):
                sentence = first_sentence(doc)
                if sentence:
                    found[package].add(sentence)
    return found


def rows(found: dict[str, set[str]]) -> list[dict[str, str]]:
    """Sentences unique to one package, at most PER_PACKAGE per package, sorted."""
    seen_in: dict[str, int] = {}
    for sentences in found.values():
        for sentence in sentences:
            seen_in[sentence] = seen_in.get(sentence, 0) + 1
    chosen: list[dict[str, str]] = []
    for package in PACKAGES:
        unique = sorted(s for s in found[package] if seen_in[s] == 1)
        if len(unique) > PER_PACKAGE:
            unique = sorted(random.Random(0).sample(unique, PER_PACKAGE))
        chosen.extend({"text": sentence, "label": package} for sentence in unique)
    return chosen


def main() -> None:
    warnings.simplefilter("ignore")  # deprecated modules warn on import
    table = rows(collect())
    OUTPUT.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table),
                      encoding="utf-8")
    counts = {package: sum(row["label"] == package for row in table) for package in PACKAGES}
    print(f"{len(table)} rows ({sys.version.split()[0]}): {counts}")


if __name__ == "__main__":
    main()
