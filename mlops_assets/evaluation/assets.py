"""Evaluation: the candidate, the trivial baseline and the champion (on periods it never saw), and the verdict."""

from pathlib import Path

import dagster as dg
from mlflow import MlflowClient

from mlops_assets.evaluation.judging import judge
from mlops_assets.evaluation.plots import image_markdown
from mlops_assets.evaluation.report import (
    artifacts,
    baseline_markdown,
    comparison_markdown,
    record,
    shap_markdown,
)
from mlops_assets.lake import read_record, read_training_set, write_record
from mlops_assets.project.spec import Project
from mlops_assets.registry.registry import CHAMPION, alias_version
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.tracking import MlflowResource, load_tabular_model, log_bytes
from mlops_assets.training.model import TabularModel


def champion_of(client: MlflowClient, project: Project) -> tuple[str | None, TabularModel | None, dict[str, str]]:
    """(version, model, tags) of the current champion, or (None, None, {})."""
    version = alias_version(client, project.model_name, CHAMPION)
    if version is None:
        return None, None, {}
    tags = dict(client.get_model_version(project.model_name, version).tags)
    return version, TabularModel.from_scoring(load_tabular_model(f"models:/{project.model_name}/{version}")), tags


@dg.asset(group_name="evaluation", deps=["candidate_model"], kinds={"mlflow"})
def model_evaluation(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                     mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
    """Metrics overall and per slice, the baseline, TreeSHAP, and the champion on the periods it never saw."""
    spec, store = project.get().spec, lake.get()
    candidate = read_record(store, "candidate_model")
    frame, _ = read_training_set(store, candidate["training_set_hash"])
    client = mlflow_tracking.client()
    champion_version, champion, champion_tags = champion_of(client, spec)
    model = TabularModel.from_scoring(load_tabular_model(candidate["model_uri"]))
    result = judge(model, champion, frame, spec, champion_tags)
    logged = artifacts(result, frame, spec, candidate["features"], model.classes)
    for path, data in logged.items():
        log_bytes(candidate["run_id"], data, path)
    plots = {f"plot_{Path(p).stem}": dg.MetadataValue.md(image_markdown(data, Path(p).stem.replace("_", " ")))
             for p, data in logged.items() if p.endswith(".png")}
    for name, value in result.challenger.overall.items():
        client.log_metric(candidate["run_id"], f"test_{name}", value)
    write_record(store, "model_evaluation", {**record(result), "champion_version": champion_version})
    context.log.info(f"verdict: {result.verdict.summary()}")
    return dg.MaterializeResult(metadata={
        **{f"test_{k}": float(v) for k, v in result.challenger.overall.items()},
        **{f"baseline_{k}": float(v) for k, v in result.baseline.overall.items() if k != "rows"},
        "baseline": result.baseline_name,
        "worst_slice_gap": dg.MetadataValue.json(result.challenger.worst_gap),
        "champion_version": champion_version or "none",
        "comparison_window": dg.MetadataValue.json(result.window.to_dict() if result.window else {}),
        "blessed": result.verdict.blessed,
        "verdict": result.verdict.summary(),
        "challenger_vs_baseline": dg.MetadataValue.md(baseline_markdown(result.verdict, result.baseline_name)),
        "challenger_vs_champion": dg.MetadataValue.md(comparison_markdown(result.verdict)),
        "shap_importance": dg.MetadataValue.md(shap_markdown(result.shap)),
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(candidate["experiment_id"], candidate["run_id"])),
        **plots,
    })
