"""The text-generation parts of report.html: quality, speed per pool, greedy generations
side by side with the first divergent token marked, and every auto candidate's figures."""

from __future__ import annotations

import html

from modelpress.api import Candidate, Generation, PoolBenchmark, Results

DIVERGENCE_STYLE = "background:#fbb;font-weight:bold"


def llm_sections(results: Results) -> str:
    """Empty for the other tasks."""
    figures = results.text_generation
    if figures is None:
        return ""
    quality = (f"<h2>Text generation</h2><p>accuracyDrop = 1 - top-1 agreement with the fp32 "
               f"model, teacher-forced on {figures.scored_tokens:,} held-out tokens. Speedup is "
               "decode tokens/s (KV cache) against the fp32 onnxruntime-genai folder published "
               "under <code>baseline/</code>, same runtime, threads and prompt tokens.</p>"
               "<table><tr><th></th><th>baseline</th><th>compressed</th></tr>"
               f"<tr><td>perplexity</td><td>{figures.baseline_perplexity:.4f}</td>"
               f"<td>{figures.compressed_perplexity:.4f} "
               f"({(results.perplexity_increase or 0.0):+.2%})</td></tr>"
               f"<tr><td>top-1 agreement</td><td>1.0000</td>"
               f"<td>{figures.top1_agreement:.4f}</td></tr></table>")
    pools = "".join(_pool_rows(pool) for pool in results.benchmarks)
    speed = ("<table><tr><th>pool</th><th>decode tokens/s (baseline / compressed)</th>"
             "<th>prefill p50 ms by prompt tokens (baseline / compressed)</th>"
             f"<th>peak RSS MB (baseline / compressed)</th></tr>{pools}</table>")
    generations = "".join(_generation_rows(generation) for generation in figures.generations)
    side_by_side = ("<h3>Greedy generations</h3><p>The first token where the compressed model "
                    f'departs from the baseline is <span style="{DIVERGENCE_STYLE}">marked'
                    "</span>.</p><table><tr><th>prompt</th><th>baseline</th><th>compressed</th>"
                    f"<th>first divergence</th></tr>{generations}</table>")
    return quality + speed + side_by_side


def _pool_rows(pool: PoolBenchmark) -> str:
    figures = pool.text_generation
    if figures is None:
        return (f"<tr><td>{html.escape(pool.pool)}</td><td colspan=3>unavailable: "
                f"{html.escape(pool.reason or '')}</td></tr>")
    decode = figures.decode_tokens_per_second
    prefill = ", ".join(f"{length}: {sides['baseline']:.2f} / {sides['compressed']:.2f}"
                        for length, sides in figures.prefill_ms.items())
    memory = figures.peak_rss_bytes
    return (f"<tr><td>{html.escape(pool.pool)} ({pool.threads} thread(s))</td>"
            f"<td>{decode['baseline']:.1f} / {decode['compressed']:.1f} "
            f"({figures.decode_speedup:.2f}x)</td><td>{prefill}</td>"
            f"<td>{memory['baseline'] / 1e6:.0f} / {memory['compressed'] / 1e6:.0f}</td></tr>")


def marked(tokens: list[str], divergence: int | None) -> str:
    """The tokens as HTML, the one at `divergence` marked."""
    return "".join(f'<span style="{DIVERGENCE_STYLE}">{html.escape(token)}</span>'
                   if index == divergence else html.escape(token)
                   for index, token in enumerate(tokens))


def _generation_rows(generation: Generation) -> str:
    where = generation.first_divergence
    return (f"<tr><td>{html.escape(generation.prompt)}</td>"
            f"<td>{marked(generation.baseline_tokens, where)}</td>"
            f"<td>{marked(generation.compressed_tokens, where)}</td>"
            f"<td>{'identical' if where is None else f'token {where}'}</td></tr>")


def _figure(value: float | None, shown: str) -> str:
    return "" if value is None else format(value, shown)


def llm_candidate_table(candidates: list[Candidate]) -> str:
    """Every auto candidate's agreement drop, perplexity increase, decode speed and bytes
    (measured on the calibration text, not the eval text above), and why it won or lost."""
    rows = "".join(
        f"<tr><td>{'&#9733; ' if c.chosen else ''}{html.escape(c.name)}</td>"
        f"<td>{_figure(c.accuracy_drop, '.4f')}</td>"
        f"<td>{_figure(c.perplexity_increase, '+.2%')}</td>"
        f"<td>{_figure(c.tokens_per_second, '.1f')}</td><td>{c.size_bytes or ''}</td>"
        f"<td>{html.escape(c.reason)}</td></tr>" for c in candidates)
    if not rows:
        return ""
    return ("<h2>Candidates</h2><p>Measured on the calibration text.</p><table><tr>"
            "<th>candidate</th><th>1 - top-1 agreement</th><th>perplexity increase</th>"
            f"<th>decode tokens/s</th><th>bytes</th><th>verdict</th></tr>{rows}</table>")
