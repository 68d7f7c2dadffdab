"""Training: the training set and the tuned candidate model, tracked in MLflow."""

from datetime import timedelta

import dagster as dg
import polars as pl

from mlops_assets.features.transforms import flight_events
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.lake import (
    EXPECTED,
    Lake,
    read_training_set,
    write_canary,
    write_record,
    write_training_set,
)
from mlops_assets.metadata import frame_metadata
from mlops_assets.resources import LakeResource, TaskResource
from mlops_assets.task import TaskConfig
from mlops_assets.tracking import MlflowResource
from mlops_assets.training.dataset import SPLIT, content_hash, flight_training_set, model_features
from mlops_assets.training.dataset_table import table_training_set
from mlops_assets.training.mlflow_logging import log_candidate
from mlops_assets.training.model import client_frame

GROUP = "training"


def build_training_frame(store: Lake, task: TaskConfig) -> pl.DataFrame:
    if task.source.kind == "table":
        return table_training_set(store.read_source_table(task.source.path), task)
    views = list(FEATURE_VIEWS.values())  # every view, so any champion can be scored on the same rows
    events = flight_events(store.read_batches("flights"), timedelta(hours=task.prediction_lead_hours))
    return flight_training_set(events, [(v, store.read_view(v.name)) for v in views], task)


def split_summary(frame: pl.DataFrame) -> dict[str, dict[str, object]]:
    counts = frame.group_by(SPLIT).agg(rows=pl.len(), months=pl.col("month").unique().sort().str.join(","))
    return {r[SPLIT]: {"rows": r["rows"], "months": r["months"]} for r in counts.to_dicts()}


def training_set_factory(deps: list[str]) -> dg.AssetsDefinition:
    @dg.asset(name="training_set", group_name=GROUP, deps=deps, kinds={"polars", "parquet"})
    def training_set(lake: LakeResource, task: TaskResource) -> dg.MaterializeResult:
        """Labelled rows with point-in-time features, split by month; named by its content hash."""
        spec, store = task.get(), lake.get()
        frame = build_training_frame(store, spec)
        digest = content_hash(frame)
        path = write_training_set(store, frame, digest)
        return dg.MaterializeResult(
            metadata={**frame_metadata(frame), "content_hash": digest, "path": dg.MetadataValue.path(str(path)),
                      "splits": dg.MetadataValue.json(split_summary(frame)),
                      "label_mean": float(frame[spec.label].cast(pl.Float64).mean())},
            data_version=dg.DataVersion(digest),
        )

    return training_set


def task_features(task: TaskConfig) -> list[str]:
    views = [FEATURE_VIEWS[n] for n in task.source.feature_views] if task.source.kind == "feature_repository" else []
    return model_features(task, views)


@dg.asset(group_name=GROUP, deps=["training_set"], kinds={"lightgbm", "mlflow"})
def candidate_model(context: dg.AssetExecutionContext, lake: LakeResource, task: TaskResource,
                    mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
    """LightGBM tuned with optuna (each trial a nested MLflow run), early-stopped on validation months."""
    spec, store = task.get(), lake.get()
    frame, digest = read_training_set(store)
    model, logged = log_candidate(frame, digest, spec, task_features(spec), mlflow_tracking,
                                  {"dagster_run_id": context.run.run_id, "dagster_asset_key": "candidate_model"})
    write_record(store, "candidate_model", logged)
    canary = client_frame(frame.filter(pl.col(SPLIT) == "test").head(spec.infra.canary_rows).to_pandas(), model)
    write_canary(store, canary.assign(**{EXPECTED: model.predict(canary)}))
    context.log.info(f"candidate: {logged['n_trials']} trials, validation {spec.metric} {logged['validation_score']:.4f}")
    return dg.MaterializeResult(metadata={
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(logged["experiment_id"], logged["run_id"])),
        "model_uri": logged["model_uri"], "training_set_hash": digest,
        f"validation_{spec.metric}": logged["validation_score"], "best_iteration": logged["best_iteration"],
        "trials": logged["n_trials"], "best_params": dg.MetadataValue.json(logged["params"]),
        "feature_importance": dg.MetadataValue.md(logged["importance_md"]),
    })



