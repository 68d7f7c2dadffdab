"""Batch predictions: a period's examples scored by the champion, one partition per period of the project."""

import dagster as dg
import polars as pl

from mlops_assets.batch_scoring.scoring import score_examples
from mlops_assets.contract import LOG_PREDICTION
from mlops_assets.features.repository import offline_features
from mlops_assets.metadata import frame_metadata
from mlops_assets.monitoring.period_data import needed_sources, period_examples
from mlops_assets.partitions import example_period_bounds, period_label, period_partitions
from mlops_assets.project.spec import Project
from mlops_assets.registry.registry import CHAMPION, alias_version
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.tracking import MlflowResource, load_tabular_model


def _summary(scored: pl.DataFrame, project: Project) -> dict[str, float | dg.MetadataValue]:
    if project.problem == "multiclass":
        counts = scored.group_by(LOG_PREDICTION).len().sort("len", descending=True).head(10)
        return {"predicted_classes": dg.MetadataValue.json(dict(counts.iter_rows()))}
    mean = float(scored[LOG_PREDICTION].mean() or 0.0)
    if project.problem == "binary":
        return {"mean_probability": mean, "predicted_positive": int(scored["decision"].sum())}
    return {"mean_prediction": mean}


def batch_scoring_assets(project: Project) -> list[dg.AssetsDefinition]:
    deps = [*needed_sources(project, [project.examples.source]), *project.used_views]

    @dg.asset(group_name="serving", partitions_def=period_partitions(project), deps=deps,
              kinds={"lightgbm", "parquet"})
    def batch_predictions(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                          mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
        """The champion's prediction for every example of the period, with features as of its prediction time."""
        store, loaded = lake.get(), project.get()
        spec = loaded.spec
        start, end = example_period_bounds(spec, context.partition_key)
        period = period_label(context.partition_key, spec.granularity)
        version = alias_version(mlflow_tracking.client(), spec.model_name, CHAMPION)
        if version is None:
            raise dg.Failure(f"no champion for {spec.model_name} yet: run continuous_training_job first")
        model = load_tabular_model(f"models:/{spec.model_name}/{version}")
        examples = period_examples(store, loaded, period, start, end, labelled=False)
        views = {v: store.read_view(v) for v in spec.used_views}
        scored = score_examples(spec, examples, views, model, version, offline_features)
        path = store.write_batch("batch_predictions", scored, period)
        return dg.MaterializeResult(metadata={
            **frame_metadata(scored), "model_version": version, "path": dg.MetadataValue.path(str(path)),
            **_summary(scored, spec),
        })

    return [batch_predictions]
