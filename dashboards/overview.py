"""Overview: how many jobs are where, how often they succeed, how long runs take, and
whether the operator itself is healthy."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, prometheus
from panels import (
    NAMESPACE,
    RANGE,
    RATE,
    bar_gauge,
    namespace_variable,
    new_dashboard,
    query,
    single_stat,
    time_series,
)

# modelpress_jobs counts the jobs the operator knows now (deleted jobs drop out), so the
# success rate is over the finished jobs that still exist.
SUCCESS_RATE = (f'sum(modelpress_jobs{{{NAMESPACE}, phase="Succeeded"}})'
                f' / sum(modelpress_jobs{{{NAMESPACE}, phase=~"Succeeded|Failed"}})')


def build() -> dashboard.Dashboard:
    return (new_dashboard("modelpress-overview", "modelpress / Overview",
                          "CompressionJobs by phase, success rate, run durations and the "
                          "operator's health.")
            .with_variable(namespace_variable())
            .with_panel(single_stat(
                "Operator up", "Whether Prometheus scrapes the operator (job "
                "modelpress-operator).", query('sum(up{job="modelpress-operator"})',
                                               instant=True), "none"))
            .with_panel(single_stat(
                "Success rate", "Succeeded / (Succeeded + Failed) over the jobs that exist.",
                query(SUCCESS_RATE, instant=True), "percentunit"))
            .with_panel(single_stat(
                "Runs finished in range", "Runs that ended (either way) in the time range.",
                query(f"sum(increase(modelpress_job_duration_seconds_count{{{NAMESPACE}}}"
                      f"[{RANGE}]))", instant=True), "none"))
            .with_panel(single_stat(
                "Reconcile errors in range", "Reconciles that failed and were retried.",
                query(f"sum(increase(modelpress_reconcile_errors_total{{{NAMESPACE}}}"
                      f"[{RANGE}]))", instant=True), "none"))
            .with_panel(bar_gauge(
                "Jobs by phase", "CompressionJobs known to the operator, by phase.",
                [query(f"sum by (phase) (modelpress_jobs{{{NAMESPACE}}})", "{{phase}}",
                       instant=True)], "none"))
            .with_panel(time_series(
                "Jobs by phase over time", "How the job population moves through phases.",
                [query(f"sum by (phase) (modelpress_jobs{{{NAMESPACE}}})", "{{phase}}")],
                "none"))
            .with_panel(time_series(
                "Run duration", "Wall time of finished runs, start to end (p50, p95).",
                [_duration_quantile(0.5, "A"), _duration_quantile(0.95, "B")], "s"))
            .with_panel(time_series(
                "Runs finished", "Runs ending per phase, per rate interval.",
                [query(f"sum by (phase) (increase(modelpress_job_duration_seconds_count"
                       f"{{{NAMESPACE}}}[{RATE}]))", "{{phase}}")], "none"))
            .with_panel(time_series(
                "Reconcile errors", "Failed reconciles per second, by error type.",
                [query(f"sum by (error) (rate(modelpress_reconcile_errors_total"
                       f"{{{NAMESPACE}}}[{RATE}]))", "{{error}}")], "ops", width=24)))


def _duration_quantile(quantile: float, ref_id: str) -> prometheus.Dataquery:
    return query(f"histogram_quantile({quantile}, sum by (le) (rate("
                 f"modelpress_job_duration_seconds_bucket{{{NAMESPACE}}}[{RATE}])))",
                 f"p{round(quantile * 100)}", ref_id)
