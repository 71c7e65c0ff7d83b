"""Namespace scope: whether a location lies under a namespace's prefixes.

A shared operator gives each namespace its own part of the artifact store
(MODELPRESS_NAMESPACE_PREFIXES, e.g. `s3://modelpress/{namespace}/`). Every place a job
reads from or writes to must lie under one of those once `{namespace}` is the job's own.
"Under" is decided on path segments, so a look-alike (`team-a-evil/` beside `team-a/`) is
not under `team-a/`; `..` is resolved (and symlinks too, for `file://`), so
`team-a/../team-b/` is not either.

S3 keys are compared twice: as written and with `..` resolved. A server that resolves
`..` writes the second, one that does not writes the first; a location counts as under a
prefix only when both are. The key is read literally, as the steps' S3 reader reads it,
and a key holding `?`, `#` or `\\` is refused, since uri parsers disagree about those.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fnmatch import fnmatchcase

from modelpress.errors import StoreError, one_line
from modelpress.store import local_folder

NAMESPACE_FIELD = "{namespace}"
DEFAULT_PREFIXES = ("s3://modelpress/{namespace}/",)
# The registered models a namespace's jobs may register versions of (model registries).
DEFAULT_REGISTRY_MODELS = ("{namespace}.*",)
# A namespace name that stands in for every namespace when a template is checked.
PROBE_NAMESPACE = "a-namespace"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_AMBIGUOUS = ("?", "#", "\\")
_USERINFO = re.compile(r"^(\w+://)[^/]*@")


def expand(templates: Sequence[str], namespace: str) -> list[str]:
    """The prefixes of `namespace`: each template with `{namespace}` replaced."""
    return [template.replace(NAMESPACE_FIELD, namespace) for template in templates]


def template_error(template: str) -> str | None:
    """Why `template` cannot serve as a prefix (not s3:// or file://, `..` in it), or None."""
    prefix = template.replace(NAMESPACE_FIELD, PROBE_NAMESPACE)
    if not prefix.startswith(("s3://", "file://")):
        return f"{template}: a prefix is an s3:// or file:// location"
    if ".." in prefix.split("/"):
        return f"{template}: a prefix may not contain '..'"
    try:
        _place(prefix)
    except StoreError as error:
        return one_line(str(error))
    return None


def outside(location: str, prefixes: Sequence[str]) -> str | None:
    """None when `location` lies under one of `prefixes` (already expanded); otherwise one
    line saying why not, naming the prefixes."""
    return Prefixes(prefixes).outside(location)


class Prefixes:
    """A namespace's prefixes (already expanded), each resolved at most once: a job's
    locations are all judged against the same resolution. A prefix is resolved when a
    location of its scheme is first judged (a file:// prefix's links read once a job, not
    once a location, and not at all for a job that names only s3:// locations)."""

    def __init__(self, prefixes: Sequence[str]) -> None:
        self._prefixes = list(prefixes)
        self._places: dict[str, _Place] = {}

    def outside(self, location: str) -> str | None:
        """None when `location` lies under one of the prefixes; otherwise one line saying
        why not, naming them."""
        if _USERINFO.match(location):  # said without echoing what may be a password
            shown = _USERINFO.sub(r"\1***@", location)
            return f"{shown}: a location may not carry credentials"
        try:
            place = _place(location)
        except StoreError as error:
            return one_line(str(error))
        if any(_under(place, self._place_of(prefix)) for prefix in self._prefixes
               if _scheme(prefix) == place[0]):
            return None
        allowed = ", ".join(self._prefixes) or "none are configured"
        return f"{location} lies outside this namespace's locations ({allowed})"

    def _place_of(self, prefix: str) -> _Place:
        if prefix not in self._places:
            self._places[prefix] = _place(prefix)
        return self._places[prefix]


def _scheme(location: str) -> str:
    """The scheme `_place` gives `location`: s3, or file (every other one is refused)."""
    return "s3" if location.startswith("s3://") else "file"


# A location as compared: (scheme, bucket, path segments as written, resolved segments).
_Place = tuple[str, str, tuple[str, ...], tuple[str, ...]]


def _place(location: str) -> _Place:
    if _scheme(location) == "s3":
        return _s3_place(location)
    path = local_folder(location).expanduser()  # StoreError for another scheme or host
    if not path.is_absolute():
        raise StoreError(f"{location} is not an absolute path")
    resolved = path.resolve()
    return "file", "", resolved.parts, resolved.parts


def _s3_place(location: str) -> _Place:
    rest = location.removeprefix("s3://")
    if any(character in rest for character in _AMBIGUOUS):
        raise StoreError(f"{location}: an s3 location holding '?', '#' or '\\' is ambiguous")
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise StoreError(f"{location}: {bucket!r} is not a valid bucket name")
    written = tuple(segment for segment in key.split("/") if segment not in ("", "."))
    return "s3", bucket, written, _resolve_dots(written, location)


def _resolve_dots(segments: tuple[str, ...], location: str) -> tuple[str, ...]:
    resolved: list[str] = []
    for segment in segments:
        if segment != "..":
            resolved.append(segment)
        elif resolved:
            resolved.pop()
        else:
            raise StoreError(f"{location}: '..' climbs above the bucket")
    return tuple(resolved)


def _under(place: _Place, prefix: _Place) -> bool:
    scheme, bucket, written, resolved = place
    if (scheme, bucket) != prefix[:2]:
        return False
    wanted = prefix[3]
    return all(segments[:len(wanted)] == wanted for segments in (written, resolved))


def registered_model_refused(name: str, namespace: str, templates: Sequence[str]) -> str | None:
    """One line when registered model `name` matches none of `templates` (patterns, `*` any
    characters, naming {namespace}) once `{namespace}` is `namespace`; None when allowed."""
    patterns = expand(templates, namespace)
    if any(fnmatchcase(name, pattern) for pattern in patterns):
        return None
    allowed = ", ".join(patterns) or "none are configured"
    return (f"spec.promotion.registry.model: {name} is not a registered model of namespace "
            f"{namespace} (allowed: {allowed})")


# A namespace name as Kubernetes allows it (a DNS label): what `{namespace}` stands for.
_NAMESPACE_PATTERN = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SENTINEL = "zz0namespace0zz"


def reachable_by_tenants(location: str, templates: Sequence[str]) -> str | None:
    """One line when `location` overlaps a tenant's prefix for some namespace: lies under
    one, or holds one (so a job of that namespace could write there, or there is a
    namespace, existing or future, whose tenants could); None when no namespace can reach
    it. What the platform's own prefixes (MODELPRESS_VERIFY_PREFIX) must satisfy."""
    try:
        segments = _segments(_place(location))
    except StoreError as error:
        return one_line(str(error))
    for template in templates:
        patterns = [re.compile(re.escape(segment).replace(_SENTINEL, _NAMESPACE_PATTERN))
                    for segment in _segments(_place(template.replace(NAMESPACE_FIELD,
                                                                     _SENTINEL)))]
        if all(pattern.fullmatch(segment) for pattern, segment in zip(patterns, segments,
                                                                      strict=False)):
            return (f"{location} overlaps the tenants' prefix {template}: a namespace's jobs "
                    "could write there")
    return None


def _segments(place: _Place) -> list[str]:
    scheme, bucket, _, resolved = place
    return [f"{scheme}:{bucket}", *resolved]
