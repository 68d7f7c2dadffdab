"""Log a candidate to MLflow: parent run with data lineage, nested trial runs, the pyfunc model."""

from __future__ import annotations

from importlib.metadata import version

import mlflow
import mlflow.data
import polars as pl

from mlops_assets.evaluation import plots
from mlops_assets.task import TaskConfig
from mlops_assets.tracking import MlflowResource, code_version, log_bytes
from mlops_assets.training.dataset import SPLIT
from mlops_assets.training.model import PyfuncModel, TabularModel, client_frame, optional_signature
from mlops_assets.training.tuning import TrialOutcome, feature_importance, train_candidate

MODEL_NAME_IN_RUN = "model"


def pip_requirements() -> list[str]:
    """Pinned explicitly: MLflow's inference would import-trace the process (slow, noisy)."""
    return [f"{p}=={version(p)}" for p in ("mlflow", "lightgbm", "pandas", "numpy", "cloudpickle")]


def _log_trial(metric: str, outcome: TrialOutcome) -> None:
    with mlflow.start_run(run_name=f"trial-{outcome.number}", nested=True):
        mlflow.log_params(outcome.params)
        mlflow.log_metrics({f"valid_{metric}": outcome.score, "best_iteration": outcome.best_iteration,
                            "seconds": outcome.seconds})


def _log_datasets(frame: pl.DataFrame, digest: str, task: TaskConfig) -> dict[str, int]:
    rows = {}
    for split in ("train", "validation", "test"):
        part = frame.filter(pl.col(SPLIT) == split)
        rows[split] = part.height
        dataset = mlflow.data.from_pandas(part.head(1000).to_pandas(), name=f"training_set_{split}",
                                          digest=f"{digest}-{split}", targets=task.label)
        mlflow.log_input(dataset, context=split, tags={"rows": str(part.height), "training_set_hash": digest})
    return rows


def log_candidate(frame: pl.DataFrame, digest: str, task: TaskConfig, features: list[str],
                  tracking: MlflowResource, tags: dict[str, str]) -> tuple[TabularModel, dict]:
    """Train (tuned) inside an MLflow run and log everything needed to reproduce and judge it."""
    experiment_id = tracking.configure()
    train = frame.filter(pl.col(SPLIT) == "train")
    valid = frame.filter(pl.col(SPLIT) == "validation")
    run_tags = {**tags, "task": task.name, "code_version": code_version(), "training_set_hash": digest}
    with mlflow.start_run(run_name=f"candidate-{digest}", tags=run_tags) as run:
        rows = _log_datasets(frame, digest, task)
        candidate = train_candidate(train, valid, task, features, on_trial=lambda o: _log_trial(task.metric, o))
        mlflow.log_params({**candidate.params, "best_iteration": candidate.best_iteration,
                           "n_features": len(features), "problem": task.problem})
        mlflow.log_metrics({f"valid_{task.metric}": candidate.validation_score,
                            **{f"rows_{k}": v for k, v in rows.items()}})
        importance = feature_importance(candidate.model)
        mlflow.log_text(importance.write_csv(), "feature_importance.csv")
        log_bytes(run.info.run_id, plots.feature_importance_png(importance, "gain"), "plots/feature_importance.png")
        example = client_frame(frame.head(5).to_pandas(), candidate.model)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN, python_model=PyfuncModel(candidate.model), input_example=example,
            signature=optional_signature(example, candidate.model.predict(example)),
            pip_requirements=pip_requirements(),
        )
    return candidate.model, {
        "run_id": run.info.run_id, "experiment_id": experiment_id, "model_uri": info.model_uri,
        "validation_score": candidate.validation_score, "best_iteration": candidate.best_iteration,
        "params": candidate.params, "n_trials": len(candidate.trials), "features": features,
        "training_set_hash": digest, "rows": rows,
        "importance_md": _importance_md(importance),
    }


def _importance_md(importance: pl.DataFrame, top: int = 15) -> str:
    rows = [f"| {r['feature']} | {r['gain']:.0f} |" for r in importance.head(top).to_dicts()]
    return "| feature | gain |\n|---|---|\n" + "\n".join(rows)
