"""The `governance_report` asset: every monitored period's live and offline figures, per version, in
one table and one chart, in the Dagster UI and as MLflow artifacts of a `governance_report` run.

It sits in the monitoring group: `monitoring_job` refreshes it after a period's monitors, and under the
daemon `monitoring_automation` does once a period's live performance or drift is recomputed. It reads
every period, so materializing it alone shows the whole history.
"""

import base64
import json

import dagster as dg
import polars as pl
from mlflow.exceptions import MlflowException

from mlops_assets.alerts import AlertSink
from mlops_assets.contract import PERIOD
from mlops_assets.lake import Lake
from mlops_assets.monitoring.performance import DELIVERIES, SHADOW, join_ground_truth
from mlops_assets.project.spec import Project
from mlops_assets.registry import governance_report as report
from mlops_assets.registry import registry
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.tracking import MlflowResource, log_bytes

ARTIFACTS = "governance"
# Only reports that exist for a served period start it: a retrain or a new log alone has nothing to add.
REFRESH = (
    dg.AutomationCondition.any_deps_updated().allow(dg.AssetSelection.assets("model_performance", "drift_report"))
    .since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("a period's performance or drift report updated")


def _joined(store: Lake, spec: Project, period: str) -> pl.DataFrame:
    """A period's served predictions with the labels that arrived (none yet: every label null)."""
    served = store.read_batches("prediction_log", [period])
    if period in store.available_periods("ground_truth"):
        truth = store.read_batches("ground_truth", [period])
        return join_ground_truth(served, truth, list(spec.examples.id), spec.label.name)
    return served.with_columns(pl.lit(None).alias(spec.label.name), pl.lit(0).alias(DELIVERIES))


def _drift(store: Lake, period: str) -> dict | None:
    path = store.root / "reports" / "drift" / f"{period}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _version_tags(tracking: MlflowResource, name: str) -> dict[str, dict[str, str]]:
    try:
        found = tracking.client().search_model_versions(f"name='{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {str(v.version): dict(v.tags) for v in found}


def _log_to_mlflow(tracking: MlflowResource, spec: Project, run_id: str, files: dict[str, bytes | str]) -> str:
    """A `governance_report` run in the project's experiment holding the chart and tables; its URL."""
    experiment_id = tracking.configure()
    client = tracking.client()
    run = client.create_run(experiment_id, run_name="governance_report",
                            tags={"mlops/kind": "governance_report", "model": spec.model_name, "dagster_run_id": run_id})
    for name, data in files.items():
        log_bytes(run.info.run_id, data, f"{ARTIFACTS}/{name}")
    client.set_terminated(run.info.run_id)
    return tracking.run_url(experiment_id, run.info.run_id)


@dg.asset(group_name="monitoring", deps=["prediction_log", "ground_truth", "model_performance", "drift_report"],
          automation_condition=REFRESH, kinds={"mlflow", "matplotlib"})
def governance_report(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                      mlflow_tracking: MlflowResource, alerts: AlertSink) -> dg.MaterializeResult:
    """Live vs offline metrics per period and version, worst slice, drift, alerts, alias and review history."""
    store, spec = lake.get(), project.get().spec
    metric, client = spec.primary_metric, mlflow_tracking.client()
    tags = _version_tags(mlflow_tracking, spec.model_name)
    offline = {v: report.offline_metrics(t) for v, t in tags.items()}
    periods = store.available_periods("prediction_log")
    rows = [row for p in periods for row in report.period_rows(_joined(store, spec, p), spec, p, offline)]
    counts = report.alert_counts(alerts.read())
    table = report.report_table(rows, {p: d for p in periods if (d := _drift(store, p))}, counts)
    if table.height == 0:
        raise dg.Failure("no served predictions in any period yet: replay or serve a period and run monitoring_job "
                         "first (mlops-assets replay)")
    history = registry.alias_history(client, spec.model_name)
    versions = report.version_table(tags, history, metric)
    png = report.trend_png(table, metric)
    table_md = report.markdown(table, report.summary_columns(metric))
    versions_md = report.markdown(versions, versions.columns)
    url = _log_to_mlflow(mlflow_tracking, spec, context.run.run_id, {
        "trend.png": png, "report.csv": table.write_csv(), "versions.csv": versions.write_csv(),
        "alerts.csv": counts.write_csv(), "report.md": f"{table_md}\n\n{versions_md}\n"})
    latest = table.filter((pl.col(PERIOD) == table[PERIOD].max()) & (pl.col("arm") != SHADOW))
    image = base64.b64encode(png).decode()
    return dg.MaterializeResult(metadata={
        "periods": dg.MetadataValue.json(sorted(table[PERIOD].unique().to_list())),
        "versions_served": dg.MetadataValue.json(sorted(table["version"].unique().to_list(), key=int)),
        "champion_version": registry.alias_version(client, spec.model_name, registry.CHAMPION) or "none",
        f"latest_live_{metric}": float(latest[f"live_{metric}"].mean() or float("nan")),
        "trend": dg.MetadataValue.md(f"![live {metric} by period and version](data:image/png;base64,{image})"),
        "report": dg.MetadataValue.md(table_md),
        "versions": dg.MetadataValue.md(versions_md),
        "alerts": dg.MetadataValue.md(report.markdown(counts, counts.columns)),
        "alias_history": dg.MetadataValue.md(registry.history_markdown(history)),
        "mlflow_run": dg.MetadataValue.url(url),
    })
