"""The builtin digits set is read from scikit-learn once, then from the cache."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from modelpress.components import zoo


def test_digits_are_cached_per_scikit_learn_version(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_CACHE_DIR", str(tmp_path))
    first = zoo.digits("test")
    cache = tmp_path / "builtin" / f"digits-{version('scikit-learn')}.npz"
    assert cache.is_file()
    assert first["x"].shape == (360, 1, 8, 8) and first["x"].dtype == np.float32
    assert first["y"].dtype == np.int64 and set(np.unique(first["y"])) == set(range(10))
    again = zoo.digits("test")
    assert np.array_equal(first["x"], again["x"]) and np.array_equal(first["y"], again["y"])
    train = zoo.digits("train")
    assert len(train["x"]) + len(first["x"]) == 1797


def test_the_cache_is_what_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "builtin" / f"digits-{version('scikit-learn')}.npz"
    cache.parent.mkdir(parents=True)
    np.savez(cache, images=np.zeros((10, 1, 8, 8), np.float32), target=np.arange(10))
    assert len(zoo.digits("train")["x"]) == 8
