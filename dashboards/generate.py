"""Write the Grafana dashboards as JSON into the Helm chart, or check they are current.

    python dashboards/generate.py           # regenerate charts/modelpress/files/dashboards/
    python dashboards/generate.py --check   # exit 1 when a committed file is stale

The chart ships the JSON (one ConfigMap per dashboard) and a Helm chart can only read
files inside itself, so the generated files live there; this folder holds their source.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import compression
import overview
import steps
from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.encoder import JSONEncoder

OUTPUT = Path(__file__).resolve().parents[1] / "charts" / "modelpress" / "files" / "dashboards"
DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "overview": overview.build,
    "compression": compression.build,
    "steps": steps.build,
}


def render(build: Callable[[], dashboard.Dashboard]) -> str:
    """The dashboard as Grafana imports it, with sorted keys so diffs stay readable."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True,
                      ensure_ascii=False) + "\n"


def stale_files(output: Path) -> list[Path]:
    return [output / f"{name}.json" for name, build in DASHBOARDS.items()
            if not (output / f"{name}.json").is_file()
            or (output / f"{name}.json").read_text(encoding="utf-8") != render(build)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.output)
        for path in stale:
            print(f"{path} is stale: run python dashboards/generate.py", file=sys.stderr)
        return 1 if stale else 0
    args.output.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        (args.output / f"{name}.json").write_text(render(build), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
