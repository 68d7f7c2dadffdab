"""The compiled trees score exactly as LightGBM: binary, multiclass and regression boosters with
categorical splits, every missing-value type and values at the thresholds; what they cannot reproduce
is refused, and a difference keeps LightGBM scoring."""

from __future__ import annotations

import dataclasses
import pickle

import lightgbm as lgb
import numpy as np
import pytest

from mlops_assets.compiled_trees import agrees, compile_trees, probe_matrix
from mlops_assets.scoring_model import ScoringModel

LEVELS = [f"c{i}" for i in range(40)]  # > 32 levels: category bitsets of two words


def _data(rows: int = 3000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Numbers with NaNs and exact zeros, and a 40-level category (as codes), with a signal in both."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    x[rng.random(rows) < 0.15, 0] = np.nan
    x[rng.random(rows) < 0.3, 1] = 0.0
    x[:, 2] = rng.integers(0, len(LEVELS), rows)
    y = x[:, 3] + np.nan_to_num(x[:, 0]) + (x[:, 2] % 3 == 0) - (x[:, 1] == 0)
    return x, y


def _booster(objective: str, **params: object) -> tuple[lgb.Booster, ScoringModel]:
    x, y = _data()
    label = {"binary": (y > y.mean()).astype(int), "multiclass": np.digitize(y, np.quantile(y, [0.33, 0.66]))}
    target = label.get(objective, np.exp(y / 4) if objective == "poisson" else y)
    extra = {"num_class": 3} if objective == "multiclass" else {}
    booster = lgb.train({"objective": objective, "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1,
                         "max_cat_to_onehot": 2, "cat_smooth": 1, **extra, **params},
                        lgb.Dataset(x, target, categorical_feature=[2]), num_boost_round=30)
    problem = {"binary": "binary", "multiclass": "multiclass"}.get(objective, "regression")
    model = ScoringModel(booster, ["a", "b", "level", "d"], {"level": LEVELS}, problem,  # type: ignore[arg-type]
                         ["low", "mid", "high"] if problem == "multiclass" else None)
    return booster, model


def _bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64)


@pytest.mark.parametrize(("objective", "params"), [
    ("binary", {}), ("multiclass", {}), ("regression", {}), ("regression", {"zero_as_missing": True}),
    ("huber", {}), ("binary", {"use_missing": False})])
def test_scores_equal_lightgbm_to_the_bit(objective: str, params: dict[str, object]) -> None:
    booster, model = _booster(objective, **params)
    trees = compile_trees(booster)
    assert trees is not None
    x, _ = _data(500, seed=7)
    probe = probe_matrix(trees.numeric_splits(), 4, {2: len(LEVELS)})
    for matrix in (x, probe, probe[:1]):
        ours, theirs = trees.predict(matrix), booster.predict(matrix, num_threads=1)
        assert ours.shape == theirs.shape
        assert np.array_equal(_bits(ours), _bits(theirs))
    assert model.compile() == ""
    assert model.compiled
    assert np.array_equal(_bits(model.predict_matrix(probe)), _bits(booster.predict(probe, num_threads=1)))


def test_the_check_fails_on_a_different_leaf_and_a_different_threshold() -> None:
    booster, _ = _booster("binary")
    trees = compile_trees(booster)
    assert trees is not None
    probe = probe_matrix(trees.numeric_splits(), 4, {2: len(LEVELS)})
    assert agrees(trees, booster, probe)
    leaves = trees.leaf_value.copy()
    leaves[len(leaves) // 2] = np.nextafter(leaves[len(leaves) // 2], np.inf)
    assert not agrees(dataclasses.replace(trees, leaf_value=leaves), booster, probe)
    numeric = np.flatnonzero((trees.decision & 1) == 0)
    thresholds = trees.threshold.copy()
    thresholds[numeric[0]] = np.nextafter(thresholds[numeric[0]], -np.inf)
    assert not agrees(dataclasses.replace(trees, threshold=thresholds), booster, probe)


def test_what_is_not_reproduced_keeps_lightgbm() -> None:
    booster, model = _booster("poisson")  # an exp() transform of the raw score: not compiled
    assert compile_trees(booster) is None
    reason = model.compile()
    assert "objective" in reason
    assert not model.compiled
    x, _ = _data(50, seed=3)
    assert np.array_equal(model.predict_matrix(x), booster.predict(x, num_threads=1))


def test_a_pickled_model_carries_no_compiled_trees() -> None:
    """The registry stores the model: its compiled arrays are rebuilt (and checked) at every load."""
    _, model = _booster("binary")
    assert model.compile() == ""
    again = pickle.loads(pickle.dumps(model))
    assert not again.compiled
    assert again.compile() == ""
