"""What the modelpress dashboards share: the variables, the data source and panel shapes.

Every panel queries the dashboard's `datasource` variable, so one JSON works against any
Prometheus a Grafana knows. Namespace and model filters are regex matchers (`=~`) because
the variables are multi-value with an "All" option of `.*`.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
NAMESPACE = 'namespace=~"$namespace"'
MODEL = 'model=~"$model"'
TAGS = ["modelpress"]
# Grafana turns $__rate_interval into at least four scrape intervals, so rate() always
# has two samples; $__range is the dashboard's time range.
RATE = "$__rate_interval"
RANGE = "$__range"
ALL = ".*"
Queries = list[cogbuilder.Builder[cogvariants.Dataquery]]


def new_dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (dashboard.Dashboard(title).uid(uid).description(description).tags(TAGS)
            .editable().refresh("30s").time("now-6h", "now").timezone("browser")
            .with_variable(datasource_variable()))


def datasource_variable() -> dashboard.DatasourceVariable:
    return (dashboard.DatasourceVariable("datasource").label("Data source")
            .type("prometheus"))


def namespace_variable() -> dashboard.QueryVariable:
    return _label_variable("namespace", "Namespace", "label_values(modelpress_jobs, namespace)")


def model_variable() -> dashboard.QueryVariable:
    """Models are the jobs' `spec.model.uri`; only jobs with results carry them."""
    return _label_variable(
        "model", "Model", f"label_values(modelpress_compression_ratio{{{NAMESPACE}}}, model)")


def _label_variable(name: str, label: str, query: str) -> dashboard.QueryVariable:
    return (dashboard.QueryVariable(name).label(label).query(query).datasource(DATASOURCE)
            .multi(True).include_all(True).all_value(ALL)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC))


def query(expr: str, legend: str = "", ref_id: str = "A",
          instant: bool = False) -> prometheus.Dataquery:
    target = (prometheus.Dataquery().expr(expr).ref_id(ref_id).datasource(DATASOURCE)
              .legend_format(legend or "__auto"))
    return target.instant() if instant else target.range()


def time_series(title: str, description: str, targets: Queries,
                unit: str, width: int = 12) -> timeseries.Panel:
    return (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets(targets).unit(unit).span(width).height(8)
            .line_width(2).fill_opacity(10).point_size(5)
            .show_points(common.VisibilityMode.AUTO))


def single_stat(title: str, description: str, target: prometheus.Dataquery, unit: str,
                width: int = 6) -> stat.Panel:
    return (stat.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets([target]).unit(unit).span(width).height(5)
            .graph_mode(common.BigValueGraphMode.NONE)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"])))


def bar_gauge(title: str, description: str, targets: Queries, unit: str,
              width: int = 12) -> bargauge.Panel:
    return (bargauge.Panel().title(title).description(description).datasource(DATASOURCE)
            .targets(targets).unit(unit).span(width).height(8)
            .orientation(common.VizOrientation.HORIZONTAL)
            .display_mode(common.BarGaugeDisplayMode.GRADIENT)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"])))
