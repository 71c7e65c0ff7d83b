"""An offline English corpus: the prose sentences of installed Python sources.

Distilling a sentence embedder needs many sentences like the ones it will embed; the
shipped `sentences` set has about a thousand. Every docstring and comment of the standard
library and of a fixed list of pinned packages holds tens of thousands more, already on
every machine that runs modelpress. This module turns those sources into sentences:

- sources: the standard library of the running interpreter (its tests left out) and the
  `.py` files of CORPUS_DISTRIBUTIONS, each walked in sorted order of its path inside the
  library, so the corpus depends on the versions installed, never on where they are;
- text: triple-quoted strings (docstrings) and blocks of consecutive comment lines, split
  into paragraphs (code, doctests, field lists and indented blocks dropped) and sentences;
- cleaning: `is_prose` keeps English-looking prose sentences within length bounds, without
  URLs, markup, licence boilerplate or mostly-code words;
- de-duplication on a normalised form (case, punctuation and spacing ignored), first kept;
- hold-out: sentences equal or near-identical to the eval sentences are removed, so
  distilling on the corpus never trains on what the eval set measures.

Scanning is lexical (regular expressions, not `ast`/`tokenize`): parsing every file took
over a minute on a shared 2-core machine, scanning takes seconds, and what a scan gets wrong
(a `#` inside a string) is text the cleaning rules then drop.
"""

from __future__ import annotations

import hashlib
import inspect
import platform
import random
import re
import sysconfig
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from pydantic import BaseModel

# Packages whose modules are read besides the standard library: modelpress pins torch
# (`torch==2.13.0` in pyproject.toml) and kfp, and their docstrings are mostly prose.
CORPUS_DISTRIBUTIONS = ("torch", "kfp")
MIN_WORDS, MAX_WORDS = 4, 32
MAX_CHARACTERS = 200
# At least this share of a sentence's words are plain words (letters, an apostrophe or a
# hyphen, surrounding punctuation): a few identifiers are prose about code, more is code.
MIN_PLAIN_SHARE = 0.8
# Word-set Jaccard similarity from which a sentence counts as near-identical to another.
NEAR_IDENTICAL = 0.8
SAMPLE_SEED = 0
MANIFEST = "corpus.json"
# Bump when a rule changes, so an older cached build is not read as this one.
CORPUS_VERSION = "v1"
# Folders that hold tests or other libraries, not the modules' own text; test modules too.
_SKIPPED_PARTS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                            "__pycache__"})
_TEST_MODULE = re.compile(r"(^|/)(test_[^/]*|[^/]*_test)\.py$")

_TRIPLE_QUOTED = re.compile(r'("""|\'\'\')(.*?)\1', re.S)
_COMMENT_BLOCK = re.compile(r"^[ \t]*#.*(?:\n[ \t]*#.*)*", re.M)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_UNDERLINE = re.compile(r"^\s*[-=~^*+#]{3,}\s*$")
# Lines that make the paragraph they are in something other than prose.
_NOT_PROSE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\.\. |:\w[\w ]*:|@|\$ |-{2}|\* |- |\d+\. )")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ABBREVIATIONS = re.compile(r"\b(e\.g|i\.e|etc|vs|cf|Mr|Dr|No)\.$")
_ABBREVIATION_DOTS = re.compile(r"\b(e\.g|i\.e)\.")
_STARTS_AND_ENDS = re.compile(r"^[A-Z][A-Za-z']*\b.*[a-z0-9)'\"][.!?]$")
_PLAIN_WORD = re.compile(r"^[(\"']?[A-Za-z]+(?:['-][A-Za-z]+)*[)\"']?[.,;:!?]?[)\"']?$")
# URLs, e-mail and decorator marks, dotted names, code and markup characters, empty calls.
_CODE = re.compile(r"://|www\.|@\w|\S\.\S|[`_=<>{}\[\]\\|#*$~^]|\(\)")
# Licence text and tooling notes (matched in lower case).
_BOILERPLATE = re.compile(
    r"licen[cs]e|copyright|warrant|all rights reserved|redistribut|spdx|permission is hereby|"
    r"merchantability|liabilit|\btodo\b|\bfixme\b|\bxxx\b|\bnoqa\b|pylint|\bpragma\b|"
    r"\bauthor\b")
# Words English prose cannot do without: a sentence with none is a list or a title.
_FUNCTION_WORDS = frozenset(
    "a an the is are was were be been being this that these those it its of to in on for "
    "with by from as at and or but not if when which who what whether than then so can "
    "may must should will would does do has have".split())
_NORMALISE = re.compile(r"[^a-z0-9]+")


class SourcePackage(BaseModel):
    """One source the corpus read: `python` (the standard library) or a distribution."""

    name: str
    version: str
    files: int


class CorpusSplit(BaseModel):
    """One split file of a built corpus: its rows and the sha256 lineage records for it."""

    file: str
    rows: int
    sha256: str


class CorpusManifest(BaseModel):
    """What a built corpus is made of, written beside it (`corpus.json`): the sources and
    their versions, what cleaning dropped, and each split's digest."""

    sources: list[SourcePackage]
    duplicates: int
    held_out: int
    splits: dict[str, CorpusSplit]


@dataclass(frozen=True)
class SourceFile:
    """A module's text and its name inside its library (the sort key, the same everywhere)."""

    name: str
    path: Path


@dataclass(frozen=True)
class Corpus:
    """The sentences kept, in source order; how many duplicates were dropped; what the
    eval sentences held out."""

    sentences: list[str]
    duplicates: int
    held_out: list[str]


# ----------------------------------------------------------------------------- sources


def standard_library_files() -> list[SourceFile]:
    """The running interpreter's standard-library modules, tests and site-packages left out."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [SourceFile(path.relative_to(root).as_posix(), path) for path in root.rglob("*.py")]
    return sorted((item for item in files if _is_module_text(item.name)),
                  key=lambda item: item.name)


def _is_module_text(name: str) -> bool:
    """Whether a file (named inside its library) is a module's own code, not a test."""
    return not (_SKIPPED_PARTS.intersection(name.split("/")) or _TEST_MODULE.search(name))


def distribution_files(name: str) -> list[SourceFile]:
    """The `.py` files an installed distribution recorded (its RECORD), in path order; none
    when it is not installed."""
    try:
        found = distribution(name)
    except PackageNotFoundError:
        return []
    files = [SourceFile(item.as_posix(), Path(str(found.locate_file(item))))
             for item in found.files or ()
             if item.suffix == ".py" and _is_module_text(item.as_posix())]
    return sorted((item for item in files if item.path.is_file()), key=lambda item: item.name)


def installed_sources(distributions: Sequence[str] = CORPUS_DISTRIBUTIONS
                      ) -> list[tuple[SourcePackage, list[SourceFile]]]:
    """The standard library, then each installed distribution in the order given."""
    python = standard_library_files()
    sources = [(SourcePackage(name="python", version=platform.python_version(),
                              files=len(python)), python)]
    for name in distributions:
        files = distribution_files(name)
        if files:
            sources.append((SourcePackage(name=name, version=distribution(name).version,
                                          files=len(files)), files))
    return sources


def sources_key(distributions: Sequence[str] = CORPUS_DISTRIBUTIONS) -> str:
    """The python and distribution versions the corpus depends on, as one line (cheap: no
    file is read)."""
    versions = [f"python=={platform.python_version()}"]
    for name in distributions:
        try:
            versions.append(f"{name}=={distribution(name).version}")
        except PackageNotFoundError:
            versions.append(f"{name}: not installed")
    return " ".join(versions)


def cache_key(evaluation: Sequence[str], samples: Mapping[str, int],
              distributions: Sequence[str] = CORPUS_DISTRIBUTIONS) -> str:
    """A short digest of everything a build depends on besides the files' text: the rules'
    version, the source versions, the held-out sentences and the sample splits; a cached
    build under another key is never read as this one."""
    parts = [CORPUS_VERSION, sources_key(distributions), lines_digest(evaluation),
             repr(sorted(samples.items()))]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def lines_digest(lines: Sequence[str]) -> str:
    return hashlib.sha256("".join(f"{line}\n" for line in lines).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- text


def text_blocks(source: str) -> Iterator[str]:
    """The triple-quoted strings of a module's source, then its comment blocks (runs of
    consecutive comment lines, the `#` marks removed)."""
    for match in _TRIPLE_QUOTED.finditer(source):
        yield match.group(2)
    for match in _COMMENT_BLOCK.finditer(source):
        yield "\n".join(_uncommented(line) for line in match.group(0).splitlines())


def _uncommented(line: str) -> str:
    """A comment line without its marks (`#`, `#:`) and the one space after them, so what
    the comment indents (code) stays indented."""
    text = line.lstrip(" \t").lstrip("#").removeprefix(":")
    return text.removeprefix(" ")


def paragraphs(block: str) -> Iterator[str]:
    """The prose paragraphs of a docstring or comment block, each on one line. The block's
    common indentation is removed first (as `inspect.cleandoc` does for docstrings); then
    paragraphs with an indented line (code, field bodies), doctest or directive lines, list
    items or section underlines are left out, as is one that introduces code (`::`)."""
    for paragraph in _PARAGRAPH_BREAK.split(inspect.cleandoc(block)):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if not lines or any(line[0].isspace() or _UNDERLINE.match(line)
                            or _NOT_PROSE_LINE.match(line) for line in lines):
            continue
        text = " ".join(line.strip() for line in lines)
        if not text.endswith("::"):
            yield text


def split_sentences(paragraph: str) -> list[str]:
    """A paragraph's sentences: split after `.`, `!` or `?` before a capital letter, never
    after a common abbreviation (`e.g.`, `etc.`)."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(paragraph):
        candidate = paragraph[start:match.start()]
        if not _ABBREVIATIONS.search(candidate):
            sentences.append(candidate)
            start = match.end()
    sentences.append(paragraph[start:])
    return [sentence.strip() for sentence in sentences if sentence.strip()]


def is_prose(sentence: str) -> bool:
    """An English-looking prose sentence: ASCII, a capital first and `.`/`!`/`?` last,
    MIN_WORDS..MAX_WORDS words within MAX_CHARACTERS, mostly plain words with at least one
    function word, and none of: URLs, code or markup characters, dotted names, empty calls,
    licence and tooling boilerplate."""
    words = sentence.split()
    if not (sentence.isascii() and MIN_WORDS <= len(words) <= MAX_WORDS
            and len(sentence) <= MAX_CHARACTERS and _STARTS_AND_ENDS.match(sentence)):
        return False
    if _CODE.search(_ABBREVIATION_DOTS.sub("", sentence)) or _BOILERPLATE.search(
            sentence.lower()):
        return False
    plain = sum(1 for word in words if _PLAIN_WORD.match(word))
    lowered = {word.strip(".,;:!?()\"'").lower() for word in words}
    return plain >= MIN_PLAIN_SHARE * len(words) and bool(lowered & _FUNCTION_WORDS)


def prose_sentences(source: str) -> Iterator[str]:
    """The prose sentences of one module's source, in the order they appear."""
    for block in text_blocks(source):
        for paragraph in paragraphs(block):
            yield from (s for s in split_sentences(paragraph) if is_prose(s))


# ----------------------------------------------------------------------------- dedup, hold-out


def normalised(sentence: str) -> str:
    """The sentence with case, punctuation and spacing ignored: what duplicates share."""
    return _NORMALISE.sub(" ", sentence.lower()).strip()


def deduplicated(sentences: Iterable[str]) -> tuple[list[str], int]:
    """The sentences with each normalised form once (its first occurrence), and how many
    were dropped."""
    seen: set[str] = set()
    kept: list[str] = []
    dropped = 0
    for sentence in sentences:
        key = normalised(sentence)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(sentence)
    return kept, dropped


class HeldOut:
    """The sentences a corpus must not contain: these, and any near-identical to one of
    them (normalised words, Jaccard similarity >= NEAR_IDENTICAL).

    Comparing each corpus sentence with every held-out one is too slow for tens of
    thousands; prefix filtering makes it exact and fast: if two word sets have Jaccard
    >= t, then any ⌊(1 - t)·|A|⌋ + 1 words of A include one of B's, so only held-out
    sentences sharing one of A's rarest words that many are compared.
    """

    def __init__(self, sentences: Iterable[str], threshold: float = NEAR_IDENTICAL) -> None:
        self.threshold = threshold
        self.words = [frozenset(normalised(sentence).split()) for sentence in sentences]
        self.containing: dict[str, list[int]] = defaultdict(list)
        for index, words in enumerate(self.words):
            for word in words:
                self.containing[word].append(index)

    def matches(self, sentence: str) -> bool:
        words = frozenset(normalised(sentence).split())
        if not words:
            return False
        prefix = int((1 - self.threshold) * len(words) + 1e-9) + 1  # float-safe floor
        rarest = sorted(words, key=lambda word: (len(self.containing.get(word, ())), word))
        candidates = {index for word in rarest[:prefix] for index in self.containing.get(word, ())}
        return any(_jaccard(words, self.words[index]) >= self.threshold for index in candidates)


def _jaccard(first: frozenset[str], second: frozenset[str]) -> float:
    return len(first & second) / len(first | second)


def without_held_out(sentences: Iterable[str], held_out: HeldOut) -> tuple[list[str], list[str]]:
    """(the sentences that may be trained on, those removed as equal or near the held-out)."""
    kept: list[str] = []
    removed: list[str] = []
    for sentence in sentences:
        (removed if held_out.matches(sentence) else kept).append(sentence)
    return kept, removed


# ----------------------------------------------------------------------------- the corpus


def build_corpus(files: Iterable[SourceFile], evaluation: Iterable[str]) -> Corpus:
    """The de-duplicated prose sentences of `files`, in file order, without the eval
    sentences and anything near-identical to them."""
    found = (sentence for item in files
             for sentence in prose_sentences(item.path.read_text("utf-8", errors="replace")))
    unique, duplicates = deduplicated(found)
    kept, removed = without_held_out(unique, HeldOut(evaluation))
    return Corpus(kept, duplicates, removed)


def sample(sentences: Sequence[str], rows: int, seed: int = SAMPLE_SEED) -> list[str]:
    """A seeded random sample of `rows` sentences (all of them when fewer), in corpus order."""
    if rows >= len(sentences):
        return list(sentences)
    chosen = random.Random(seed).sample(range(len(sentences)), rows)
    return [sentences[index] for index in sorted(chosen)]


Sources = Sequence[tuple[SourcePackage, Sequence[SourceFile]]]


def write_corpus(folder: Path, sources: Sources, evaluation: Sequence[str],
                 samples: Mapping[str, int]) -> CorpusManifest:
    """Build the corpus of `sources` (installed_sources) into `folder`: `train.txt` (all of
    it), one file per sample split (`samples`: split name -> rows), `held-out.txt` (what the
    eval sentences removed) and `corpus.json` (the CorpusManifest). Byte-identical on every
    machine with the same python and distribution versions."""
    built = build_corpus((item for _, files in sources for item in files), evaluation)
    splits = {"train": built.sentences} | {
        name: sample(built.sentences, rows) for name, rows in samples.items()}
    manifest = CorpusManifest(
        sources=[package for package, _ in sources], duplicates=built.duplicates,
        held_out=len(built.held_out),
        splits={name: _write_lines(folder / f"{name}.txt", lines)
                for name, lines in splits.items()})
    _write_lines(folder / "held-out.txt", built.held_out)
    (folder / MANIFEST).write_bytes((manifest.model_dump_json(indent=2) + "\n").encode("utf-8"))
    return manifest


def _write_lines(path: Path, lines: Sequence[str]) -> CorpusSplit:
    """Lines as UTF-8 bytes, each ending in "\\n" on every platform (the digest's bytes)."""
    path.write_bytes("".join(f"{line}\n" for line in lines).encode("utf-8"))
    return CorpusSplit(file=path.name, rows=len(lines), sha256=lines_digest(lines))


def read_manifest(folder: Path) -> CorpusManifest:
    return CorpusManifest.model_validate_json((folder / MANIFEST).read_text(encoding="utf-8"))
