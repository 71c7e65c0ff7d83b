"""Suite-wide settings."""

from __future__ import annotations

import os


def pytest_configure() -> None:
    # Tests start `python -m modelpress.cli …` from the checkout; safe paths keep the repo's
    # operator/ folder from shadowing the standard library's `operator` module.
    os.environ["PYTHONSAFEPATH"] = "1"
