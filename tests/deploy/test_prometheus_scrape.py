"""Integration: a real Prometheus scrapes the operator's metrics endpoint while the
operator's controller runs the digits example on its local backend (kfp.local); then every
dashboard query returns data for that job, and the alert rules evaluate cleanly on it."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_operator import LocalOperator, steady_state, without_created_series
from deploy_prometheus import SCRAPE_JOB, Prometheus, running_prometheus, serving
from deploy_promql import RULES, Expression, panel_expressions, substitute, variable_expressions

from modelpress.operator.metrics import OperatorMetrics

pytestmark = pytest.mark.e2e
RUN_TIMEOUT_S = 900.0
# Scrapes after the job finished, so every rate() window holds samples on both sides.
SCRAPES_AFTER_FINISH = 3


@dataclass(frozen=True)
class ScrapedJob:
    prometheus: Prometheus
    operator: LocalOperator
    started: float
    variables: dict[str, str]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedJob]:
    workdir = tmp_path_factory.mktemp("scrape")
    with without_created_series():
        metrics = OperatorMetrics()
        operator = LocalOperator.for_digits(metrics, workdir / "runs", workdir / "output")
        steady_state(metrics, operator.key)
        with serving(metrics.registry) as target, \
                running_prometheus(target, [RULES], workdir) as prometheus:
            prometheus.wait_for(f'up{{job="{SCRAPE_JOB}"}} == 1', timeout_s=30)
            started = time.time()
            operator.run_to_the_end(RUN_TIMEOUT_S)
            _assert_succeeded(operator, workdir / "runs")
            finished = time.time()
            prometheus.wait_for(f"timestamp(modelpress_compression_ratio) > {finished}", 30)
            time.sleep(SCRAPES_AFTER_FINISH)
            key = operator.key
            yield ScrapedJob(prometheus, operator, started,
                             {"namespace": key.namespace, "model": key.model,
                              "datasource": "prometheus"})


def _assert_succeeded(operator: LocalOperator, runs: Path) -> None:
    logs = "\n".join(path.read_text(errors="replace")[-2000:]
                     for path in runs.glob("*/worker.log"))
    assert operator.status.get("phase") == "Succeeded", (operator.status, operator.events, logs)


def _values(result: list[dict[str, Any]]) -> list[float]:
    samples = [series["value"] for series in result if "value" in series]
    samples += [point for series in result for point in series.get("values", [])]
    return [float(value) for _, value in samples]


@pytest.mark.parametrize("expression", panel_expressions(), ids=lambda e: e.where)
def test_every_panel_query_returns_data_for_the_job(scraped: ScrapedJob,
                                                    expression: Expression) -> None:
    promql = substitute(expression.promql, scraped.variables)
    if expression.instant:
        result = scraped.prometheus.query(promql)
    else:
        result = scraped.prometheus.query_range(promql, scraped.started, time.time())
    assert any(math.isfinite(value) for value in _values(result)), \
        f"{expression.where}: {promql} returned no number: {result}"


@pytest.mark.parametrize("expression", variable_expressions(), ids=lambda e: e.where)
def test_every_variable_offers_the_job(scraped: ScrapedJob, expression: Expression) -> None:
    assert expression.label is not None
    selector = substitute(expression.promql, scraped.variables)
    offered = scraped.prometheus.api(f"label/{expression.label}/values",
                                     **{"match[]": selector})
    assert scraped.variables[expression.label] in offered, (selector, offered)


def test_rules_evaluate_and_a_healthy_run_raises_no_alert(scraped: ScrapedJob) -> None:
    groups = scraped.prometheus.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["name"] for rule in rules} >= {
        "ModelpressJobFailed", "ModelpressPromotionRejections", "ModelpressOperatorDown",
        "ModelpressOperatorAbsent", "ModelpressReconcileErrors"}
    assert all(rule["health"] == "ok" and rule["lastEvaluation"] != "0001-01-01T00:00:00Z"
               for rule in rules), rules
    assert scraped.prometheus.api("alerts")["alerts"] == []


def test_the_promotion_decision_reached_prometheus(scraped: ScrapedJob) -> None:
    decision = scraped.operator.status["promotion"]["decision"]
    result = scraped.prometheus.query(
        f'modelpress_promotion_decisions_total{{decision="{decision}"}} > 0')
    assert [series["metric"]["namespace"] for series in result] == \
        [scraped.variables["namespace"]]
