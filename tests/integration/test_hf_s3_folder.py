"""A Hugging Face folder under an s3:// prefix: every object downloaded in place, within
the object-count cap, and read like a local folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hf_folders import write_text_classifier

from modelpress.components import sources
from modelpress.components.hf import read_hf_folder
from modelpress.errors import InvalidInput


@pytest.fixture
def uploaded_folder(s3_env, bucket_name: str, tmp_path: Path) -> tuple[str, Path]:
    """A tiny text classifier folder under s3://BUCKET/team/classifier/ (with a subfolder)."""
    folder = write_text_classifier(tmp_path / "classifier")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text("{}")
    client = s3_env.client()
    client.make_bucket(bucket_name)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.fput_object(bucket_name, f"team/classifier/{path.relative_to(folder).as_posix()}",
                           str(path))
    return f"s3://{bucket_name}/team/classifier/", folder


def test_an_s3_prefix_is_downloaded_as_the_folder_it_holds(uploaded_folder,
                                                           tmp_path: Path) -> None:
    uri, original = uploaded_folder
    local = sources.readable_folder(uri, tmp_path / "scratch", "spec.model.uri")
    expected = {p.relative_to(original) for p in original.rglob("*") if p.is_file()}
    assert {p.relative_to(local) for p in local.rglob("*") if p.is_file()} == expected
    read = read_hf_folder(local, "text-classification", False, uri, "spec.model.uri")
    assert read.signature.classes == 3


def test_a_prefix_over_the_object_cap_is_refused(uploaded_folder, tmp_path: Path) -> None:
    uri, _ = uploaded_folder
    with pytest.raises(InvalidInput, match="holds more than 2 objects"):
        sources.readable_folder(uri, tmp_path / "scratch", "spec.model.uri", max_objects=2)
