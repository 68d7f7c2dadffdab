"""`serving_efficiency`: a period's serving latency, throughput, errors and versions, checked against the
project's `monitoring.serving_budget`; a breach fails the check and goes to the alert log (and webhook).

It reads the service's prediction log directly (by the day folders the period covers) and, being about
when requests were served, refreshes hourly for the running period rather than on new labels.
"""

from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from mlops_assets.alerts import AlertSink
from mlops_assets.evaluation.plots import image_markdown, lines_png
from mlops_assets.monitoring.efficiency import Efficiency, judge_budget, markdown, summarise
from mlops_assets.partitions import period_bounds, period_label, period_partitions
from mlops_assets.project.spec import Project
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.serving.predlog import LOG_FOLDER, read_prediction_log

ASSET, CHECK = "serving_efficiency", "serving_within_budget"


def period_log(state: Path, start: datetime, end: datetime) -> pl.DataFrame:
    """The prediction log's records of the UTC day folders [start, end) covers."""
    days = ((end - timedelta(microseconds=1)).date() - start.date()).days + 1
    frames = [read_prediction_log(state, start.date() + timedelta(days=i)) for i in range(days)]
    frames = [f for f in frames if f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def latency_plot(summary: Efficiency) -> str | None:
    """p50 and p99 per route over the period, as markdown with the PNG inline."""
    timeline = summary.timeline
    if timeline.height == 0:
        return None
    times = timeline["at"].unique().sort()
    series: dict[str, list[float]] = {}
    for endpoint in timeline["endpoint"].unique().sort():
        rows = dict(timeline.filter(pl.col("endpoint") == endpoint).select("at", "p99_ms").iter_rows())
        mids = dict(timeline.filter(pl.col("endpoint") == endpoint).select("at", "p50_ms").iter_rows())
        series[f"{endpoint} p99"] = [float(rows.get(t) or float("nan")) for t in times]
        series[f"{endpoint} p50"] = [float(mids.get(t) or float("nan")) for t in times]
    png = lines_png([f"{t:%m-%d %H:%M}" for t in times], series, "server-side latency (ms)",
                    "Latency per route over the period")
    return image_markdown(png, "serving latency")


def serving_efficiency_asset(project: Project) -> dg.AssetsDefinition:
    @dg.asset(name=ASSET, group_name="monitoring", partitions_def=period_partitions(project), kinds={"polars"},
              automation_condition=dg.AutomationCondition.on_cron("0 * * * *"),
              check_specs=[dg.AssetCheckSpec(CHECK, asset=ASSET)])
    def serving_efficiency(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                           alerts: AlertSink) -> dg.MaterializeResult:
        """Requests, throughput (average and busiest minute), p50/p95/p99 latency per route, answers by status
        class and predictions per model version of the requests the service answered in the period."""
        spec = project.get().spec
        start, end = period_bounds(context.partition_key, spec.granularity)
        period = period_label(context.partition_key, spec.granularity)
        root = lake.get().root
        summary = summarise(period_log(root, start, end), start, end)
        budget = spec.monitoring.serving_budget
        verdict = judge_budget(summary, budget.p99_ms, budget.error_rate)
        if not verdict.passed:
            alerts.send(verdict.severity, f"monitor:{ASSET}", f"{ASSET} {period}: {verdict.message}",
                        {"period": period, "check": CHECK, **verdict.figures})
        plot = latency_plot(summary)
        metadata = {**summary.figures(), "busiest_minute": summary.busiest_minute or "",
                    "summary": dg.MetadataValue.md(markdown(summary)),
                    "routes": dg.MetadataValue.json(summary.routes.to_dicts()),
                    "status_classes": dg.MetadataValue.json(summary.statuses.to_dicts()),
                    "model_versions": dg.MetadataValue.json(summary.versions.to_dicts()),
                    "log": dg.MetadataValue.path(str(root / LOG_FOLDER)),
                    **({"latency_plot": dg.MetadataValue.md(plot)} if plot else {})}
        return dg.MaterializeResult(metadata=metadata, check_results=[dg.AssetCheckResult(
            asset_key=ASSET, check_name=CHECK, passed=verdict.passed, severity=dg.AssetCheckSeverity.ERROR,
            description=verdict.message, metadata=verdict.figures)])

    return serving_efficiency
