"""Report: turn the step ledger into results.json, report.html and lineage.json, and publish
them with the compressed model to the job's output store."""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelpress.api import (
    Candidate,
    Latency,
    MetricValue,
    ModelFigures,
    PoolBenchmark,
    Results,
    StepStatus,
)
from modelpress.components.result import StepResult, timed
from modelpress.lineage import LINEAGE
from modelpress.store import StoredObject, open_store


def _figures(side: dict[str, Any], metric_name: str,
             benchmarks: list[PoolBenchmark], role: str) -> ModelFigures:
    metrics = dict(side["metrics"])
    latency: dict[str, Latency] = {}
    for pool in benchmarks:
        if pool.available and pool.batches:
            largest = max(pool.batches, key=int)
            latency[pool.pool] = pool.batches[largest][role]
    return ModelFigures(
        size_bytes=side["sizeBytes"], parameters=side["parameters"],
        nonzero_parameters=side["nonzeroParameters"],
        metric=MetricValue(name=metric_name, value=round(metrics.pop(metric_name), 6)),
        extra_metrics={k: round(v, 6) for k, v in metrics.items()}, latency_ms=latency)


def build_results(ledger: list[dict[str, Any]]) -> Results:
    """status.results from the steps' figures; speedup per pool at its largest batch size."""
    validation = next(entry for entry in ledger if entry["step"] == "validate")["figures"]
    benchmarks = [PoolBenchmark.model_validate(entry["figures"]) for entry in ledger
                  if entry["step"].startswith("benchmark-")]
    name = validation["metricName"]
    baseline = _figures(validation["baseline"], name, benchmarks, "baseline")
    compressed = _figures(validation["compressed"], name, benchmarks, "compressed")
    speedup = {pool.pool: pool.speedup[max(pool.speedup, key=int)]
               for pool in benchmarks if pool.available and pool.speedup}
    candidates = [Candidate(name=c["name"], accuracy_drop=c["accuracy_drop"],
                            size_bytes=c["size_bytes"], latency_ms=c["latency_ms"],
                            chosen=c["chosen"], reason=c["reason"])
                  for entry in ledger for c in entry["figures"].get("candidates", [])]
    return Results(
        baseline=baseline, compressed=compressed, candidates=candidates,
        compression_ratio=round(baseline.size_bytes / compressed.size_bytes, 4),
        accuracy_drop=round(baseline.metric.value - compressed.metric.value, 6),
        speedup=speedup, benchmarks=benchmarks)


def step_statuses(ledger: list[dict[str, Any]]) -> list[StepStatus]:
    return [StepStatus(
        name=entry["step"], phase="Succeeded",
        started_at=datetime.fromtimestamp(entry["started_at"], UTC),
        finished_at=datetime.fromtimestamp(entry["started_at"] + entry["seconds"], UTC),
        duration_seconds=round(entry["seconds"], 3), message=entry["message"])
        for entry in ledger]


# ----------------------------------------------------------------------------- html


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _latency_plot(results: Results) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = [pool for pool in results.benchmarks if pool.available]
    if not pools:
        return None
    figure, axes = plt.subplots(1, len(pools), figsize=(5 * len(pools), 3.2), squeeze=False)
    for axis, pool in zip(axes[0], pools, strict=True):
        batches = sorted(pool.batches, key=int)
        positions = range(len(batches))
        for offset, role in ((-0.2, "baseline"), (0.2, "compressed")):
            axis.bar([p + offset for p in positions],
                     [pool.batches[b][role].p50 for b in batches], width=0.4, label=role)
        axis.set_xticks(list(positions), [f"batch {b}" for b in batches])
        axis.set_ylabel("p50 latency (ms)")
        axis.set_title(f"{pool.pool} ({pool.provider}, {pool.threads} thread(s))")
        axis.legend()
    encoded = _png(figure)
    plt.close(figure)
    return encoded


def _size_plot(results: Results) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 3.2))
    sizes = [results.baseline.size_bytes / 1e6, results.compressed.size_bytes / 1e6]
    axis.bar(["baseline (fp32 ONNX)", "compressed"], sizes, color=["#888", "#2a7"])
    axis.set_ylabel("size (MB)")
    axis.set_title(f"compression ratio {results.compression_ratio:.2f}x")
    encoded = _png(figure)
    plt.close(figure)
    return encoded


def _pareto_plot(results: Results) -> str | None:
    """Accuracy drop against size for every candidate; the chosen one is starred."""
    measured = [c for c in results.candidates
                if c.accuracy_drop is not None and c.size_bytes is not None]
    if len(measured) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 3.6))
    for candidate in measured:
        point = ((candidate.size_bytes or 0) / 1e6, candidate.accuracy_drop or 0.0)
        axis.scatter(*point, marker="*" if candidate.chosen else "o",
                     s=160 if candidate.chosen else 40,
                     color="#2a7" if candidate.chosen else "#888")
        axis.annotate(candidate.name.rsplit("=", 1)[-1], point, fontsize=8)
    axis.set_xlabel("size (MB)")
    axis.set_ylabel("accuracy drop")
    axis.set_title("candidates")
    encoded = _png(figure)
    plt.close(figure)
    return encoded


def render_html(job_name: str, results: Results, steps: list[StepStatus]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{base}</td><td>{comp}</td></tr>"
        for label, base, comp in [
            ("size (bytes)", results.baseline.size_bytes, results.compressed.size_bytes),
            ("parameters", results.baseline.parameters, results.compressed.parameters),
            ("nonzero parameters", results.baseline.nonzero_parameters,
             results.compressed.nonzero_parameters),
            (results.baseline.metric.name, f"{results.baseline.metric.value:.4f}",
             f"{results.compressed.metric.value:.4f}"),
        ] + [(name, f"{results.baseline.extra_metrics.get(name, float('nan')):.4f}",
              f"{value:.4f}") for name, value in results.compressed.extra_metrics.items()])
    pools = "".join(
        f"<tr><td>{p.pool}</td><td>{'yes' if p.available else 'no: ' + html.escape(p.reason or '')}"
        f"</td><td>{', '.join(f'batch {b}: {s:.2f}x' for b, s in p.speedup.items())}</td></tr>"
        for p in results.benchmarks)
    step_rows = "".join(
        f"<tr><td>{s.name}</td><td>{s.duration_seconds:.2f} s</td>"
        f"<td>{html.escape(s.message or '')}</td></tr>" for s in steps)
    candidates = "".join(
        f"<tr><td>{'&#9733; ' if c.chosen else ''}{html.escape(c.name)}</td>"
        f"<td>{'' if c.accuracy_drop is None else f'{c.accuracy_drop:.4f}'}</td>"
        f"<td>{c.size_bytes or ''}</td>"
        f"<td>{'' if c.latency_ms is None else f'{c.latency_ms:.3f}'}</td>"
        f"<td>{html.escape(c.reason)}</td></tr>" for c in results.candidates)
    candidate_table = (
        "<h2>Candidates</h2><table><tr><th>candidate</th><th>accuracy drop</th><th>bytes</th>"
        f"<th>p50 ms</th><th>verdict</th></tr>{candidates}</table>" if candidates else "")
    plots = "".join(f'<img alt="{alt}" src="data:image/png;base64,{data}">'
                    for alt, data in (("latency", _latency_plot(results)),
                                      ("size", _size_plot(results)),
                                      ("candidates", _pareto_plot(results))) if data)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>modelpress report: {html.escape(job_name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px}}
img{{max-width:100%;margin:0.5em}}</style></head><body>
<h1>{html.escape(job_name)}</h1>
<p>Compression ratio <b>{results.compression_ratio:.2f}x</b>, accuracy drop
<b>{results.accuracy_drop:.4f}</b>, speedup {html.escape(json.dumps(results.speedup))}.
Speedup compares the same runtime, threads and batch size against the original model
exported to fp32 ONNX.</p>
<table><tr><th></th><th>baseline</th><th>compressed</th></tr>{rows}</table>
<h2>Benchmarks</h2><table><tr><th>pool</th><th>ran</th><th>speedup (p50)</th></tr>{pools}</table>
{plots}
{candidate_table}
<h2>Steps</h2><table><tr><th>step</th><th>compute</th><th>result</th></tr>{step_rows}</table>
</body></html>"""


# ----------------------------------------------------------------------------- publish


def report(job_name: str, ledger: list[dict[str, Any]], compressed_onnx: Path,
           output: str) -> StepResult:
    """Publish model.onnx, report.html, lineage.json and, last, results.json to `output`.

    results.json goes last: its presence marks a complete, verifiable set of artifacts.
    """
    with timed("report") as result:
        results = build_results(ledger)
        steps = step_statuses(ledger)
        store = open_store(output)
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            (folder / "report.html").write_text(render_html(job_name, results, steps))
            stored = {"model.onnx": store.put_file(compressed_onnx, "model.onnx"),
                      "report.html": store.put_file(folder / "report.html", "report.html")}
            (folder / LINEAGE).write_text(json.dumps(_lineage(ledger, stored), indent=2))
            store.put_file(folder / LINEAGE, LINEAGE)
            artifacts = {"model": stored["model.onnx"].uri, "report": stored["report.html"].uri,
                         "results": store.uri("results.json"), "lineage": store.uri(LINEAGE)}
            presign = getattr(store, "presigned_get", None)
            if presign is not None:
                artifacts["reportUrl"] = presign("report.html")
            document = {"results": results.to_wire(), "artifacts": artifacts,
                        "steps": [s.to_wire() for s in steps]}
            (folder / "results.json").write_text(json.dumps(document, indent=2))
            store.put_file(folder / "results.json", "results.json")
        result.figures = {"artifacts": artifacts}
        result.message = f"published to {store.root_uri}"
    return result


def _lineage(ledger: list[dict[str, Any]], stored: dict[str, StoredObject]) -> dict[str, Any]:
    compressing = [e["step"] for e in ledger
                   if e["step"] in ("prune", "distill", "decompose", "quantize", "select")]
    producers = {"model.onnx": (compressing or ["fetch"])[-1], "report.html": "report"}
    fetched: dict[str, Any] = next((e for e in ledger if e["step"] == "fetch"),
                                   {"figures": {}})
    return {
        "inputs": fetched["figures"].get("lineageInputs", {}),
        "steps": [{"step": e["step"], "seconds": round(e["seconds"], 3), "message": e["message"]}
                  for e in ledger],
        "artifacts": {key: {"uri": obj.uri, "sha256": obj.sha256, "sizeBytes": obj.size_bytes,
                            "producer": producers[key]} for key, obj in stored.items()},
    }
