"""The integration suite's real servers, shared with the reliability tests.

tests/integration/conftest.py is not a package module, so it is loaded here under a name
of its own; its fixtures are re-exported (pytest collects them from this module) and its
helpers are reachable as `servers` for tests that start a server of their own.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SERVERS = Path(__file__).resolve().parents[1] / "integration" / "conftest.py"
_spec = importlib.util.spec_from_file_location("modelpress_test_servers", _SERVERS)
assert _spec is not None and _spec.loader is not None
servers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = servers
_spec.loader.exec_module(servers)

s3_server = servers.s3_server
s3_env = servers.s3_env
bucket_name = servers.bucket_name
