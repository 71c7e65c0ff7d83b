"""House rules as code: DESIGN §2's import arrows (the import-linter contracts in
pyproject.toml), and a checkout root that is safe to start Python in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
ROOMS = "Rooms: the CLI on top, then operator, pipelines, components; core below them all"
NO_CLI = "Nothing imports the CLI"
THROUGH_PIPELINES = "The operator reaches the steps only through pipelines"


def installed_layout(into: Path) -> Path:
    """The package laid out as a wheel installs it (modelpress/operator/…), folders real and
    files linked to the checkout. grimp reads only the `modelpress` folder of an editable
    install, where the subpackages that package-dir maps from other folders do not show."""
    package_dir = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in package_dir.items():
        _link_tree(ROOT / folder, into.joinpath(*package.split(".")))
    return into


def _link_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.name == "__pycache__":
            continue
        if entry.is_dir():
            _link_tree(entry, target / entry.name)
        else:
            (target / entry.name).symlink_to(entry)


def lint_imports(site: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` with pyproject.toml's contracts over the package in `site` (its cwd:
    lint-imports puts the cwd first on sys.path)."""
    environment = {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}
    return subprocess.run([str(LINT_IMPORTS), str(PYPROJECT), "--no-cache", "--no-logo"],
                          cwd=site, env=environment, capture_output=True, text=True,
                          timeout=300, check=False)


def _verdict(output: str, contract: str) -> str | None:
    found = re.search(re.escape(contract) + r"\s*(KEPT|BROKEN)", output)
    return found[1] if found else None


def test_the_rooms_keep_their_import_arrows(tmp_path: Path) -> None:
    result = lint_imports(installed_layout(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for contract in (ROOMS, NO_CLI, THROUGH_PIPELINES):
        assert _verdict(output, contract) == "KEPT", output
    # Every room was seen: a layout grimp cannot read would keep the contracts vacuously.
    assert int(re.search(r"Analyzed (\d+) files", output)[1]) > 40, output  # type: ignore[index]


VIOLATIONS = [
    # file of the installed layout, the line added to it, contracts it breaks
    pytest.param("modelpress/events.py", "import modelpress.operator.status", [ROOMS],
                 id="core-imports-the-operator"),
    pytest.param("modelpress/gates.py", "import modelpress.components.report", [ROOMS],
                 id="core-imports-a-step"),
    pytest.param("modelpress/components/prune.py", "import modelpress.pipelines.build",
                 [ROOMS], id="a-step-imports-pipelines"),
    pytest.param("modelpress/pipelines/build.py", "import modelpress.operator.reconcile",
                 [ROOMS], id="pipelines-import-the-operator"),
    pytest.param("modelpress/store.py", "import modelpress.cli", [ROOMS, NO_CLI],
                 id="core-imports-the-cli"),
    pytest.param("modelpress/operator/controller.py", "import modelpress.components.report",
                 [THROUGH_PIPELINES], id="the-operator-imports-a-step"),
    pytest.param("modelpress/newcore.py", "", [ROOMS],
                 id="a-core-module-no-layer-names"),
]


@pytest.mark.parametrize(("path", "line", "broken"), VIOLATIONS)
def test_a_wrong_way_import_breaks_a_contract(tmp_path: Path, path: str, line: str,
                                              broken: list[str]) -> None:
    site = installed_layout(tmp_path)
    target = site / path
    original = target.read_text() if target.exists() else ""
    target.unlink(missing_ok=True)  # a link into the checkout: replaced, never written through
    target.write_text(f"{original}\n{line}\n")
    result = lint_imports(site)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for contract in broken:
        assert _verdict(output, contract) == "BROKEN", output


# -------------------------------------------------------------- the checkout's root


STANDARD_LIBRARY = ("import enum, json, operator, sysconfig; assert operator.itemgetter; "
                    "assert operator.__file__.startswith(sysconfig.get_path('stdlib'))")


@pytest.mark.parametrize("arguments", [
    pytest.param(["-c", STANDARD_LIBRARY], id="python-c"),
    # Without site, nothing imports `operator` before the root joins sys.path: the case
    # a plain interpreter (no virtualenv, no .pth files) is in.
    pytest.param(["-S", "-c", STANDARD_LIBRARY], id="python-S-c"),
    pytest.param(["-S", "-"], id="python-heredoc"),
])
def test_python_started_in_the_checkout_root_finds_the_standard_library(
        arguments: list[str]) -> None:
    """The top-level operator/ folder must not shadow the standard library's `operator`."""
    environment = {key: value for key, value in os.environ.items()
                   if key != "PYTHONSAFEPATH"}
    result = subprocess.run([sys.executable, *arguments], cwd=ROOT, env=environment,
                            input=STANDARD_LIBRARY, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
