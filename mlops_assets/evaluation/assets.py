"""Evaluation: the candidate and the current champion on the same newest months, and the verdict."""

import dagster as dg
import polars as pl

from mlops_assets.evaluation.judging import artifacts, comparison_markdown, judge, record, shap_markdown
from mlops_assets.lake import read_record, read_training_set, write_record
from mlops_assets.registry.registry import CHAMPION, alias_version
from mlops_assets.resources import LakeResource, TaskResource
from mlops_assets.tracking import MlflowResource, load_tabular_model, log_bytes
from mlops_assets.training.dataset import SPLIT


@dg.asset(group_name="evaluation", deps=["candidate_model"], kinds={"mlflow"})
def model_evaluation(context: dg.AssetExecutionContext, lake: LakeResource, task: TaskResource,
                     mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
    """Metrics overall and per slice, TreeSHAP, and the champion scored on exactly the same rows."""
    spec, store = task.get(), lake.get()
    candidate = read_record(store, "candidate_model")
    frame, _ = read_training_set(store, candidate["training_set_hash"])
    test = frame.filter(pl.col(SPLIT) == "test")
    client = mlflow_tracking.client()
    champion_version = alias_version(client, spec.model_name, CHAMPION)
    champion = load_tabular_model(f"models:/{spec.model_name}@{CHAMPION}") if champion_version else None
    result = judge(load_tabular_model(candidate["model_uri"]), champion, test, spec)
    for path, data in artifacts(result, test, spec, candidate["features"]).items():
        log_bytes(candidate["run_id"], data, path)
    for name, value in result.challenger.overall.items():
        client.log_metric(candidate["run_id"], f"test_{name}", value)
    write_record(store, "model_evaluation", {**record(result), "champion_version": champion_version})
    context.log.info(f"verdict: {result.verdict.summary()}")
    return dg.MaterializeResult(metadata={
        **{f"test_{k}": float(v) for k, v in result.challenger.overall.items()},
        "worst_slice_gap": dg.MetadataValue.json(result.challenger.worst_gap),
        "champion_version": champion_version or "none",
        "blessed": result.verdict.blessed,
        "verdict": result.verdict.summary(),
        "challenger_vs_champion": dg.MetadataValue.md(comparison_markdown(result.verdict)),
        "shap_importance": dg.MetadataValue.md(shap_markdown(result.shap)),
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(candidate["experiment_id"], candidate["run_id"])),
    })
