"""Where a run may publish: refused before any step when it would hurt the user's files or
another run's, and held by one run at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.errors import InvalidInput
from modelpress.outputs import check_output, lock_path, output_lock


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPRESS_CACHE_DIR", str(tmp_path / "cache"))


def test_an_existing_file_is_refused_naming_the_field(tmp_path: Path) -> None:
    existing = tmp_path / "report.txt"
    existing.write_text("mine")
    with pytest.raises(InvalidInput, match=r"^--output: .*is an existing file"):
        check_output(str(existing), "--output", {})
    assert existing.read_text() == "mine"


@pytest.mark.parametrize("output", ["models", "models/..", "."], ids=["same", "dotdot", "above"])
def test_an_output_holding_an_input_is_refused(tmp_path: Path, output: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "models" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"onnx")
    with pytest.raises(InvalidInput, match=r"^spec.output: .* holds spec.model.uri"):
        check_output(output, "spec.output", {"spec.model.uri": model.as_uri()})


def test_a_symlinked_output_into_the_input_folder_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "eval.npz").write_bytes(b"npz")
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(InvalidInput, match="holds spec.data.eval"):
        check_output(str(tmp_path / "link"), "--output",
                     {"spec.data.eval": (data / "eval.npz").as_uri()})


def test_a_sibling_folder_is_fine(tmp_path: Path) -> None:
    model = tmp_path / "models" / "model.onnx"
    model.parent.mkdir()
    model.write_bytes(b"onnx")
    check_output(str(tmp_path / "out"), "--output", {"spec.model.uri": model.as_uri(),
                                                     "spec.data.eval": "builtin://digits"})


def test_an_s3_prefix_holding_an_input_is_refused() -> None:
    with pytest.raises(InvalidInput, match="holds spec.model.uri"):
        check_output("s3://bucket/team/", "--output",
                     {"spec.model.uri": "s3://bucket/team/model.onnx"})
    check_output("s3://bucket/team-out/", "--output",
                 {"spec.model.uri": "s3://bucket/team/model.onnx"})


def test_a_second_run_into_a_held_output_is_refused(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    with output_lock(output, "--output"):
        with pytest.raises(InvalidInput, match=r"^--output: another modelpress run \(pid \d+\)"):
            with output_lock(str(tmp_path / "out" / ".." / "out"), "--output"):
                pass
    with output_lock(output, "--output"):  # released once the first run ends
        pass


def test_the_lock_never_lies_inside_the_output(tmp_path: Path) -> None:
    output = tmp_path / "out"
    assert output not in lock_path(str(output)).parents
    assert lock_path(str(output)) == lock_path(str(output) + "/")
    assert lock_path("s3://a/b/") != lock_path("s3://a/c/")


@pytest.mark.parametrize("location", ["s3://key:s3cr3t@bucket/out/", "s3://key@bucket/out/",
                                      "file://user:s3cr3t@localhost/tmp/out"])
def test_a_command_line_location_with_credentials_is_refused_unshown(location: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_output(location, "--output", {})
    assert str(refused.value).startswith("--output: a uri may not hold credentials")
    assert "s3cr3t" not in str(refused.value) and "key" not in str(refused.value)
