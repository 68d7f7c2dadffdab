"""LightGBM with early stopping on the validation months, tuned by optuna within a budget.

No Dagster or MLflow here: each finished trial is handed to `on_trial`, which the asset uses to
log a nested MLflow run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from mlops_assets.task import TaskConfig
from mlops_assets.training.model import TabularModel, categorical_levels

if TYPE_CHECKING:
    import optuna

LGB_METRICS: dict[str, tuple[str, str]] = {
    "auc": ("auc", "maximize"),
    "log_loss": ("binary_logloss", "minimize"),
    "rmse": ("rmse", "minimize"),
    "mae": ("l1", "minimize"),
}
OBJECTIVES = {"binary": "binary", "regression": "regression"}
DEFAULT_PARAMS = {"learning_rate": 0.05, "num_leaves": 63, "min_child_samples": 50,
                  "feature_fraction": 0.8, "bagging_fraction": 0.8, "lambda_l2": 1.0}


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    params: dict[str, float | int]
    score: float
    best_iteration: int
    seconds: float


@dataclass
class TrainedCandidate:
    model: TabularModel
    params: dict[str, float | int]
    best_iteration: int
    validation_score: float
    trials: list[TrialOutcome]


def model_categoricals(frame: pl.DataFrame, features: list[str], declared: list[str]) -> list[str]:
    """Declared categoricals plus any text feature (e.g. plane type from a feature view)."""
    return [f for f in features if f in declared or frame.schema[f] in (pl.String, pl.Categorical)]


def _search_space(trial: optuna.Trial) -> dict[str, float | int]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 15, 255, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 10, 400, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
    }


def metric_spec(task: TaskConfig) -> tuple[str, str]:
    if task.metric not in LGB_METRICS:
        raise ValueError(f"task.metric {task.metric!r} is not one of {sorted(LGB_METRICS)}")
    return LGB_METRICS[task.metric]


def train_candidate(
    train: pl.DataFrame, valid: pl.DataFrame, task: TaskConfig, features: list[str],
    on_trial: Callable[[TrialOutcome], None] | None = None, seed: int = 7,
) -> TrainedCandidate:
    """Tune within `task.tuning` (trials and seconds); the first trial is a sensible default."""
    import lightgbm as lgb  # imported when training, not by every process that loads the definitions
    import optuna

    lgb_metric, direction = metric_spec(task)
    cats = model_categoricals(train, features, task.categorical)
    template = TabularModel(None, features, categorical_levels(train.select(cats).to_pandas(), cats),  # type: ignore[arg-type]
                            task.problem, task.threshold)
    x_train, x_valid = template.frame(train.to_pandas()), template.frame(valid.to_pandas())
    d_train = lgb.Dataset(x_train, train[task.label].to_numpy(), categorical_feature=cats, free_raw_data=False,
                          params={"feature_pre_filter": False, "verbose": -1})
    d_valid = lgb.Dataset(x_valid, valid[task.label].to_numpy(), reference=d_train)
    boosters: dict[int, lgb.Booster] = {}
    outcomes: list[TrialOutcome] = []

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        params = _search_space(trial)
        booster = lgb.train(
            {**params, "objective": OBJECTIVES[task.problem], "metric": lgb_metric, "bagging_freq": 1,
             "verbose": -1, "seed": seed, "num_threads": 0, "deterministic": True, "force_col_wise": True},
            d_train, num_boost_round=task.tuning.max_rounds, valid_sets=[d_valid], valid_names=["valid"],
            callbacks=[lgb.early_stopping(task.tuning.early_stopping_rounds, verbose=False)],
        )
        boosters[trial.number] = booster
        score = float(booster.best_score["valid"][lgb_metric])
        outcome = TrialOutcome(trial.number, params, score, booster.best_iteration, time.perf_counter() - started)
        outcomes.append(outcome)
        if on_trial is not None:
            on_trial(outcome)
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed))
    study.enqueue_trial(DEFAULT_PARAMS)
    study.optimize(objective, n_trials=task.tuning.n_trials, timeout=task.tuning.timeout_seconds)
    best = {o.number: o for o in outcomes}[study.best_trial.number]
    winner = boosters[best.number]
    template.booster = lgb.Booster(model_str=winner.model_to_string(num_iteration=winner.best_iteration))
    return TrainedCandidate(template, best.params, best.best_iteration, best.score, outcomes)


def feature_importance(model: TabularModel) -> pl.DataFrame:
    """Gain importance per feature, largest first."""
    gains = model.booster.feature_importance(importance_type="gain")
    return pl.DataFrame({"feature": model.features, "gain": gains.astype(float)}).sort("gain", descending=True)
