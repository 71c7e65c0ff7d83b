"""Steps: how long each pipeline step takes and how often it fails.

The operator labels step durations by step and phase only (no namespace or job: bounded
cardinality), so this dashboard has no namespace or model filter.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, prometheus
from panels import RANGE, RATE, bar_gauge, new_dashboard, query, time_series

BUCKETS = "modelpress_step_duration_seconds_bucket"


def build() -> dashboard.Dashboard:
    return (new_dashboard("modelpress-steps", "modelpress / Steps",
                          "Duration of each pipeline step (fetch, prune, distill, quantize, "
                          "validate, benchmark-<pool>, report) across all jobs.")
            .with_panel(time_series(
                "Step duration p50", "Median compute time of finished steps.",
                [_quantile(0.5)], "s"))
            .with_panel(time_series(
                "Step duration p95", "95th percentile compute time of finished steps.",
                [_quantile(0.95)], "s"))
            .with_panel(bar_gauge(
                "Mean step duration in range", "Mean compute time per step over the range.",
                [query(f"sum by (step) (increase(modelpress_step_duration_seconds_sum[{RANGE}]))"
                       f" / sum by (step) (increase(modelpress_step_duration_seconds_count"
                       f"[{RANGE}]))", "{{step}}", instant=True)], "s"))
            .with_panel(bar_gauge(
                "Steps finished in range", "Finished steps per step and phase.",
                [query(f"sum by (step, phase) (increase(modelpress_step_duration_seconds_count"
                       f"[{RANGE}]))", "{{step}} {{phase}}", instant=True)], "none")))


def _quantile(quantile: float) -> prometheus.Dataquery:
    return query(f"histogram_quantile({quantile}, sum by (step, le) "
                 f"(rate({BUCKETS}[{RATE}])))", "{{step}}")
