"""Batch predictions: a month of scheduled flights scored by the champion, one partition per month."""

import dagster as dg

from mlops_assets.batch_scoring.scoring import score_month
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.metadata import frame_metadata
from mlops_assets.partitions import month_of, monthly_partitions
from mlops_assets.registry.registry import CHAMPION, alias_version
from mlops_assets.resources import LakeResource, TaskResource
from mlops_assets.tracking import MlflowResource, load_tabular_model


@dg.asset(group_name="serving", partitions_def=monthly_partitions, deps=["flights", *FEATURE_VIEWS],
          kinds={"lightgbm", "parquet"})
def batch_predictions(context: dg.AssetExecutionContext, lake: LakeResource, task: TaskResource,
                      mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
    """The champion's delay probability for every flight of the month, with the model version."""
    spec, store = task.get(), lake.get()
    month = month_of(context.partition_key)
    version = alias_version(mlflow_tracking.client(), spec.model_name, CHAMPION)
    if version is None:
        raise dg.Failure(f"no champion for {spec.model_name} yet: run continuous_training_job first")
    model = load_tabular_model(f"models:/{spec.model_name}/{version}")
    views = [(v, store.read_view(v.name)) for v in FEATURE_VIEWS.values()]
    scored = score_month(store.read_batches("flights", [month]), views, model, spec, version)
    path = store.write_batch("batch_predictions", scored, month)
    return dg.MaterializeResult(metadata={
        **frame_metadata(scored), "model_version": version, "path": dg.MetadataValue.path(str(path)),
        "mean_probability": float(scored["probability"].mean()), "predicted_delayed": int(scored["decision"].sum()),
    })
