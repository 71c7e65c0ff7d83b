"""MiniLM-L6 `quantize: {mode: auto, maxAccuracyDrop: 0.003}` (mixed precision) beside the
direct onnxruntime dynamic per-channel int8 recipe, in one interleaved run.

Run by hand:  nice python benchmarks/minilm_mixed.py [--skip-job] [--threads 1]

Runs benchmarks/jobs/minilm-mixed.yaml into benchmarks/out/minilm-mixed (unless
--skip-job), builds the direct recipe with the harness, measures fp32, the direct recipe
and the job's model interleaved (harness.compare), then prints the issue's checks: mean
cosine >= 0.997 on eval, batch-32 latency <= 1.10x and size <= 1.3x the direct recipe's,
and the nodes the job kept at another precision (fp32, 7-bit weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import OUT, ROOT, compare, minilm_direct  # noqa: E402

from modelpress.api import Candidate  # noqa: E402

JOB = ROOT / "benchmarks" / "jobs" / "minilm-mixed.yaml"
DIRECT = "ort quantize_dynamic per-channel"
OURS = "modelpress auto, bar 0.003"


def run_job() -> Path:
    out = OUT / JOB.stem
    print(f"== modelpress run {JOB.name}", flush=True)
    # exit 3 (gates failed) still leaves a complete output; the job sets no gates anyway
    subprocess.run([sys.executable, "-m", "modelpress.cli", "run", str(JOB), "--output",
                    str(out)], check=False, stdout=subprocess.DEVNULL)
    return out


def chosen(out: Path) -> Candidate:
    from modelpress.records import ResultsDocument

    document = ResultsDocument.model_validate_json((out / "results.json").read_text())
    return next(candidate for candidate in document.results.candidates if candidate.chosen)


def checks(rows: list[dict], kept: Candidate) -> list[str]:
    by_model = {row["model"]: row for row in rows}
    ours, direct = by_model[OURS], by_model[DIRECT]
    latency = ours["p50@32"] / direct["p50@32"]
    size = ours["sizeBytes"] / direct["sizeBytes"]
    return [f"cosine {ours['metric']} (>= 0.997: {ours['metric'] >= 0.997})",
            f"batch-32 p50 {latency:.3f}x the direct recipe's (<= 1.10: {latency <= 1.10})",
            f"size {size:.3f}x the direct recipe's (<= 1.3: {size <= 1.3})",
            f"chosen: {kept.name}",
            f"kept in fp32 ({len(kept.fp32_nodes)}): {', '.join(kept.fp32_nodes) or 'none'}",
            f"7-bit weights ({len(kept.reduced_range_nodes)}): "
            f"{', '.join(kept.reduced_range_nodes) or 'none'}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-job", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=40)
    args = parser.parse_args()
    out = OUT / JOB.stem if args.skip_job else run_job()
    from modelpress.components import zoo

    with tempfile.TemporaryDirectory() as scratch:
        fp32, direct = minilm_direct(Path(scratch))
        sentences = zoo.builtin_preprocessor("minilm-l6").tokenize(zoo.sentences("eval"),
                                                                   "sentences")
        rows = compare("MiniLM-L6 embeddings (metric: mean cosine to fp32)", "embedding",
                       {"fp32": fp32, DIRECT: direct, OURS: out / "model.onnx"}, sentences,
                       [1, 32], args.threads, args.iterations)
    lines = checks(rows, chosen(out))
    print("\n" + "\n".join(f"- {line}" for line in lines))
    (OUT / "minilm-mixed.json").write_text(json.dumps({"rows": rows, "checks": lines},
                                                      indent=2))


if __name__ == "__main__":
    main()
