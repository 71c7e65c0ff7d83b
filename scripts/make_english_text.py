"""Write components/data/english.txt: English prose paragraphs, one per line.

The source is Python's own language reference as it installs with every interpreter
(`pydoc_data.topics`), so the set needs no download. Only prose is kept: paragraphs that
are not indented (code, grammar and tables are), that are mostly letters, and that are long
enough to measure a language model on. Run once; the file is shipped, so the set is the
same on every Python version. Usage: `PYTHONSAFEPATH=1 python scripts/make_english_text.py`.
"""

from __future__ import annotations

import re
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "components" / "data" / "english.txt"
MIN_CHARACTERS = 200
MAX_CHARACTERS = 1200
# Markup the reference keeps in its text: section underlines and the like.
_UNDERLINE = re.compile(r"^[*=\-~^\"]{3,}$")
_WORD = re.compile(r"[A-Za-z]+")


def _is_prose(lines: list[str]) -> bool:
    if any(line.startswith((" ", "\t")) or _UNDERLINE.match(line) for line in lines):
        return False
    text = " ".join(lines)
    letters = sum(len(word) for word in _WORD.findall(text))
    return MIN_CHARACTERS <= len(text) <= MAX_CHARACTERS and letters / len(text) > 0.75


def _paragraphs(document: str) -> list[str]:
    blocks = re.split(r"\n\s*\n", document)
    chosen = []
    for block in blocks:
        lines = [line.rstrip() for line in block.strip("\n").splitlines() if line.strip()]
        if lines and _is_prose(lines):
            chosen.append(re.sub(r"\s+", " ", " ".join(lines)).strip())
    return chosen


def main() -> None:
    from pydoc_data.topics import topics

    seen: set[str] = set()
    paragraphs = []
    for name in sorted(topics):
        for paragraph in _paragraphs(topics[name]):
            if paragraph not in seen:
                seen.add(paragraph)
                paragraphs.append(paragraph)
    OUT.write_text("".join(f"{paragraph}\n" for paragraph in paragraphs), encoding="utf-8")
    print(f"{OUT}: {len(paragraphs)} paragraphs, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
