"""Training: the tuned candidate model, tracked in MLflow (the training set is in `training_set`)."""

import dagster as dg
import polars as pl

from mlops_assets.contract import SPLIT
from mlops_assets.lake import EXPECTED, read_training_set, write_canary, write_record
from mlops_assets.registry.infra import expected_column
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.tracking import MlflowResource
from mlops_assets.training.mlflow_logging import log_candidate, project_tags
from mlops_assets.training.model import client_frame

GROUP = "training"


@dg.asset(group_name=GROUP, deps=["training_set"], kinds={"lightgbm", "mlflow"})
def candidate_model(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                    mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
    """LightGBM tuned with optuna (each trial a nested MLflow run), early-stopped on the validation periods."""
    loaded, store = project.get(), lake.get()
    spec = loaded.spec
    frame, digest = read_training_set(store)
    tags = {"dagster_run_id": context.run.run_id, "dagster_asset_key": "candidate_model", **project_tags(loaded)}
    model, logged = log_candidate(frame, digest, spec, mlflow_tracking, tags)
    write_record(store, "candidate_model", logged)
    canary = client_frame(frame.filter(pl.col(SPLIT) == "test").head(spec.infra.canary_rows).to_pandas(), model)
    write_canary(store, canary.assign(**{EXPECTED: expected_column(model.predict(canary))}))
    metric = logged["validation_metric"]
    context.log.info(f"candidate: {logged['n_trials']} trials, validation {metric} {logged['validation_score']:.4f}")
    return dg.MaterializeResult(metadata={
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(logged["experiment_id"], logged["run_id"])),
        "model_uri": logged["model_uri"], "training_set_hash": digest, "project_hash": logged["project_hash"],
        "train_window": logged["train_window"], "validation_window": logged["validation_window"],
        f"validation_{metric}": logged["validation_score"], "best_iteration": logged["best_iteration"],
        "trials": logged["n_trials"], "best_params": dg.MetadataValue.json(logged["params"]),
        "feature_importance": dg.MetadataValue.md(logged["importance_md"]),
    })
