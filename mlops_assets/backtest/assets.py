"""The `policy_backtest` asset: every declared retraining policy replayed over the stored periods."""

import dagster as dg
import polars as pl

from mlops_assets.backtest.replay import run_backtest
from mlops_assets.backtest.report import (
    outcomes_csv,
    periods_markdown,
    plot,
    reference_policy,
    summary_markdown,
)
from mlops_assets.evaluation.plots import image_markdown
from mlops_assets.features.assets import load_prepared
from mlops_assets.features.repository import model_features, offline_features
from mlops_assets.lake import Lake
from mlops_assets.project.loading import LoadedProject
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.tracking import MlflowResource, log_report_run
from mlops_assets.training.model import label_classes
from mlops_assets.training.training_set import examples_frame

GROUP = "backtest"


def labelled_examples(store: Lake, loaded: LoadedProject) -> pl.DataFrame:
    """Every stored period's labelled examples with all views' point-in-time features, unsplit."""
    sources = load_prepared(store, loaded, [loaded.spec.examples.source])
    views = {v: store.read_view(v) for v in loaded.spec.feature_views}
    return offline_features(loaded.spec, examples_frame(loaded, sources), views, list(views))


@dg.asset(group_name=GROUP, deps=["training_set"], kinds={"lightgbm", "mlflow"})
def policy_backtest(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                    mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
    """Which retraining policy is worth its cost: live metric per period, retrains, compute and regret."""
    from mlops_assets.batch_scoring.scoring import score
    from mlops_assets.training.tuning import train_candidate

    store, loaded = lake.get(), project.get()
    spec = loaded.spec
    fixed = spec.model_copy(update={"tuning": spec.tuning.model_copy(update={
        "n_trials": 1, "max_rounds": spec.backtest.max_rounds})})
    frame = labelled_examples(store, loaded)
    features = model_features(spec)
    classes = label_classes(spec.problem, spec.classes, frame[spec.label.name])

    def train(fit: pl.DataFrame, valid: pl.DataFrame) -> object:
        return train_candidate(fit, valid, fixed, features).model

    result = run_backtest(spec, frame, features, train, score, classes)
    png, summary = plot(result), summary_markdown(result)
    context.log.info(f"backtest: {len({o.period for o in result.outcomes})} periods x "
                     f"{len(spec.backtest.policies)} policies, {result.trainings} trainings, {result.wall_seconds:.1f} s")
    reference = reference_policy(result)
    url = log_report_run(
        mlflow_tracking, "policy_backtest", {"mlops.kind": "policy_backtest", "dagster_run_id": context.run.run_id},
        {"backtest/live_metric_by_policy.png": png, "backtest/outcomes.csv": outcomes_csv(result),
         "backtest/report.md": summary + "\n\n" + periods_markdown(result)},
        {f"{r['policy']}.mean_live_{result.metric}": r["mean_live_metric"] for r in result.summary(reference)})
    return dg.MaterializeResult(metadata={
        "plot": dg.MetadataValue.md(image_markdown(png, "live metric by policy")),
        "summary": dg.MetadataValue.md(summary),
        "periods": dg.MetadataValue.md(periods_markdown(result)),
        "trainings": result.trainings,
        "trainings_shared": dg.MetadataValue.json(sorted(set(result.cached))),
        "wall_seconds": round(result.wall_seconds, 1),
        "mlflow_run": dg.MetadataValue.url(url),
    })
