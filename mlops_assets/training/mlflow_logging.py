"""Log a candidate to MLflow: parent run with data lineage, nested trial runs, the pyfunc model."""

from __future__ import annotations

import hashlib
from importlib.metadata import version

import mlflow
import mlflow.data
import polars as pl

from mlops_assets.contract import SPLIT, SPLITS
from mlops_assets.evaluation import plots
from mlops_assets.evaluation.evaluate import check_primary_metric
from mlops_assets.evaluation.windows import require_rows, training_windows
from mlops_assets.features.repository import model_features
from mlops_assets.project.loading import LoadedProject
from mlops_assets.project.spec import Project
from mlops_assets.scoring_model import ScoringPyfunc
from mlops_assets.tracking import MlflowResource, code_version, log_bytes
from mlops_assets.training.model import TabularModel, client_frame, optional_signature
from mlops_assets.training.tuning import TrialOutcome, feature_importance, metric_spec, train_candidate

MODEL_NAME_IN_RUN = "model"


def pip_requirements() -> list[str]:
    """Pinned explicitly: MLflow's inference would import-trace the process (slow, noisy)."""
    return [f"{p}=={version(p)}" for p in ("mlflow", "lightgbm", "pandas", "numpy", "cloudpickle")]


def project_tags(loaded: LoadedProject) -> dict[str, str]:
    """Which project file, byte for byte, a run was trained from."""
    digest = hashlib.sha256(loaded.path.read_bytes()).hexdigest()[:16]
    return {"project": loaded.spec.name, "project_hash": digest}


def _log_trial(metric: str, outcome: TrialOutcome) -> None:
    with mlflow.start_run(run_name=f"trial-{outcome.number}", nested=True):
        mlflow.log_params(outcome.params)
        mlflow.log_metrics({f"valid_{metric}": outcome.score, "best_iteration": outcome.best_iteration,
                            "seconds": outcome.seconds})
        mlflow.set_tag("pruned", str(outcome.pruned).lower())


def _log_datasets(frame: pl.DataFrame, digest: str, project: Project) -> dict[str, int]:
    rows = {}
    for split in SPLITS:
        part = frame.filter(pl.col(SPLIT) == split)
        rows[split] = part.height
        dataset = mlflow.data.from_pandas(part.head(1000).to_pandas(), name=f"training_set_{split}",
                                          digest=f"{digest}-{split}", targets=project.label.name)
        mlflow.log_input(dataset, context=split, tags={"rows": str(part.height), "training_set_hash": digest})
    return rows


def log_candidate(frame: pl.DataFrame, digest: str, project: Project, tracking: MlflowResource,
                  tags: dict[str, str]) -> tuple[TabularModel, dict]:
    """Train (tuned) inside an MLflow run and log everything needed to reproduce and judge it.

    Too few validation or test rows, or a primary metric the problem lacks, is an error before any training.
    """
    check_primary_metric(project)
    require_rows(frame, project)
    features = model_features(project)
    experiment_id = tracking.configure()
    train, valid = frame.filter(pl.col(SPLIT) == "train"), frame.filter(pl.col(SPLIT) == "validation")
    windows = training_windows(frame)
    metric = metric_spec(project)[0]
    run_tags = {"project": project.name, **tags, **windows, "problem": project.problem,
                "code_version": code_version(), "training_set_hash": digest}
    with mlflow.start_run(run_name=f"candidate-{digest}", tags=run_tags) as run:
        rows = _log_datasets(frame, digest, project)
        candidate = train_candidate(train, valid, project, features, on_trial=lambda o: _log_trial(metric, o))
        mlflow.log_params({**candidate.params, "best_iteration": candidate.best_iteration,
                           "n_features": len(features), "problem": project.problem,
                           "classes": ",".join(candidate.model.classes or [])[:6000]})
        mlflow.log_metrics({f"valid_{metric}": candidate.validation_score, **{f"rows_{k}": v for k, v in rows.items()}})
        importance = feature_importance(candidate.model)
        mlflow.log_text(importance.write_csv(), "feature_importance.csv")
        log_bytes(run.info.run_id, plots.feature_importance_png(importance, "gain"), "plots/feature_importance.png")
        info = _log_model(frame, candidate.model)
    return candidate.model, {
        "run_id": run.info.run_id, "experiment_id": experiment_id, "model_uri": info.model_uri,
        "validation_metric": metric, "validation_score": candidate.validation_score,
        "best_iteration": candidate.best_iteration, "params": candidate.params, "n_trials": len(candidate.trials),
        "features": features, "classes": candidate.model.classes, "problem": project.problem,
        "training_set_hash": digest, "rows": rows, **windows, "importance_md": _importance_md(importance),
        **{k: tags[k] for k in ("project", "project_hash") if k in tags},
    }


def _log_model(frame: pl.DataFrame, model: TabularModel):
    example = client_frame(frame.head(5).to_pandas(), model)
    return mlflow.pyfunc.log_model(
        name=MODEL_NAME_IN_RUN, python_model=ScoringPyfunc(model), input_example=example,
        signature=optional_signature(example, model.predict(example)), pip_requirements=pip_requirements(),
    )


def _importance_md(importance: pl.DataFrame, top: int = 15) -> str:
    rows = [f"| {r['feature']} | {r['gain']:.0f} |" for r in importance.head(top).to_dicts()]
    return "| feature | gain |\n|---|---|\n" + "\n".join(rows)
