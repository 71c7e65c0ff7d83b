"""Suite-wide settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def pytest_configure() -> None:
    # Tests start `python -m modelpress.cli …` from the checkout; safe paths keep the repo's
    # operator/ folder from shadowing the standard library's `operator` module.
    os.environ["PYTHONSAFEPATH"] = "1"
    # Tools that ship as wheels (weed, kubectl, hadolint) live beside the interpreter; the
    # README runs `.venv/bin/pytest` without activating the virtualenv.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent),
                                          os.environ.get("PATH", "")])
