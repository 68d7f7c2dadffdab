"""Continuous monitoring, one partition per month: served traffic vs training, labels vs predictions.

Every report carries a check (WARN or ERROR by the task's thresholds); a failing check is also
written to the alert log (and webhook), where the retraining sensor looks for it.
"""

import json

import dagster as dg
import polars as pl

from mlops_assets.alerts import AlertSink
from mlops_assets.features.pit import point_in_time_join
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.lake import Lake, read_training_set
from mlops_assets.metadata import frame_metadata
from mlops_assets.monitoring import ab_test, drift, performance, skew
from mlops_assets.monitoring.checks import Verdict, judge_drift, judge_performance, judge_skew
from mlops_assets.monitoring.replay import TRUTH_KEYS
from mlops_assets.monitoring.replay import ground_truth as truth_labels
from mlops_assets.monitoring.serving_frame import flatten_log
from mlops_assets.partitions import month_of, monthly_partitions
from mlops_assets.registry.registry import CHAMPION, alias_version
from mlops_assets.resources import LakeResource, TaskResource
from mlops_assets.serving.predlog import read_prediction_log
from mlops_assets.tracking import MlflowResource, load_tabular_model
from mlops_assets.training.dataset import SPLIT

GROUP = "monitoring"
# A month's reports refresh when that month's prediction log or labels update, for any month (not
# only the latest window, as `eager()` would), and not when a retrain rebuilds the training set or
# the feature views: that would re-run every month's reports.
REFRESH_ON_NEW_DATA = (
    dg.AutomationCondition.any_deps_updated()
    .ignore(dg.AssetSelection.assets("training_set", *FEATURE_VIEWS))
    .since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("month's log or labels updated")

monitoring_automation = dg.AutomationConditionSensorDefinition(
    "monitoring_automation", target=dg.AssetSelection.groups(GROUP), default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Refreshes a month's drift, skew, performance and A/B reports when its log or labels land.",
)


def _check(asset: str, name: str, verdict: Verdict, alerts: AlertSink, month: str) -> dg.AssetCheckResult:
    if not verdict.passed:
        alerts.send(verdict.severity, f"monitor:{asset}", f"{asset} {month}: {verdict.message}",
                    {"month": month, "check": name, **verdict.figures})
    severity = dg.AssetCheckSeverity.ERROR if verdict.severity == "ERROR" else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(asset_key=asset, check_name=name, passed=verdict.passed, severity=severity,
                               description=verdict.message, metadata=verdict.figures)


def _served(store: Lake, month: str) -> pl.DataFrame:
    served = store.read_batches("prediction_log", [month])
    if served.height == 0:
        raise dg.Failure(f"no served predictions for {month}: replay the month first (mlops-assets replay)")
    return served


@dg.asset(group_name=GROUP, partitions_def=monthly_partitions, kinds={"polars"})
def prediction_log(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """The service's prediction log for the month, one row per served prediction."""
    store, month = lake.get(), month_of(context.partition_key)
    served = flatten_log(read_prediction_log(store.root), month)
    if served.height == 0:
        raise dg.Failure(f"the prediction log has no served predictions for {month}")
    path = store.write_batch("prediction_log", served, month)
    latency = served["latency_ms"]
    return dg.MaterializeResult(metadata={
        **frame_metadata(served.select("request_id", "prediction_time", "probability", "arm", "model_version")),
        "arms": dg.MetadataValue.json(dict(served.group_by("arm").len().iter_rows())),
        "model_versions": dg.MetadataValue.json(dict(served.group_by("model_version").len().iter_rows())),
        "latency_p50_ms": float(latency.quantile(0.5)), "latency_p99_ms": float(latency.quantile(0.99)),
        "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name=GROUP, partitions_def=monthly_partitions, deps=["flights"], kinds={"polars"})
def ground_truth(context: dg.AssetExecutionContext, lake: LakeResource, task: TaskResource) -> dg.MaterializeResult:
    """Arrivals of the month as labels; they land after the predictions, as in life."""
    store, month = lake.get(), month_of(context.partition_key)
    labels = truth_labels(store.read_batches("flights", [month]), task.get())
    store.write_batch("ground_truth", labels, month)
    return dg.MaterializeResult(metadata={**frame_metadata(labels), "delayed_share": float(labels["is_delayed"].mean())})


NOT_DRIFT_FEATURES = ("month", "prediction_time", "scheduled_departure", "flight", "tailnum")


def _reference(frame: pl.DataFrame, tracking: MlflowResource, model_name: str, features: list[str]) -> pl.DataFrame:
    """A fixed sample of the training rows, scored by the champion (prediction drift baseline)."""
    sample = drift.reference_sample(frame.filter(pl.col(SPLIT) == "train"))
    version = alias_version(tracking.client(), model_name, CHAMPION)
    if version is None:
        return sample.select(features)
    scores = load_tabular_model(f"models:/{model_name}/{version}").predict(sample.to_pandas())
    return sample.select(features).with_columns(probability=pl.Series(scores))


@dg.asset(group_name=GROUP, partitions_def=monthly_partitions, deps=["prediction_log", "training_set"],
          automation_condition=REFRESH_ON_NEW_DATA, kinds={"evidently"},
          check_specs=[dg.AssetCheckSpec("drift_is_acceptable", asset="drift_report")])
def drift_report(context: dg.AssetExecutionContext, lake: LakeResource, task: TaskResource,
                 mlflow_tracking: MlflowResource, alerts: AlertSink) -> dg.MaterializeResult:
    """Each served feature and the prediction vs the training reference (evidently)."""
    store, spec, month = lake.get(), task.get(), month_of(context.partition_key)
    served, (training, _) = _served(store, month), read_training_set(store)
    features = [f for f in served.columns if f in training.columns and f not in NOT_DRIFT_FEATURES]
    reference = _reference(training, mlflow_tracking, spec.model_name, features)
    summary, html = drift.drift_report(reference, served, features)
    folder = store.root / "reports" / "drift"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{month}.html").write_text(html)
    (folder / f"{month}.json").write_text(json.dumps(summary.__dict__, default=str, indent=2))
    return dg.MaterializeResult(
        metadata={"share_drifted": summary.share_drifted, "drifted_features": dg.MetadataValue.json(summary.drifted_features),
                  "reference_rows": summary.reference_rows, "current_rows": summary.current_rows,
                  "report": dg.MetadataValue.path(str(folder / f"{month}.html")),
                  "summary": dg.MetadataValue.md(drift.drift_markdown(summary))},
        check_results=[_check("drift_report", "drift_is_acceptable", judge_drift(summary, spec.monitoring), alerts, month)],
    )


@dg.asset(group_name=GROUP, partitions_def=monthly_partitions, deps=["prediction_log", *FEATURE_VIEWS],
          automation_condition=REFRESH_ON_NEW_DATA, kinds={"polars"},
          check_specs=[dg.AssetCheckSpec("skew_is_acceptable", asset="skew_report")])
def skew_report(context: dg.AssetExecutionContext, lake: LakeResource, task: TaskResource,
                alerts: AlertSink) -> dg.MaterializeResult:
    """Served feature values vs the offline store's values for the same entity and time."""
    store, spec, month = lake.get(), task.get(), month_of(context.partition_key)
    served = _served(store, month)
    views = [(v, store.read_view(v.name)) for v in FEATURE_VIEWS.values()]
    keys = ["request_id", "instance"]
    offline = point_in_time_join(served.select(*keys, "origin", "dest", "carrier", "tailnum", "prediction_time"),
                                 views, timestamp="prediction_time")
    features = [f for v in FEATURE_VIEWS.values() for f in v.features if f in served.columns]
    report = skew.skew_report(served, offline, keys, features)
    return dg.MaterializeResult(
        metadata={"features_compared": len(features), "summary": dg.MetadataValue.md(skew.skew_markdown(report)),
                  "max_mismatch_rate": float(report["mismatch_rate"].max())},
        check_results=[_check("skew_report", "skew_is_acceptable", judge_skew(report, spec.monitoring), alerts, month)],
    )


def _offline_metrics(tracking: MlflowResource, model_name: str, version: str) -> dict[str, float]:
    tags = tracking.client().get_model_version(model_name, version).tags
    return {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}


@dg.asset(group_name=GROUP, partitions_def=monthly_partitions, deps=["prediction_log", "ground_truth"],
          automation_condition=REFRESH_ON_NEW_DATA, kinds={"polars"},
          check_specs=[dg.AssetCheckSpec("performance_is_acceptable", asset="model_performance")])
def model_performance(context: dg.AssetExecutionContext, lake: LakeResource, task: TaskResource,
                      mlflow_tracking: MlflowResource, alerts: AlertSink) -> dg.MaterializeResult:
    """Logged predictions joined with the labels that arrived, against the model's offline evaluation."""
    store, spec, month = lake.get(), task.get(), month_of(context.partition_key)
    served = _served(store, month).filter(pl.col("arm") != "shadow")
    joined = performance.join_ground_truth(served, store.read_batches("ground_truth", [month]), TRUTH_KEYS)
    version = served["model_version"].mode().sort()[0]
    result = performance.live_performance(joined, ["carrier", "origin"], spec.threshold,
                                          _offline_metrics(mlflow_tracking, spec.model_name, version))
    verdict = judge_performance(result, spec.monitoring)
    return dg.MaterializeResult(
        metadata={**{f"live_{k}": float(v) for k, v in result["overall"].items()}, "model_version": version,
                  "summary": dg.MetadataValue.md(performance.performance_markdown(result))},
        check_results=[_check("model_performance", "performance_is_acceptable", verdict, alerts, month)],
    )


@dg.asset(group_name=GROUP, partitions_def=monthly_partitions, deps=["prediction_log", "ground_truth"],
          automation_condition=REFRESH_ON_NEW_DATA, kinds={"polars"})
def ab_test_report(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """Per-arm metrics with a bootstrap CI and a recommendation (champion vs challenger)."""
    store, month = lake.get(), month_of(context.partition_key)
    served = _served(store, month)
    joined = performance.join_ground_truth(served, store.read_batches("ground_truth", [month]), TRUTH_KEYS)
    report = ab_test.ab_test_report(joined)
    return dg.MaterializeResult(metadata={"recommendation": report.get("recommendation", ""),
                                          "summary": dg.MetadataValue.md(ab_test.ab_markdown(report))})


monitoring_assets = [prediction_log, ground_truth, drift_report, skew_report, model_performance, ab_test_report]
