"""The offline English corpus (builtin://english-sentences): cleaning rules, de-duplication,
the eval sentences held out, a deterministic build, and its size on this machine."""

from __future__ import annotations

import hashlib
import platform
import random
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from modelpress.components import corpus, zoo
from modelpress.components.data import load_dataset
from modelpress.components.preprocess import Preprocessor
from modelpress.errors import InvalidInput

PROSE = "Return the number of items in the queue when it is not empty."


# ----------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize(("sentence", "kept"), [
    (PROSE, True),
    ("This works on floats, e.g. the values a sensor reports.", True),
    ("Raise an error if the count of a shard's rows is zero.", True),
    ("Close the queue.", False),                                      # under MIN_WORDS
    (" ".join(["Each of the words is here"] * 8) + ".", False),       # over MAX_WORDS
    ("return the number of items in the queue.", False),              # no capital first
    ("Return the number of items in the queue", False),               # no end mark
    ("See https://example.org for the full list of the rules.", False),
    ("Call os.path.join to build the path of the file.", False),      # dotted name
    ("The value of x = compute(y) is the answer here.", False),       # code
    ("Use `foo` to read the rows of the table.", False),              # markup
    ("Call read() before the end of the stream.", False),             # empty call
    ("Licensed under the Apache License, Version 2.0 of the text.", False),
    ("Copyright (c) the authors of this module are listed here.", False),
    ("TODO remove this once the upstream bug is fixed.", False),
    ("Gibt die Anzahl der Elemente zurück, wenn es geht.", False),    # not ASCII
    ("Tensor Module Parameter Buffer Hook Function.", False),         # no function word
    ("Return int64 for uint8 and float32 with bfloat16 values.", False),  # mostly not words
])
def test_is_prose(sentence: str, kept: bool) -> None:
    assert corpus.is_prose(sentence) is kept


def test_paragraphs_keep_prose_and_drop_code_fields_and_doctests() -> None:
    docstring = """Read the rows of a table.

    The rows come back in file order, one
    dictionary for each row.

    Args:
        path: where the table is.

    Example::

        rows = read("t.csv")

    >>> read("t.csv")
    []

    Returns
    -------
    A list of rows.
    """
    assert list(corpus.paragraphs(docstring)) == [
        "Read the rows of a table.",
        "The rows come back in file order, one dictionary for each row."]


def test_text_blocks_are_strings_then_comment_blocks_without_marks() -> None:
    source = ('"""The module\'s docstring."""\n'
              "x = 1  # not a block\n"
              "# A comment that runs\n"
              "# over two lines.\n"
              "#     indented = code\n"
              "def f():\n"
              "    '''The function.'''\n")
    assert list(corpus.text_blocks(source)) == [
        "The module's docstring.", "The function.",
        "A comment that runs\nover two lines.\n    indented = code"]


def test_split_sentences_never_after_an_abbreviation() -> None:
    assert corpus.split_sentences("Read a file, e.g. This one. Then close it! Done? Yes.") == [
        "Read a file, e.g. This one.", "Then close it!", "Done?", "Yes."]


def test_prose_sentences_of_a_module() -> None:
    source = ('"""Queue tools. Use them with care.\n\n'
              'See https://example.org/queue.\n"""\n'
              "# Copyright 2024 the queue authors.\n"
              "# The lock must be held while the queue is read.\n")
    assert list(corpus.prose_sentences(source)) == [
        "Use them with care.", "The lock must be held while the queue is read."]


# ----------------------------------------------------------------------------- dedup, hold-out


def test_deduplicated_ignores_case_punctuation_and_spacing_and_keeps_the_first() -> None:
    sentences = [PROSE, "Another sentence of the set.", PROSE.upper(),
                 "Return the number of items, in the queue, when it is not empty!"]
    assert corpus.deduplicated(sentences) == ([PROSE, "Another sentence of the set."], 2)


def test_eval_sentences_and_near_identical_ones_are_held_out() -> None:
    held_out = corpus.HeldOut([PROSE, "Close the file."])
    one_word_changed = PROSE.replace("queue", "stack")  # 11 of 13 distinct words shared
    unrelated = "The lock must be held while the queue is read."
    kept, removed = corpus.without_held_out(
        [PROSE.lower(), one_word_changed, unrelated, "Close the file now, please."],
        held_out)
    assert removed == [PROSE.lower(), one_word_changed]
    assert kept == [unrelated, "Close the file now, please."]  # 3 of 5 words: not near


def test_held_out_prefix_filter_agrees_with_comparing_every_pair() -> None:
    vocabulary = [f"w{index}" for index in range(12)]
    generator = random.Random(0)
    def sentence() -> str:
        return " ".join(generator.choices(vocabulary, k=generator.randint(1, 8)))
    evaluation = [sentence() for _ in range(40)]
    held_out = corpus.HeldOut(evaluation)
    def brute_force(candidate: str) -> bool:
        words = set(candidate.split())
        return any(len(words & set(e.split())) / len(words | set(e.split())) >= 0.8
                   for e in evaluation)
    candidates = [sentence() for _ in range(400)]
    assert [held_out.matches(c) for c in candidates] == [brute_force(c) for c in candidates]
    assert any(brute_force(c) for c in candidates)  # the table exercises both outcomes


# ----------------------------------------------------------------------------- building


def _module(folder: Path, name: str, text: str) -> corpus.SourceFile:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return corpus.SourceFile(name, path)


def _sources(folder: Path) -> corpus.Sources:
    files = [_module(folder, "a.py", f'"""{PROSE}\n\nThe second sentence of the file."""\n'),
             _module(folder, "b.py", "# The second sentence of the file.\n"
                                     "# A sentence only the second file has.\n")]
    return [(corpus.SourcePackage(name="python", version="3.0", files=2), files)]


def test_build_keeps_file_order_drops_duplicates_and_holds_out_eval(tmp_path: Path) -> None:
    built = corpus.build_corpus(_sources(tmp_path)[0][1], [PROSE])
    assert built.sentences == ["The second sentence of the file.",
                               "A sentence only the second file has."]
    assert (built.duplicates, built.held_out) == (1, [PROSE])


def test_write_corpus_is_byte_identical_and_its_manifest_has_each_digest(tmp_path: Path) -> None:
    folders = [tmp_path / "first", tmp_path / "second"]
    for folder in folders:
        folder.mkdir()
        manifest = corpus.write_corpus(folder, _sources(tmp_path), [PROSE], {"train-1": 1})
    files = sorted(path.name for path in folders[0].iterdir())
    assert files == ["corpus.json", "held-out.txt", "train-1.txt", "train.txt"]
    assert all((folders[0] / name).read_bytes() == (folders[1] / name).read_bytes()
               for name in files)
    assert corpus.read_manifest(folders[1]) == manifest
    for split in manifest.splits.values():
        data = (folders[0] / split.file).read_bytes()
        assert hashlib.sha256(data).hexdigest() == split.sha256
        assert len(data.splitlines()) == split.rows
    assert manifest.splits["train-1"].rows == 1 and manifest.held_out == 1


def test_a_sample_is_seeded_and_in_corpus_order() -> None:
    sentences = [f"Sentence {index}." for index in range(100)]
    chosen = corpus.sample(sentences, 10)
    assert chosen == corpus.sample(sentences, 10) and len(set(chosen)) == 10
    assert chosen == sorted(chosen, key=sentences.index)
    assert corpus.sample(sentences, 500) == sentences


def test_standard_library_files_are_named_inside_the_library_and_sorted() -> None:
    files = corpus.standard_library_files()
    names = [item.name for item in files]
    assert names == sorted(names) and "json/__init__.py" in names
    assert not any(name.startswith(("test/", "site-packages/")) for name in names)
    assert not [name for name in names if name.rsplit("/", 1)[-1].startswith("test_")]


def test_the_cache_key_changes_with_what_a_build_depends_on() -> None:
    key = corpus.cache_key([PROSE], {"train-4k": 4000})
    assert key == corpus.cache_key([PROSE], {"train-4k": 4000})
    assert key != corpus.cache_key([PROSE, "Another."], {"train-4k": 4000})
    assert key != corpus.cache_key([PROSE], {"train-4k": 4001})
    assert key != corpus.cache_key([PROSE], {"train-4k": 4000}, ("torch", "no-such-package"))


# ----------------------------------------------------------------------------- the builtin


@pytest.fixture(scope="module")
def built() -> Path:
    """The builtin corpus of this machine (built into the cache once, ~10 s of CPU)."""
    return zoo.english_sentences_file("train").parent


def test_the_builtin_corpus_is_large_and_says_what_it_was_built_from(built: Path) -> None:
    manifest = corpus.read_manifest(built)
    assert manifest.splits["train"].rows > 25_000
    versions = {source.name: source.version for source in manifest.sources}
    assert versions == {"python": platform.python_version(), "torch": version("torch"),
                        "kfp": version("kfp")}
    for name, rows in zoo.ENGLISH_SENTENCES_SAMPLES.items():
        assert manifest.splits[name].rows == rows
        sample = (built / f"{name}.txt").read_text(encoding="utf-8").splitlines()
        assert set(sample) <= set((built / "train.txt").read_text(encoding="utf-8").splitlines())


def test_no_eval_sentence_nor_anything_near_one_is_in_the_builtin_corpus(built: Path) -> None:
    train = (built / "train.txt").read_text(encoding="utf-8").splitlines()
    evaluation = zoo.sentences("eval")
    held_out = corpus.HeldOut(evaluation)
    assert not [sentence for sentence in train if held_out.matches(sentence)]
    removed = (built / "held-out.txt").read_text(encoding="utf-8").splitlines()
    assert len(removed) > 50  # docstring sentences: many eval sentences are in the sources
    assert len(train) == len(set(map(corpus.normalised, train)))


class _Lengths(Preprocessor):
    """Text to one array of character counts: what was read, without a tokenizer's cost."""

    def tokenize(self, texts: Sequence[str], where: str) -> dict[str, np.ndarray]:
        return {"length": np.array([len(text) for text in texts])}


def test_the_builtin_loads_as_text_with_its_digest(built: Path) -> None:
    dataset = load_dataset("builtin://english-sentences?split=train-4k", "spec.data.train",
                           _Lengths())
    lines = (built / "train-4k.txt").read_text(encoding="utf-8").splitlines()
    assert dataset.arrays["length"].tolist() == [len(line) for line in lines]
    assert dataset.source_sha256 == corpus.read_manifest(built).splits["train-4k"].sha256
    with pytest.raises(InvalidInput, match="split='eval' is not one of train"):
        load_dataset("builtin://english-sentences?split=eval", "spec.data.train",
                     Preprocessor())
