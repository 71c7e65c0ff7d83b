"""Model code is opt-in: which parts of a job are programs rather than data.

A torch.export program (`.pt2`), TorchScript (`.ts`), a `python://` architecture or
distillation student, and a Hugging Face folder whose config names custom code (`auto_map`,
loaded with transformers' `trust_remote_code`) run code when they are loaded or built.
They are refused unless model code is trusted: `modelpress run|compile --trust-model-code`
(the `trust_remote_code` idiom), or the operator's MODELPRESS_TRUST_MODEL_CODE. ONNX,
safetensors and a state_dict read with `weights_only=True` into a builtin architecture are
data and need no trust.

A spec names a program by a suffix or a scheme, which is what is checked here; TorchScript
saved under another suffix (`.pt`, `.pth`, `.bin`) is only recognised by reading the file,
which the fetch step does with the same refusal (`program_refusal`); so is an HF folder's
`auto_map`.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from modelpress.api import CompressionSpec, DistillStep
from modelpress.errors import InvalidInput

# Model file suffixes that name a program, and what each is.
PROGRAM_SUFFIXES = {".pt2": "a torch.export program", ".ts": "TorchScript"}
HF_REMOTE_CODE = "a Hugging Face folder with custom code"
PYTHON_SCHEME = "python://"
HOW_TO_TRUST = ("refused unless model code is trusted: pass --trust-model-code "
                "(operator: MODELPRESS_TRUST_MODEL_CODE=true)")


def program_refusal(where: str, what: str) -> InvalidInput:
    """The one-line refusal of a program named by `where` (`what` says what it is)."""
    return InvalidInput(where, f"{what}, which runs code when loaded; {HOW_TO_TRUST}")


def untrusted_program(spec: CompressionSpec, trusted: bool) -> InvalidInput | None:
    """The refusal of the first field of `spec` that names a program, unless `trusted`."""
    if trusted:
        return None
    what = PROGRAM_SUFFIXES.get(_suffix(spec.model.uri))
    if what:
        return program_refusal("spec.model.uri", f"{spec.model.uri} is {what}")
    if _is_python(spec.model.architecture):
        return program_refusal("spec.model.architecture",
                               f"{spec.model.architecture} is Python code")
    for index in range(len(spec.steps)):
        for options in spec.step_variants(index):  # a search may set the student
            if isinstance(options, DistillStep) and _is_python(options.student):
                return program_refusal(f"spec.steps[{index}].distill.student",
                                       f"{options.student} is Python code")
    return None


def require_trusted(spec: CompressionSpec, trusted: bool) -> None:
    """Raise the refusal of the first program `spec` names, unless `trusted`."""
    refusal = untrusted_program(spec, trusted)
    if refusal is not None:
        raise refusal


def _is_python(reference: str | None) -> bool:
    return reference is not None and reference.startswith(PYTHON_SCHEME)


def _suffix(uri: str) -> str:
    """The suffix of the file `uri` names, before any query or fragment; not through
    urlparse, which raises on a malformed host (an unclosed `[`) and so would let a
    hostile uri crash the check instead of being refused."""
    path = uri.split("?", 1)[0].split("#", 1)[0]
    return PurePosixPath(path).suffix.lower()
