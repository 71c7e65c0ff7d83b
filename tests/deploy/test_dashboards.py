"""The Grafana dashboards: generated from dashboards/ and committed as generated, each
with a data source variable every panel uses, and namespace and model filters where the
metrics carry those labels."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

import pytest
from deploy_promql import ROOT, dashboards, metric_names, substitute

GENERATOR = ROOT / "dashboards" / "generate.py"
FILTERS = {"overview": ["namespace"], "compression": ["namespace", "model"], "steps": []}
# The operator's series that carry each filter label (operator/metrics.py).
LABELLED = {
    "namespace": {"modelpress_jobs", "modelpress_job_duration_seconds_bucket",
                  "modelpress_job_duration_seconds_sum", "modelpress_job_duration_seconds_count",
                  "modelpress_compression_ratio", "modelpress_speedup_ratio",
                  "modelpress_accuracy_drop_ratio", "modelpress_model_size_bytes",
                  "modelpress_promotion_decisions_total", "modelpress_reconcile_errors_total"},
    "model": {"modelpress_compression_ratio", "modelpress_speedup_ratio",
              "modelpress_accuracy_drop_ratio", "modelpress_model_size_bytes"},
}
ANY = {"namespace": ".*", "model": ".*"}


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    # The generator imports its sibling modules from its own folder (sys.path[0]), which
    # the suite's PYTHONSAFEPATH would remove.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    checked = subprocess.run([sys.executable, str(GENERATOR), "--check"],
                             capture_output=True, text=True, timeout=120, env=environment)
    assert checked.returncode == 0, checked.stderr


def test_the_generator_is_pinned_to_grafana_11() -> None:
    assert version("grafana-foundation-sdk").split("!")[-1].startswith("11.")
    assert all(dashboard["schemaVersion"] >= 39 for dashboard in dashboards().values())


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_variables_and_data_source(name: str) -> None:
    dashboard = dashboards()[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", *FILTERS[name]]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for label in FILTERS[name]:
        assert variables[label]["multi"] and variables[label]["includeAll"]
        assert variables[label]["datasource"]["uid"] == "${datasource}"
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            reads = metric_names(substitute(target["expr"], ANY))
            for label in FILTERS[name]:
                if reads <= LABELLED[label]:  # the filter applies: it must be used
                    assert f"${label}" in target["expr"], (panel["title"], label)


def test_uids_and_titles_are_unique() -> None:
    found = dashboards()
    assert sorted(d["uid"] for d in found.values()) == sorted(f"modelpress-{n}" for n in found)
    assert len({d["title"] for d in found.values()}) == len(found)
