"""Report: turn the step ledger into results.json, report.html and lineage.json, judge the
promotion gates, and publish them with the compressed model and its fp32 ONNX baseline to
the job's output store."""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from modelpress.api import (
    Candidate,
    Latency,
    MetricValue,
    ModelFigures,
    PoolBenchmark,
    Promotion,
    Results,
    StepStatus,
)
from modelpress.components.budget import honest_figures, honesty_line
from modelpress.components.llm_report import llm_candidate_table, llm_sections
from modelpress.components.onnxfiles import data_files
from modelpress.components.result import timed
from modelpress.gates import gates_set, judge
from modelpress.lineage import (
    LINEAGE,
    Lineage,
    LineageArtifact,
    LineageStep,
    write_lineage,
)
from modelpress.records import (
    MODEL_CHANGING,
    RESULTS,
    Artifacts,
    BenchmarkRecord,
    FetchRecord,
    Ledger,
    MeasuredModel,
    PromotionVerdict,
    QuantizeRecord,
    ReportRecord,
    ResultsDocument,
    SelectRecord,
    ValidateRecord,
    last_of,
    records_of,
    write_results_document,
)
from modelpress.store import StoredObject, open_store

MODEL = "model.onnx"
BASELINE = "baseline.onnx"
# text-generation: the fp32 onnxruntime-genai folder every figure is measured against.
GENAI_BASELINE = "baseline"
REPORT = "report.html"


def _figures(side: MeasuredModel, metric_name: str,
             benchmarks: list[PoolBenchmark], role: str) -> ModelFigures:
    latency: dict[str, Latency] = {}
    for pool in benchmarks:
        if pool.available and pool.batches:
            largest = max(pool.batches, key=int)
            latency[pool.pool] = pool.batches[largest][role]
    tokens = {pool.pool: pool.text_generation.decode_tokens_per_second[role]
              for pool in benchmarks if pool.available and pool.text_generation}
    return ModelFigures(
        size_bytes=side.size_bytes, parameters=side.parameters,
        nonzero_parameters=side.nonzero_parameters,
        metric=MetricValue(name=metric_name, value=round(side.metrics[metric_name], 6)),
        extra_metrics={name: round(value, 6) for name, value in side.metrics.items()
                       if name != metric_name},
        latency_ms=latency, tokens_per_second=tokens)


def _speedup(pool: PoolBenchmark) -> float | None:
    """A pool's headline speedup: decode tokens/s ratio (text-generation), else p50 at the
    largest batch size; None when the pool did not run."""
    if not pool.available:
        return None
    if pool.text_generation is not None:
        return pool.text_generation.decode_speedup
    return pool.speedup[max(pool.speedup, key=int)] if pool.speedup else None


def build_results(ledger: Ledger) -> Results:
    """status.results from the steps' records; speedup per pool at its largest batch size."""
    validation = last_of(ledger, ValidateRecord)
    benchmarks = [record.benchmark for record in records_of(ledger, BenchmarkRecord)]
    name = validation.metric_name
    baseline = _figures(validation.baseline, name, benchmarks, "baseline")
    compressed = _figures(validation.compressed, name, benchmarks, "compressed")
    speedup = {pool.pool: value for pool in benchmarks
               if (value := _speedup(pool)) is not None}
    candidates = [candidate for record in ledger
                  if isinstance(record, QuantizeRecord | SelectRecord)
                  for candidate in record.candidates]
    generation = validation.text_generation
    return Results(
        baseline=baseline, compressed=compressed, candidates=candidates,
        compression_ratio=round(baseline.size_bytes / compressed.size_bytes, 4),
        accuracy_drop=round(baseline.metric.value - compressed.metric.value, 6),
        perplexity_increase=None if generation is None else round(
            generation.compressed_perplexity / generation.baseline_perplexity - 1.0, 6),
        text_generation=generation, speedup=speedup, benchmarks=benchmarks,
        sensitivity=[entry for record in records_of(ledger, QuantizeRecord)
                     for entry in record.sensitivity],
        **honest_figures(ledger))


def step_statuses(ledger: Ledger) -> list[StepStatus]:
    return [StepStatus(
        name=record.name, phase="Succeeded", started_at=record.started_at,
        finished_at=record.started_at + timedelta(seconds=record.seconds),
        duration_seconds=round(record.seconds, 3), message=record.message)
        for record in ledger]


def verdict_of(results: Results, promotion: Promotion) -> PromotionVerdict:
    """The gates judged with the operator's own code (modelpress.gates)."""
    verdict = judge(results, promotion)
    return PromotionVerdict(decision=verdict.decision, reasons=verdict.reasons)


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


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other one beats on size, latency and accuracy drop at once (at
    least as good on all three, better on one); those missing a figure are left out."""
    measured = [c for c in candidates if c.accuracy_drop is not None
                and c.size_bytes is not None and c.latency_ms is not None]

    def figures(c: Candidate) -> tuple[float, float, float]:
        return float(c.size_bytes or 0), float(c.latency_ms or 0.0), float(c.accuracy_drop or 0.0)

    def dominated(c: Candidate) -> bool:
        return any(all(a <= b for a, b in zip(figures(o), figures(c), strict=True))
                   and figures(o) != figures(c) for o in measured)

    return [c for c in measured if not dominated(c)]


def _front_plot(candidates: list[Candidate], front: list[Candidate]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, label, of in ((axes[0], "size (MB)", lambda c: (c.size_bytes or 0) / 1e6),
                            (axes[1], "p50 latency (ms)", lambda c: c.latency_ms or 0.0)):
        for group, style in ((candidates, {"color": "#bbb", "s": 30}),
                             (front, {"color": "#c60", "s": 60, "label": "Pareto front"})):
            axis.scatter([of(c) for c in group], [c.accuracy_drop or 0.0 for c in group],
                         **style)  # type: ignore[arg-type]
        chosen = [c for c in candidates if c.chosen]
        axis.scatter([of(c) for c in chosen], [c.accuracy_drop or 0.0 for c in chosen],
                     marker="*", s=200, color="#2a7", label="kept")
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy drop (decision data)")
        axis.legend(fontsize=8)
    encoded = _png(figure)
    plt.close(figure)
    return encoded


def pareto_section(results: Results) -> str:
    """The Pareto front (size x latency x accuracy drop) of the candidates, as a plot and a
    table. Candidates are timed on the machine that judged them, at the largest batch with
    the first CPU pool's threads, so this is that pool's front; the other pools measure only
    the kept model (Benchmarks above)."""
    front = pareto_front(results.candidates)
    if len(front) < 1 or len(results.candidates) < 2:
        return ""
    rows = "".join(f"<tr><td>{'&#9733; ' if c.chosen else ''}{html.escape(c.name)}</td>"
                   f"<td>{c.size_bytes:,}</td><td>{_number(c.latency_ms, 3)}</td>"
                   f"<td>{_number(c.accuracy_drop, 4)}</td></tr>" for c in front)
    plot = _front_plot(results.candidates, front)
    return ("<h2>Pareto front of the candidates</h2><p>Timed at the largest batch size "
            "with the first CPU pool's threads, on the machine that ran them; accuracy drop "
            "on the decision data. No other candidate is at least as small, as fast and as "
            "accurate as one on the front.</p>"
            f'<img alt="pareto front" src="data:image/png;base64,{plot}">'
            "<table><tr><th>candidate</th><th>bytes</th><th>p50 ms</th><th>accuracy drop</th>"
            f"</tr>{rows}</table>")


# The sensitivity plot's bars: the most harmful nodes (all of them in the table).
SENSITIVITY_BARS = 24


def _sensitivity_plot(results: Results, kept: set[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = results.sensitivity[:SENSITIVITY_BARS][::-1]  # most harmful on top
    figure, axis = plt.subplots(figsize=(8, 0.9 + 0.28 * len(shown)))
    axis.barh([entry.node[-48:] for entry in shown], [entry.accuracy_drop for entry in shown],
              color=["#c60" if set(entry.nodes) <= kept else "#888" for entry in shown])
    axis.set_xlabel("accuracy drop with only this node quantized")
    axis.set_title(f"sensitivity of {results.sensitivity[0].recipe} (orange: kept in fp32)")
    axis.tick_params(axis="y", labelsize=7)
    encoded = _png(figure)
    plt.close(figure)
    return encoded


def sensitivity_section(results: Results) -> str:
    """The quantization recipe's per-node cost, most harmful first, as a bar plot and a
    table; the nodes the kept model has in fp32 are marked."""
    if not results.sensitivity:
        return ""
    kept = {node for c in results.candidates if c.chosen for node in c.fp32_nodes}
    rows = "".join(f"<tr><td>{entry.rank}</td><td>{html.escape(entry.node)}</td>"
                   f"<td>{entry.op_type}</td><td>{entry.accuracy_drop:.5f}</td>"
                   f"<td>{entry.output_error:.5f}</td>"
                   f"<td>{'yes' if set(entry.nodes) <= kept else ''}</td></tr>"
                   for entry in results.sensitivity)
    listed = ", ".join(sorted(kept)) or "none"
    reduced = ", ".join(sorted(node for c in results.candidates if c.chosen
                               for node in c.reduced_range_nodes)) or "none"
    return ("<h2>Sensitivity</h2><p>What quantizing each node costs: the recipe's accuracy "
            "drop with only that node quantized, on sampled decision rows "
            "(docs/quantization.md). Kept in fp32 by the chosen model: "
            f"{html.escape(listed)}. With 7-bit weights: {html.escape(reduced)}.</p>"
            '<img alt="sensitivity" '
            f'src="data:image/png;base64,{_sensitivity_plot(results, kept)}">'
            "<table><tr><th>rank</th><th>node</th><th>op</th><th>accuracy drop</th>"
            f"<th>output error</th><th>kept in fp32</th></tr>{rows}</table>")


def _banner(verdict: PromotionVerdict, gated: bool) -> str:
    """The promotion verdict, first thing on the page: every failed gate when rejected."""
    reasons = "".join(f"<li>{html.escape(reason)}</li>" for reason in verdict.reasons)
    if not gated:
        return ('<div class="verdict none"><b>No promotion gates set</b>: nothing was judged, '
                "so nothing here says this model is good enough to ship.</div>")
    if verdict.decision == "Rejected":
        return (f'<div class="verdict rejected"><b>REJECTED</b>: {len(verdict.reasons)} '
                f"gate(s) failed<ul>{reasons}</ul></div>")
    return f'<div class="verdict passed"><b>Gates passed</b><ul>{reasons}</ul></div>'


def _figure_rows(results: Results) -> str:
    return "".join(
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


def _number(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _candidate_table(results: Results) -> str:
    if results.text_generation is not None:
        return llm_candidate_table(results.candidates)
    candidates = "".join(
        f"<tr><td>{'&#9733; ' if c.chosen else ''}{html.escape(c.name)}</td>"
        f"<td>{_number(c.accuracy_drop, 4)}</td><td>{c.size_bytes or ''}</td>"
        f"<td>{_number(c.latency_ms, 3)}</td>"
        f"<td>{html.escape(c.reason)}</td></tr>" for c in results.candidates)
    return ("<h2>Candidates</h2><table><tr><th>candidate</th><th>accuracy drop</th>"
            f"<th>bytes</th><th>p50 ms</th><th>verdict</th></tr>{candidates}</table>"
            if candidates else "")


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}
img{max-width:100%;margin:0.5em}.verdict{padding:0.8em 1em;margin:1em 0;border-radius:4px}
.passed{background:#e3f6e8;border:2px solid #2a7}.rejected{background:#fde8e8;border:2px solid #c22}
.none{background:#f3f3f3;border:2px solid #888}"""


def render_html(job_name: str, results: Results, steps: list[StepStatus],
                verdict: PromotionVerdict, gated: bool) -> str:
    pools = "".join(
        f"<tr><td>{p.pool}</td><td>{'yes' if p.available else 'no: ' + html.escape(p.reason or '')}"
        f"</td><td>{', '.join(f'batch {b}: {s:.2f}x' for b, s in p.speedup.items())}</td></tr>"
        for p in results.benchmarks)
    step_rows = "".join(
        f"<tr><td>{html.escape(s.name)}</td><td>{s.duration_seconds:.2f} s</td>"
        f"<td>{html.escape(s.message or '')}</td></tr>" for s in steps)
    plots = "".join(f'<img alt="{alt}" src="data:image/png;base64,{data}">'
                    for alt, data in (("latency", _latency_plot(results)),
                                      ("size", _size_plot(results))) if data)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>modelpress report: {html.escape(job_name)}</title>
<style>{_STYLE}</style></head><body>
<h1>{html.escape(job_name)}</h1>
{_banner(verdict, gated)}
<p>Compression ratio <b>{results.compression_ratio:.2f}x</b>, accuracy drop
<b>{results.accuracy_drop:.4f}</b>, speedup {html.escape(json.dumps(results.speedup))}.
Speedup compares the same runtime, threads and batch size against the original model
exported to fp32 ONNX (published beside the model as {BASELINE}).</p>
<p>{html.escape(honesty_line(results))}</p>
<table><tr><th></th><th>baseline</th><th>compressed</th></tr>{_figure_rows(results)}</table>
<h2>Benchmarks</h2><table><tr><th>pool</th><th>ran</th><th>speedup (p50)</th></tr>{pools}</table>
{plots}
{llm_sections(results)}
{_candidate_table(results)}
{sensitivity_section(results)}
{pareto_section(results)}
<h2>Steps</h2><table><tr><th>step</th><th>compute</th><th>result</th></tr>{step_rows}</table>
</body></html>"""


# ----------------------------------------------------------------------------- publish


def report(name: str, job_name: str, promotion: Promotion, ledger: Ledger,
           compressed_onnx: Path, baseline_onnx: Path, output: str,
           preprocessing: Path | None = None) -> ReportRecord:
    """Judge the gates and publish model.onnx, baseline.onnx, the model's preprocessing
    files (the files in `preprocessing`: tokenizer or image processor, config.json with
    id2label, so the published folder runs as is), report.html, lineage.json and, last,
    results.json to `output`. `name` is this step's own name (report.html's producer).
    For text-generation `compressed_onnx` and `baseline_onnx` are onnxruntime-genai folders:
    the compressed one's files are published at the top (it runs as is with
    onnxruntime_genai), the baseline's under `baseline/`.

    results.json goes last: its presence marks a complete, verifiable set of artifacts.
    """
    with timed() as clock:
        began = time.perf_counter()
        results = build_results(ledger)
        verdict = verdict_of(results, promotion)
        store = open_store(output)
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            steps = step_statuses(ledger)
            (folder / REPORT).write_text(render_html(job_name, results, steps, verdict,
                                                     gates_set(promotion)), encoding="utf-8")
            stored = {**_publish_models(store, compressed_onnx, baseline_onnx),
                      **{path.name: store.put_file(path, path.name)
                         for path in preprocessing_files(preprocessing)},
                      REPORT: store.put_file(folder / REPORT, REPORT)}
            lineage = _lineage(ledger, stored, name, _model_keys(compressed_onnx))
            stored[LINEAGE] = store.put_file(write_lineage(lineage, folder / LINEAGE), LINEAGE)
            baseline_key = BASELINE if baseline_onnx.is_file() else f"{GENAI_BASELINE}/{MODEL}"
            artifacts = Artifacts(model=stored[MODEL].uri, baseline=stored[baseline_key].uri,
                                  report=stored[REPORT].uri, results=store.uri(RESULTS),
                                  lineage=store.uri(LINEAGE),
                                  report_url=_presigned(store, REPORT))
            # This step's own time so far, so that the steps' compute a reader adds up
            # includes publishing (all but writing results.json itself).
            own = StepStatus(name=name, phase="Succeeded", started_at=clock.started_at,
                             duration_seconds=round(time.perf_counter() - began, 3),
                             message=f"published to {store.root_uri}")
            document = ResultsDocument(results=results, artifacts=artifacts,
                                       steps=[*steps, own], promotion=verdict)
            stored[RESULTS] = store.put_file(write_results_document(document, folder / RESULTS),
                                             RESULTS)
    return clock.stamp(ReportRecord(
        artifacts=artifacts, promotion=verdict,
        sha256={key: stored_object.sha256 for key, stored_object in stored.items()},
        message=f"published to {store.root_uri}; "
                f"{_decision_line(verdict, gates_set(promotion))}"))


def _publish_models(store: Any, compressed: Path, baseline: Path) -> dict[str, StoredObject]:
    """The compressed model and its baseline: ONNX files with their external data, or
    (text-generation) the files of two onnxruntime-genai folders."""
    if compressed.is_dir():
        return {**{key: store.put_file(path, key) for key, path in _model_files(compressed)},
                **{f"{GENAI_BASELINE}/{key}": store.put_file(path, f"{GENAI_BASELINE}/{key}")
                   for key, path in _model_files(baseline)}}
    return {MODEL: store.put_file(compressed, MODEL),
            BASELINE: store.put_file(baseline, BASELINE),
            **{data.name: store.put_file(data, data.name)
               for data in [*data_files(compressed), *data_files(baseline)]}}


def _model_files(folder: Path) -> list[tuple[str, Path]]:
    """A genai folder's files by name, none of them a name the report publishes itself."""
    own = {REPORT, LINEAGE, RESULTS}
    return [(path.name, path) for path in sorted(folder.iterdir())
            if path.is_file() and not path.is_symlink() and path.name not in own]


def _model_keys(compressed: Path) -> set[str]:
    """The published keys the model-changing step produced."""
    if compressed.is_dir():
        return {key for key, _ in _model_files(compressed)}
    return {MODEL, f"{MODEL}.data"}


def preprocessing_files(folder: Path | None) -> list[Path]:
    """The files fetch put in the working model's preprocessing folder (none when absent),
    by name; a name the report publishes itself is never among them."""
    if folder is None or not folder.is_dir():
        return []
    own = {MODEL, BASELINE, REPORT, LINEAGE, RESULTS}
    return sorted((path for path in folder.iterdir()
                   if path.is_file() and not path.is_symlink() and path.name not in own),
                  key=lambda path: path.name)


def _decision_line(verdict: PromotionVerdict, gated: bool) -> str:
    if not gated:
        return "no gates set"
    if verdict.decision == "Rejected":
        return "gates failed: " + "; ".join(verdict.reasons)
    return "gates passed"


def _presigned(store: Any, key: str) -> str | None:
    presign = getattr(store, "presigned_get", None)
    return None if presign is None else str(presign(key))


def _lineage(ledger: Ledger, stored: dict[str, StoredObject], report_name: str,
             model_keys: set[str]) -> Lineage:
    fetched = last_of(ledger, FetchRecord)
    changed = [record.name for record in ledger if isinstance(record, MODEL_CHANGING)]
    # Everything but the model and the report is as fetch wrote it: the baseline and the
    # preprocessing files.
    model_producer = (changed or [fetched.name])[-1]
    producers = {**dict.fromkeys(model_keys, model_producer), REPORT: report_name}
    return Lineage(
        inputs=fetched.lineage_inputs,
        steps=[LineageStep(name=record.name, seconds=round(record.seconds, 3),
                           message=record.message) for record in ledger],
        artifacts={key: LineageArtifact(uri=obj.uri, sha256=obj.sha256,
                                        size_bytes=obj.size_bytes,
                                        producer=producers.get(key, fetched.name))
                   for key, obj in stored.items()})
