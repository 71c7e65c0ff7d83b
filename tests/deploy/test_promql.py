"""Every PromQL expression in the dashboards and alert rules parses and reads only series
the operator exports (checked against its real /metrics exposition)."""

from __future__ import annotations

import pytest
from deploy_operator import exported_series, metrics_after_a_finished_job
from deploy_promql import PROMETHEUS_SERIES, Expression, all_expressions, metric_names, substitute

ANY = {"namespace": ".*", "model": ".*", "datasource": "prometheus"}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_series(metrics_after_a_finished_job())


def test_the_operator_exports_the_documented_series(exported: set[str]) -> None:
    """DESIGN §4's set, as the exposition names them (histograms in three series)."""
    histograms = {f"modelpress_{name}_seconds_{suffix}" for name in ("job_duration",
                                                                      "step_duration")
                  for suffix in ("bucket", "sum", "count")}
    assert exported >= histograms | {
        "modelpress_jobs", "modelpress_compression_ratio", "modelpress_speedup_ratio",
        "modelpress_accuracy_drop_ratio", "modelpress_model_size_bytes",
        "modelpress_promotion_decisions_total", "modelpress_reconcile_errors_total"}


@pytest.mark.parametrize("expression", all_expressions(), ids=lambda e: e.where)
def test_expression_parses_and_reads_only_exported_series(expression: Expression,
                                                          exported: set[str]) -> None:
    names = metric_names(substitute(expression.promql, ANY))
    assert names, f"{expression.where} reads no metric"
    assert names <= exported | PROMETHEUS_SERIES, \
        f"{expression.where} reads {sorted(names - exported - PROMETHEUS_SERIES)}"


def test_every_metric_the_operator_exports_is_on_a_dashboard(exported: set[str]) -> None:
    def family(name: str) -> str:
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and f"{name.removesuffix(suffix)}_bucket" in exported:
                return name.removesuffix(suffix)
        return name

    used = set().union(*(metric_names(substitute(e.promql, ANY)) for e in all_expressions()))
    unused = {family(name) for name in exported} - {family(name) for name in used}
    assert not unused, f"exported but shown nowhere: {sorted(unused)}"
