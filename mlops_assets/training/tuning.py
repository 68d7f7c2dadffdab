"""LightGBM with early stopping on the validation periods, tuned by optuna within a budget.

The objective and the early-stopping metric follow the project's problem and primary metric.
No Dagster or MLflow here: each finished trial is handed to `on_trial`, which the asset uses to
log a nested MLflow run. The first trial is `DEFAULT_PARAMS`, overridden by the project's
`tuning.start_params` (e.g. promoted from an experimentation notebook).

The budget is `timeout_seconds`, respected inside a trial: once spent, a later trial stops boosting at
its best round so far. A later trial starts only while the budget left is at least what the first
trial took (a trial cut short early is budget spent on nothing). The first trial always finishes,
so a busy machine gets the start parameters' model, never a truncated one. The training Dataset is binned
once (`max_bin`) and shared by every trial.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from mlops_assets.project.spec import Project
from mlops_assets.training.model import TabularModel, categorical_levels, encode_labels, label_classes

if TYPE_CHECKING:
    import lightgbm as lgb
    import optuna

# (problem, primary metric) -> (LightGBM metric, optuna direction); `None` is the problem's default.
LGB_METRICS: dict[tuple[str, str | None], tuple[str, str]] = {
    ("binary", "auc"): ("auc", "maximize"),
    ("binary", "pr_auc"): ("average_precision", "maximize"),
    ("binary", None): ("binary_logloss", "minimize"),
    ("multiclass", None): ("multi_logloss", "minimize"),
    ("regression", "mae"): ("l1", "minimize"),
    ("regression", "rmse"): ("rmse", "minimize"),
    ("regression", None): ("l2", "minimize"),
}
OBJECTIVES = {"binary": "binary", "multiclass": "multiclass", "regression": "regression"}
DEFAULT_PARAMS = {"learning_rate": 0.05, "num_leaves": 63, "min_child_samples": 50,
                  "feature_fraction": 0.8, "bagging_fraction": 0.8, "lambda_l2": 1.0}


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    params: dict[str, float | int]
    score: float
    best_iteration: int
    seconds: float
    pruned: bool = False


@dataclass
class TrainedCandidate:
    model: TabularModel
    params: dict[str, float | int]
    best_iteration: int
    validation_score: float
    validation_metric: str
    trials: list[TrialOutcome]


def metric_spec(project: Project) -> tuple[str, str]:
    """The LightGBM metric that early-stops and ranks trials, and whether higher is better."""
    key = (project.problem, project.primary_metric)
    return LGB_METRICS.get(key) or LGB_METRICS[(project.problem, None)]


def model_categoricals(frame: pl.DataFrame, features: list[str], declared: list[str]) -> list[str]:
    """Declared categoricals plus any text feature (e.g. a type column from a feature view)."""
    return [f for f in features if f in declared or frame.schema[f] in (pl.String, pl.Categorical)]


def first_trial_params(project: Project) -> dict[str, float | int]:
    """The defaults with the project's `tuning.start_params`; an integer parameter must be a whole number."""
    params: dict[str, float | int] = dict(DEFAULT_PARAMS)
    for name, value in (project.tuning.start_params or {}).items():
        whole = isinstance(DEFAULT_PARAMS[name], int)
        if whole and float(value) != int(value):
            raise ValueError(f"tuning.start_params.{name} must be a whole number, not {value}")
        params[name] = int(value) if whole else float(value)
    return params


def _search_space(trial: optuna.Trial) -> dict[str, float | int]:
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.15, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 15, 255, log=True),
        "min_child_samples": trial.suggest_int("min_child_samples", 10, 400, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.5, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 10.0, log=True),
    }


def _template(train: pl.DataFrame, valid: pl.DataFrame, project: Project, features: list[str]) -> TabularModel:
    """The model without its booster: features, frozen categorical levels and class order."""
    missing = [f for f in [*features, project.label.name] if f not in train.columns]
    if missing:
        raise KeyError(f"training set lacks columns {missing}")
    cats = model_categoricals(train, features, project.categorical)
    label = project.label.name
    classes = label_classes(project.problem, project.classes, train[label], valid[label])
    levels = categorical_levels(train.select(cats).to_pandas(), cats)
    return TabularModel(None, features, levels, project.problem, classes, project.threshold)


def _datasets(template: TabularModel, train: pl.DataFrame, valid: pl.DataFrame, label: str,
              max_bin: int = 255) -> tuple[lgb.Dataset, lgb.Dataset]:
    import lightgbm as lgb

    cats = list(template.categorical_levels)
    y_train = encode_labels(train[label], template.problem, template.classes)
    y_valid = encode_labels(valid[label], template.problem, template.classes)
    d_train = lgb.Dataset(template.frame(train.to_pandas()), y_train, categorical_feature=cats, free_raw_data=False,
                          params={"feature_pre_filter": False, "verbose": -1, "max_bin": max_bin})
    return d_train, lgb.Dataset(template.frame(valid.to_pandas()), y_valid, reference=d_train)


PRUNE_EVERY = 10
PRUNE_WARMUP = 50


class _Pruning:
    """Reports the validation metric every PRUNE_EVERY rounds; a trial worse than the median of the earlier
    trials at the same round (after PRUNE_WARMUP) stops there, so the budget goes to promising ones.
    Past `deadline` (a `time.monotonic()` value) the trial ends at its best round so far."""

    def __init__(self, trial: optuna.Trial, metric: str, higher_is_better: bool, deadline: float | None) -> None:
        self.trial, self.metric, self.last = trial, metric, (0, float("nan"))
        self.sign, self.deadline = (1.0 if higher_is_better else -1.0), deadline
        self.best: tuple[int, float, list] = (0, float("-inf"), [])

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        import lightgbm as lgb
        import optuna

        value = next(float(v) for _, name, v, _ in env.evaluation_result_list if name == self.metric)
        if self.sign * value > self.best[1]:
            self.best = (env.iteration, self.sign * value, list(env.evaluation_result_list))
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise lgb.callback.EarlyStopException(self.best[0], self.best[2])
        if (env.iteration + 1) % PRUNE_EVERY:
            return
        self.last = (env.iteration + 1, value)
        self.trial.report(value, env.iteration + 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at round {env.iteration + 1}")


def worth_another_trial(seconds_left: float, first_trial_seconds: float) -> bool:
    """Whether a trial may start: one that would be cut off long before its early stop wastes the budget."""
    return seconds_left > 0 and seconds_left >= first_trial_seconds


def train_candidate(
    train: pl.DataFrame, valid: pl.DataFrame, project: Project, features: list[str],
    on_trial: Callable[[TrialOutcome], None] | None = None, seed: int = 7,
) -> TrainedCandidate:
    """Tune within `project.tuning` (trials and seconds); the first trial is `first_trial_params`; later trials
    that trail the median at the same round are pruned."""
    import lightgbm as lgb  # imported when training, not by every process that loads the definitions
    import optuna

    lgb_metric, direction = metric_spec(project)
    template = _template(train, valid, project, features)
    d_train, d_valid = _datasets(template, train, valid, project.label.name, project.tuning.max_bin)
    fixed = {"objective": OBJECTIVES[project.problem], "metric": lgb_metric, "bagging_freq": 1, "verbose": -1,
             "seed": seed, "num_threads": 0, "deterministic": True, "force_col_wise": True,
             **({"num_class": len(template.classes)} if template.classes else {})}
    boosters: dict[int, lgb.Booster] = {}
    outcomes: list[TrialOutcome] = []

    deadline = time.monotonic() + project.tuning.timeout_seconds

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        params = _search_space(trial)
        pruning = _Pruning(trial, lgb_metric, direction == "maximize", deadline if trial.number else None)
        try:
            booster = lgb.train(
                {**params, **fixed}, d_train, num_boost_round=project.tuning.max_rounds, valid_sets=[d_valid],
                valid_names=["valid"],
                callbacks=[lgb.early_stopping(project.tuning.early_stopping_rounds, verbose=False), pruning],
            )
        except optuna.TrialPruned:
            step, value = pruning.last
            outcome = TrialOutcome(trial.number, params, value, step, time.perf_counter() - started, pruned=True)
            outcomes.append(outcome)
            if on_trial is not None:
                on_trial(outcome)
            raise
        boosters[trial.number] = booster
        score = float(booster.best_score["valid"][lgb_metric])
        outcome = TrialOutcome(trial.number, params, score, booster.best_iteration, time.perf_counter() - started)
        outcomes.append(outcome)
        if on_trial is not None:
            on_trial(outcome)
        return score

    def stop_when_short(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if not worth_another_trial(deadline - time.monotonic(), outcomes[0].seconds if outcomes else 0.0):
            study.stop()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=PRUNE_WARMUP, interval_steps=PRUNE_EVERY)
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    study.enqueue_trial(first_trial_params(project))
    study.optimize(objective, n_trials=project.tuning.n_trials, timeout=project.tuning.timeout_seconds,
                   callbacks=[stop_when_short])
    best = {o.number: o for o in outcomes}[study.best_trial.number]
    winner = boosters[best.number]
    template.booster = lgb.Booster(model_str=winner.model_to_string(num_iteration=winner.best_iteration))
    return TrainedCandidate(template, best.params, best.best_iteration, best.score, lgb_metric, outcomes)


def feature_importance(model: TabularModel) -> pl.DataFrame:
    """Gain importance per feature, largest first."""
    gains = model.booster.feature_importance(importance_type="gain")
    return pl.DataFrame({"feature": model.features, "gain": gains.astype(float)}).sort("gain", descending=True)
