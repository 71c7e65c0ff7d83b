"""What one namespace's job may touch: the locations under its namespace's prefixes, and
the step images the operator allows.

Pure, like the reconciler that calls it at intake (`reconcile.checked`): a job that fails
here never runs, so nothing of it is read or written. The rule for one location is
`modelpress.tenancy`'s; this module knows which fields of a job are locations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from modelpress.api import CompressionJob
from modelpress.errors import one_line
from modelpress.tenancy import Prefixes, expand

# Inputs by these schemes name a place in a store or on disk; builtin:// names shipped
# data, and http(s):// and hf:// are checked where they are fetched.
_STORED_SCHEMES = ("s3://", "file://")


def outside_namespace(job: CompressionJob, default_output: str,
                      prefix_templates: Sequence[str]) -> str | None:
    """One line naming the first field of `job` that lies outside its namespace's prefixes
    (`default_output` stands for an unset spec.output), or None."""
    prefixes = Prefixes(expand(prefix_templates, job.metadata.namespace))
    for where, location in _locations(job, default_output):
        problem = prefixes.outside(location)
        if problem:
            return f"{where}: {problem}"
    return None


def _locations(job: CompressionJob, default_output: str) -> Iterator[tuple[str, str]]:
    spec = job.spec
    if spec.output:
        yield "spec.output", spec.output
    else:
        yield "spec.output (unset: the operator's default)", default_output
    if spec.promotion.target:
        yield "spec.promotion.target", spec.promotion.target
    inputs = [("spec.model.uri", spec.model.uri),
              *((f"spec.data.{name}", uri) for name, uri in spec.data.sources().items())]
    for where, uri in inputs:
        if uri and uri.startswith(_STORED_SCHEMES):
            yield where, uri


def image_refused(image: str, allowed: Sequence[str]) -> str | None:
    """One line when `image` (empty: the operator's step image) is not allowed, else None."""
    if not image or image in allowed:
        return None
    listed = ", ".join(allowed) or "only the operator's step image"
    return (f"spec.image: {one_line(image[:200])} is not an allowed image "
            f"(MODELPRESS_ALLOWED_IMAGES: {listed})")
