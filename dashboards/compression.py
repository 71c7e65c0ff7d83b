"""Compression: what each job achieved (ratio, speedup per pool, accuracy drop, sizes) and
what the promotion gate decided, per namespace and model."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from panels import (
    MODEL,
    NAMESPACE,
    RANGE,
    bar_gauge,
    model_variable,
    namespace_variable,
    new_dashboard,
    query,
    time_series,
)

JOB = f"{{{NAMESPACE}, {MODEL}}}"
JOB_LEGEND = "{{namespace}}/{{job}}"


def build() -> dashboard.Dashboard:
    return (new_dashboard("modelpress-compression", "modelpress / Compression",
                          "Compression ratio, speedup per benchmark pool, accuracy drop and "
                          "promotion decisions of CompressionJobs, per namespace and model.")
            .with_variable(namespace_variable())
            .with_variable(model_variable())
            .with_panel(bar_gauge(
                "Compression ratio", "Baseline bytes / compressed bytes, per job.",
                [query(f"modelpress_compression_ratio{JOB}", JOB_LEGEND, instant=True)],
                "suffix:×", width=8))
            .with_panel(bar_gauge(
                "Speedup per pool", "Baseline latency / compressed latency at the largest "
                "batch size, per job and benchmark pool (pools that could not run are absent).",
                [query(f"modelpress_speedup_ratio{JOB}", "{{job}} on {{pool}}", instant=True)],
                "suffix:×", width=8))
            .with_panel(bar_gauge(
                "Accuracy drop", "Baseline metric minus the compressed model's (accuracy, or "
                "cosine to the original for embeddings).",
                [query(f"modelpress_accuracy_drop_ratio{JOB}", JOB_LEGEND, instant=True)],
                "percentunit", width=8))
            .with_panel(time_series(
                "Compression ratio by model", "Mean ratio over the jobs of each model.",
                [query(f"avg by (namespace, model) (modelpress_compression_ratio{JOB})",
                       "{{namespace}} {{model}}")], "suffix:×"))
            .with_panel(time_series(
                "Speedup by model and pool", "Mean speedup over the jobs of each model.",
                [query(f"avg by (namespace, model, pool) (modelpress_speedup_ratio{JOB})",
                       "{{model}} on {{pool}}")], "suffix:×"))
            .with_panel(bar_gauge(
                "Model size", "Bytes on disk: the fp32 ONNX baseline and the compressed model.",
                [query(f"modelpress_model_size_bytes{JOB}", "{{job}} {{variant}}",
                       instant=True)], "bytes"))
            .with_panel(bar_gauge(
                "Promotion decisions in range", "Gate decisions per namespace, outcome and "
                "reason (decisions carry no model label).",
                [query(f"sum by (namespace, decision, reason) (increase("
                       f"modelpress_promotion_decisions_total{{{NAMESPACE}}}[{RANGE}]))",
                       "{{namespace}} {{decision}} ({{reason}})", instant=True)], "none")))
