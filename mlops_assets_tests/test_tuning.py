"""The tuning budget: the first trial always finishes; later trials stop at the deadline, at their best round."""

from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
import optuna
import pytest

from mlops_assets.training import tuning
from mlops_assets.training.tuning import _Pruning, train_candidate, worth_another_trial
from mlops_assets_tests.test_gate import frame, project, split


def test_a_trial_starts_only_while_the_budget_left_covers_the_first_trials_time() -> None:
    assert worth_another_trial(10.0, 4.0)
    assert not worth_another_trial(3.0, 4.0)
    assert not worth_another_trial(0.0, 0.0)


def test_a_spent_budget_still_lets_the_first_trial_finish_and_starts_no_other() -> None:
    spec = project("binary", tuning={"n_trials": 4, "timeout_seconds": 0.001, "max_rounds": 40,
                                     "early_stopping_rounds": 5, "max_bin": 15})
    df = frame("binary")
    candidate = train_candidate(split(df, "train"), split(df, "validation"), spec, ["group", "x1", "x2"])
    assert len(candidate.trials) == 1 and not candidate.trials[0].pruned
    assert candidate.best_iteration > 1  # early-stopped, not cut at its first round


def _toy_datasets() -> tuple[lgb.Dataset, lgb.Dataset]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=1.0, size=2000) > 0).astype(float)
    train = lgb.Dataset(x[:1500], y[:1500], params={"verbose": -1})
    return train, lgb.Dataset(x[1500:], y[1500:], reference=train)


@pytest.mark.parametrize("deadline_at_call", [1, 8])
def test_past_the_deadline_a_trial_ends_at_its_best_round_so_far(monkeypatch: pytest.MonkeyPatch,
                                                                 deadline_at_call: int) -> None:
    clock = iter(range(1000))
    monkeypatch.setattr(tuning, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    trial = optuna.create_study(direction="maximize").ask()
    pruning = _Pruning(trial, "auc", higher_is_better=True, deadline=deadline_at_call - 0.5)
    train, valid = _toy_datasets()
    booster = lgb.train({"objective": "binary", "metric": "auc", "verbose": -1, "learning_rate": 0.3}, train,
                        num_boost_round=100, valid_sets=[valid], valid_names=["valid"], callbacks=[pruning])
    assert next(clock) == deadline_at_call + 1  # boosting stopped at the round that found the deadline passed
    assert booster.best_iteration == pruning.best[0] + 1 <= deadline_at_call + 1
    assert booster.current_iteration() == booster.best_iteration  # the rounds after the best are dropped
    assert booster.best_score["valid"]["auc"] == pytest.approx(pruning.best[1])


def test_without_a_deadline_a_trial_boosts_its_rounds() -> None:
    trial = optuna.create_study(direction="maximize").ask()
    train, valid = _toy_datasets()
    booster = lgb.train({"objective": "binary", "metric": "auc", "verbose": -1}, train, num_boost_round=30,
                        valid_sets=[valid], valid_names=["valid"],
                        callbacks=[_Pruning(trial, "auc", higher_is_better=True, deadline=None)])
    assert booster.current_iteration() == 30
