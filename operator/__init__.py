"""The Kubernetes operator: kopf handlers, a pure reconciler, run backends, metrics.

This folder is `operator/` at the checkout's root, installed as `modelpress.operator`.
Python started in that root (a REPL, `python -c`, a heredoc, a script there) has the root
first on sys.path, where this folder would shadow the standard library's `operator`, which
`enum`, `collections` and most of the standard library import. Imported under that bare
name, the folder hands the name over to the standard library's module.

Not a PEP 420 folder without this file: setuptools' editable installs cannot import a
namespace subpackage that `package-dir` maps (pypa/setuptools#4943).
"""

if __name__ == "operator":
    import os
    import sys

    _root = os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir))
    _search = list(sys.path)
    sys.path[:] = [entry for entry in _search
                   if os.path.realpath(entry or os.curdir) != _root]
    del sys.modules["operator"]
    try:
        import operator  # noqa: F401 - the standard library's; the import system returns it
    finally:
        sys.path[:] = _search
