"""Every PromQL expression the project ships (dashboard panels and variables, alert rules),
and the metric names each one reads."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "charts" / "modelpress" / "files" / "dashboards"
RULES = ROOT / "charts" / "modelpress" / "files" / "modelpress.rules.yaml"
# Grafana's built-in intervals, as a 1 s scrape interval and an hour's dashboard make them.
GRAFANA_INTERVALS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}
# Made by Prometheus for every scrape target, not by the operator.
PROMETHEUS_SERIES = frozenset({"up"})
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True)
class Expression:
    where: str  # e.g. "overview.json panel 'Run duration' B"
    promql: str  # as shipped: Grafana variables still in place
    instant: bool = True
    label: str | None = None  # a query variable's: the label whose values it lists


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(DASHBOARDS.glob("*.json"))}


def panel_expressions() -> list[Expression]:
    return [Expression(f"{name}.json panel {panel['title']!r} {target['refId']}",
                       target["expr"], instant=bool(target.get("instant")))
            for name, dashboard in dashboards().items()
            for panel in dashboard["panels"]
            for target in panel.get("targets", [])]


def variable_expressions() -> list[Expression]:
    """The series selectors inside the query variables' `label_values(selector, label)`."""
    found = []
    for name, dashboard in dashboards().items():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            match = _LABEL_VALUES.match(variable["query"])
            assert match, f"{name}.json variable {variable['name']}: not label_values(...)"
            found.append(Expression(f"{name}.json variable {variable['name']}",
                                    match["selector"], label=match["label"]))
    return found


def rule_expressions() -> list[Expression]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [Expression(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
            for group in groups for rule in group["rules"]]


def all_expressions() -> list[Expression]:
    return [*panel_expressions(), *variable_expressions(), *rule_expressions()]


def substitute(promql: str, variables: Mapping[str, str]) -> str:
    """`promql` as Grafana sends it: built-in intervals and dashboard variables replaced."""
    for name, value in GRAFANA_INTERVALS.items():
        promql = promql.replace(name, value)

    def value_of(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in variables, f"no value for ${name} in {promql}"
        return variables[name]

    return _VARIABLE.sub(value_of, promql)


def metric_names(promql: str) -> set[str]:
    """The metric names an expression selects; a selector without a literal name fails."""
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {promql}"
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(promql), visit)
    return names
