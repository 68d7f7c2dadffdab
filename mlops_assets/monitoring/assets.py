"""Continuous monitoring, one partition per period of the project: served traffic vs training, labels vs predictions.

Every report carries a check (WARN or ERROR by the project's thresholds); a failing check is also
written to the alert log (and webhook), where the retraining sensor looks for it.
"""

import json
from datetime import datetime

import dagster as dg
import polars as pl
from mlflow.exceptions import MlflowException

from mlops_assets.alerts import AlertSink
from mlops_assets.contract import LOG_PREDICTION, PERIOD, SPLIT
from mlops_assets.evaluation.plots import drift_severity_png, image_markdown
from mlops_assets.features.repository import model_features, offline_features
from mlops_assets.lake import Lake, read_training_set
from mlops_assets.metadata import frame_metadata
from mlops_assets.monitoring import ab_test, drift, performance, skew
from mlops_assets.monitoring.checks import Verdict, judge_drift, judge_performance, judge_skew
from mlops_assets.monitoring.drift_calibration import calibrate_drift
from mlops_assets.monitoring.ground_truth import period_labels
from mlops_assets.monitoring.period_data import needed_sources, period_examples
from mlops_assets.monitoring.serving_frame import flatten_log
from mlops_assets.partitions import example_period_bounds, period_label, period_partitions
from mlops_assets.project.spec import Project
from mlops_assets.registry.registry import CHAMPION, alias_version
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.serving.predlog import read_prediction_log
from mlops_assets.tracking import MlflowResource, load_tabular_model, log_report_run

GROUP = "monitoring"


def refresh_on_new_data(project: Project) -> dg.AutomationCondition:
    """A period's reports refresh when its log or labels update, for any period (not only the latest, as
    `eager()` would), and not when a retrain rebuilds the training set or the views (that would re-run
    every period's reports)."""
    return (
        dg.AutomationCondition.any_deps_updated()
        .ignore(dg.AssetSelection.assets("training_set", *project.feature_views))
        .since_last_handled()
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("period's log or labels updated")


def monitoring_automation(project: Project) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "monitoring_automation", target=dg.AssetSelection.groups(GROUP), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description=f"Refreshes a {project.granularity}'s drift, skew, performance and A/B reports when its log or "
                    "labels land.",
    )


def _check(asset: str, name: str, verdict: Verdict, alerts: AlertSink, period: str) -> dg.AssetCheckResult:
    if not verdict.passed:
        alerts.send(verdict.severity, f"monitor:{asset}", f"{asset} {period}: {verdict.message}",
                    {"period": period, "check": name, **verdict.figures})
    severity = dg.AssetCheckSeverity.ERROR if verdict.severity == "ERROR" else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(asset_key=asset, check_name=name, passed=verdict.passed, severity=severity,
                               description=verdict.message, metadata=verdict.figures)


def _period(context: dg.AssetExecutionContext, project: Project) -> tuple[str, datetime, datetime]:
    start, end = example_period_bounds(project, context.partition_key)
    return period_label(context.partition_key, project.granularity), start, end


def served_log(store: Lake, period: str) -> pl.DataFrame:
    try:
        return store.read_batches("prediction_log", [period])
    except FileNotFoundError:
        raise dg.Failure(f"no served predictions for {period}: replay the period first (mlops-assets replay)") from None


def served_with_labels(store: Lake, project: Project, period: str) -> pl.DataFrame:
    """The period's served predictions joined with the labels that arrived."""
    return performance.join_ground_truth(served_log(store, period), store.read_batches("ground_truth", [period]),
                                         list(project.examples.id), project.label.name)


def _champion(tracking: MlflowResource, model_name: str) -> tuple[str | None, object | None]:
    version = alias_version(tracking.client(), model_name, CHAMPION)
    return version, None if version is None else load_tabular_model(f"models:/{model_name}/{version}")


def _reference(training: pl.DataFrame, project: Project, tracking: MlflowResource, features: list[str]) -> pl.DataFrame:
    """A fixed sample of the training rows, scored by the champion (the prediction drift baseline)."""
    from mlops_assets.batch_scoring.scoring import prediction_columns, score

    sample = drift.reference_sample(training, rows=project.monitoring.sample_rows)
    version, model = _champion(tracking, project.model_name)
    if model is None:
        return sample.select(features)
    predicted = prediction_columns(project, score(model, sample), getattr(model, "classes", None))[0]
    return sample.select(features).with_columns(predicted.alias(LOG_PREDICTION))


def _offline_metrics(tracking: MlflowResource, model_name: str, version: str) -> dict[str, float]:
    """The version's offline test figures, as the registry tags them (metric.<name>); none for a version the
    registry no longer holds."""
    try:
        tags = tracking.client().get_model_version(model_name, version).tags
    except MlflowException:
        return {}
    return {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}


def monitoring_assets(project: Project) -> list[dg.AssetsDefinition]:
    """prediction_log, ground_truth, drift_report, skew_report, model_performance, ab_test_report."""
    partitions, refresh = period_partitions(project), refresh_on_new_data(project)
    example_deps = needed_sources(project, [project.examples.source])

    @dg.asset(group_name=GROUP, partitions_def=partitions, kinds={"polars"})
    def prediction_log(context: dg.AssetExecutionContext, lake: LakeResource,
                       project: ProjectResource) -> dg.MaterializeResult:
        """The service's prediction log for the period (by request time, UTC), one row per served prediction."""
        store, spec = lake.get(), project.get().spec
        period, start, end = _period(context, spec)
        served = flatten_log(read_prediction_log(store.root), spec, start, end, period)
        if served.height == 0:
            raise dg.Failure(f"the prediction log has no served predictions for {period}")
        path = store.write_batch("prediction_log", served, period)
        latency = served["latency_ms"] if "latency_ms" in served.columns else pl.Series([0.0])
        return dg.MaterializeResult(metadata={
            **frame_metadata(served.select("request_id", "prediction_time", LOG_PREDICTION, "arm", "model_version")),
            "arms": dg.MetadataValue.json(dict(served.group_by("arm").len().iter_rows())),
            "model_versions": dg.MetadataValue.json(dict(served.group_by("model_version").len().iter_rows())),
            "latency_p50_ms": float(latency.quantile(0.5) or 0), "latency_p99_ms": float(latency.quantile(0.99) or 0),
            "path": dg.MetadataValue.path(str(path)),
        })

    @dg.asset(group_name=GROUP, partitions_def=partitions, deps=example_deps, kinds={"polars"})
    def ground_truth(context: dg.AssetExecutionContext, lake: LakeResource,
                     project: ProjectResource) -> dg.MaterializeResult:
        """The labels of the period's examples, keyed by the example id; they land after the predictions."""
        store, loaded = lake.get(), project.get()
        period, start, end = _period(context, loaded.spec)
        labels = period_labels(period_examples(store, loaded, period, start, end), loaded.spec, start, end)
        store.write_batch("ground_truth", labels, period)
        label = labels[loaded.spec.label.name]
        summary = label.cast(pl.Float64).mean() if loaded.spec.problem != "multiclass" else label.n_unique()
        return dg.MaterializeResult(metadata={**frame_metadata(labels), "label_summary": float(summary or 0)})

    @dg.asset(group_name=GROUP, partitions_def=partitions, deps=["prediction_log", "training_set"],
              automation_condition=refresh, kinds={"evidently"},
              check_specs=[dg.AssetCheckSpec("drift_is_acceptable", asset="drift_report")])
    def drift_report(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                     mlflow_tracking: MlflowResource, alerts: AlertSink) -> dg.MaterializeResult:
        """Each served model feature and the prediction vs a fixed training sample (evidently), graded against
        the drift the training periods show between themselves."""
        store, spec = lake.get(), project.get().spec
        period, _, _ = _period(context, spec)
        served, (training, _) = served_log(store, period), read_training_set(store)
        train = training.filter(pl.col(SPLIT) == "train")
        features = [f for f in model_features(spec) if f in served.columns and f in train.columns]
        categorical = tuple(spec.categorical)
        summary, html = drift.drift_report(_reference(train, spec, mlflow_tracking, features), served, features,
                                           categorical=categorical)
        calibration = calibrate_drift(train.select(PERIOD, *features), features, spec.monitoring.drift_warn_share,
                                      spec.monitoring.drift_error_share, categorical, spec.monitoring.sample_rows)
        verdict = judge_drift(summary, calibration)
        folder = store.root / "reports" / "drift"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{period}.html").write_text(html)
        (folder / f"{period}.json").write_text(json.dumps(
            {**summary.__dict__, "calibration": calibration.as_dict()}, default=str, indent=2))
        severity = drift_severity_png(summary.per_feature)
        report_url = log_report_run(mlflow_tracking, f"drift_report {period}", {"mlops.kind": "drift_report",
                                    "period": period, "dagster_run_id": context.run.run_id},
                                    {f"drift/{period}.html": html, f"drift/{period}_severity.png": severity,
                                     f"drift/{period}.json": (folder / f"{period}.json").read_text()},
                                    {"share_drifted": summary.share_drifted})
        return dg.MaterializeResult(
            metadata={"share_drifted": summary.share_drifted, "share_unusual": verdict.figures["share_unusual"],
                      "drifted_features": dg.MetadataValue.json(summary.drifted_features),
                      "calibration": dg.MetadataValue.json(calibration.as_dict()),
                      "reference_rows": summary.reference_rows, "current_rows": summary.current_rows,
                      "report": dg.MetadataValue.path(str(folder / f"{period}.html")),
                      "evidently_report_in_mlflow": dg.MetadataValue.url(report_url),
                      "drift_plot": dg.MetadataValue.md(image_markdown(severity, "feature drift")),
                      "summary": dg.MetadataValue.md(drift.drift_markdown(summary, calibration.describe()))},
            check_results=[_check("drift_report", "drift_is_acceptable", verdict, alerts, period)],
        )

    @dg.asset(group_name=GROUP, partitions_def=partitions, deps=["prediction_log", *project.used_views],
              automation_condition=refresh, kinds={"polars"},
              check_specs=[dg.AssetCheckSpec("skew_is_acceptable", asset="skew_report")])
    def skew_report(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                    alerts: AlertSink) -> dg.MaterializeResult:
        """Served feature values vs the offline computation for the same request as of its prediction time."""
        store, spec = lake.get(), project.get().spec
        period, _, _ = _period(context, spec)
        served = served_log(store, period)
        views = {v: store.read_view(v) for v in spec.used_views}
        offline = skew.offline_for_served(served, spec, views, offline_features)
        features = [f for f in [*model_features(spec), "prediction_time"] if f in served.columns]
        report = skew.skew_report(served, offline, skew.SERVED_KEYS, features)
        return dg.MaterializeResult(
            metadata={"features_compared": len(features), "summary": dg.MetadataValue.md(skew.skew_markdown(report)),
                      "max_mismatch_rate": float(report["mismatch_rate"].max() or 0.0)},
            check_results=[_check("skew_report", "skew_is_acceptable", judge_skew(report, spec.monitoring), alerts,
                                  period)],
        )

    @dg.asset(group_name=GROUP, partitions_def=partitions, deps=["prediction_log", "ground_truth"],
              automation_condition=refresh, kinds={"polars"},
              check_specs=[dg.AssetCheckSpec("performance_is_acceptable", asset="model_performance")])
    def model_performance(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                          mlflow_tracking: MlflowResource, alerts: AlertSink) -> dg.MaterializeResult:
        """Logged predictions joined with the labels that arrived, against the version's offline test figures."""
        store, spec = lake.get(), project.get().spec
        period, _, _ = _period(context, spec)
        joined = served_with_labels(store, spec, period).filter(pl.col("arm") != ab_test.SHADOW)
        version = str(joined["model_version"].mode().sort()[0])
        result = performance.live_performance(joined, spec, _offline_metrics(mlflow_tracking, spec.model_name, version))
        return dg.MaterializeResult(
            metadata={**{f"live_{k}": float(v) for k, v in result["overall"].items()}, "model_version": version,
                      "summary": dg.MetadataValue.md(performance.performance_markdown(result))},
            check_results=[_check("model_performance", "performance_is_acceptable",
                                  judge_performance(result, spec), alerts, period)],
        )

    @dg.asset(group_name=GROUP, partitions_def=partitions, deps=["prediction_log", "ground_truth"],
              automation_condition=refresh, kinds={"polars"})
    def ab_test_report(context: dg.AssetExecutionContext, lake: LakeResource,
                       project: ProjectResource) -> dg.MaterializeResult:
        """Per-arm metrics with a bootstrap CI and a recommendation (champion vs challenger)."""
        store, spec = lake.get(), project.get().spec
        period, _, _ = _period(context, spec)
        report = ab_test.ab_test_report(served_with_labels(store, spec, period), spec)
        return dg.MaterializeResult(metadata={"recommendation": report.get("recommendation", ""),
                                              "summary": dg.MetadataValue.md(ab_test.ab_markdown(report))})

    return [prediction_log, ground_truth, drift_report, skew_report, model_performance, ab_test_report]
