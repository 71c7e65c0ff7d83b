"""Namespace scope: which locations lie under a namespace's prefixes, as a table."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelpress.tenancy import DEFAULT_PREFIXES, expand, outside, template_error

TEAM_A = expand(DEFAULT_PREFIXES, "team-a")

S3_LOCATIONS = [
    # location, under team-a's default prefix
    ("s3://modelpress/team-a/", True),
    ("s3://modelpress/team-a", True),
    ("s3://modelpress/team-a/digits/run-1/", True),
    ("s3://modelpress/team-a//digits/./x", True),
    ("s3://modelpress/team-a/x/../y/", True),
    ("s3://modelpress/team-b/", False),
    ("s3://modelpress/team-a-evil/", False),
    ("s3://modelpress/team-ab/x", False),
    ("s3://modelpress/team-a/../team-b/", False),
    ("s3://modelpress/team-a/x/../../team-b/", False),
    ("s3://modelpress/x/../team-a/y", False),  # written under x/ by a server keeping '..'
    ("s3://modelpress/team-a/../../x", False),
    ("s3://modelpress//team-b/", False),
    ("s3://modelpress/", False),
    ("s3://modelpress-evil/team-a/", False),
    ("s3://other/team-a/", False),
    ("s3://modelpress/team-a?/../team-b", False),
    ("s3://modelpress/team-a#x", False),
    ("s3://modelpress/team-a\\..\\team-b", False),
    ("s3://key:secret@modelpress/team-a/", False),
    ("file:///modelpress/team-a/", False),
    ("https://modelpress/team-a/", False),
]


@pytest.mark.parametrize(("location", "under"), S3_LOCATIONS)
def test_s3_locations(location: str, under: bool) -> None:
    problem = outside(location, TEAM_A)
    assert (problem is None) == under, problem
    if problem:
        assert "\n" not in problem


def _tree(tmp_path: Path) -> list[str]:
    """team-a's and team-b's folders, and a link inside team-a's that leads to team-b's."""
    for team in ("team-a", "team-b"):
        (tmp_path / team).mkdir()
    (tmp_path / "team-a" / "to-b").symlink_to(tmp_path / "team-b")
    return expand([f"{tmp_path.as_uri()}/{{namespace}}/"], "team-a")


@pytest.mark.parametrize(("relative", "under"), [
    ("team-a", True),
    ("team-a/models/m.pt", True),
    ("team-a/x/../models", True),
    ("team-b/models", False),
    ("team-a-evil", False),
    ("team-a/../team-b", False),
    ("team-a/to-b/models", False),
])
def test_file_locations_resolve_dots_and_links(tmp_path: Path, relative: str,
                                               under: bool) -> None:
    prefixes = _tree(tmp_path)
    location = f"{tmp_path.as_uri()}/{relative}"
    assert (outside(location, prefixes) is None) == under


def test_a_refusal_names_the_location_and_the_prefixes() -> None:
    assert outside("s3://modelpress/team-b/x/", TEAM_A) == (
        "s3://modelpress/team-b/x/ lies outside this namespace's locations "
        "(s3://modelpress/team-a/)")


def test_credentials_in_a_location_are_never_repeated() -> None:
    problem = outside("s3://key:secret@modelpress/team-a/", TEAM_A)
    assert problem is not None and "secret" not in problem and "key" not in problem


def test_a_file_uri_naming_another_host_is_outside(tmp_path: Path) -> None:
    problem = outside("file://elsewhere/team-a/", [f"{tmp_path.as_uri()}/"])
    assert problem is not None and "names host 'elsewhere'" in problem


def test_a_file_uri_with_a_malformed_host_is_refused_not_raised(tmp_path: Path) -> None:
    """urlparse raises ValueError on an unclosed `[` (an IPv6 host): a refusal here."""
    problem = outside("file://[0/team-a/", [f"{tmp_path.as_uri()}/"])
    assert problem is not None and "not a valid uri" in problem


def test_no_prefixes_means_nothing_is_under() -> None:
    assert outside("s3://modelpress/team-a/", []) is not None


def test_expand_fills_in_the_namespace() -> None:
    assert expand(["s3://b/{namespace}/", "file:///data/{namespace}/in/"], "ml") == [
        "s3://b/ml/", "file:///data/ml/in/"]


@pytest.mark.parametrize(("template", "usable"), [
    ("s3://modelpress/{namespace}/", True),
    ("file:///var/lib/modelpress/files/{namespace}/", True),
    ("s3://modelpress/shared/", True),
    ("https://modelpress/{namespace}/", False),
    ("/plain/{namespace}/", False),
    ("s3://modelpress/{namespace}/../", False),
    ("s3://Bad_Bucket/{namespace}/", False),
    ("file://host/{namespace}/", False),
])
def test_templates(template: str, usable: bool) -> None:
    assert (template_error(template) is None) == usable
