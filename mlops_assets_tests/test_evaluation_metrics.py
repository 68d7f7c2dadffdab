"""Evaluation metrics for every problem type, slices, SHAP summaries and plots on synthetic data and tiny
real LightGBM models; every metric is pinned to its sklearn counterpart."""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from sklearn import metrics as skm

from mlops_assets.evaluation import plots
from mlops_assets.evaluation.evaluate import metrics_markdown
from mlops_assets.evaluation.metrics import (
    BINARY_METRICS,
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    binary_metrics,
    compute_metrics,
    higher_is_better,
    regression_metrics,
    shap_importance,
    slice_table,
    sliced_metrics,
    worst_slice_gap,
)
from mlops_assets.evaluation.multiclass import MULTICLASS_METRICS, multiclass_metrics, recall_name
from mlops_assets.explain import top_contributions

FEATURES = ["signal", "weak", "noise_a", "noise_b"]
PNG_MAGIC = b"\x89PNG"


def _features(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, len(FEATURES)))


@pytest.fixture(scope="module")
def classifier_data() -> tuple[lgb.LGBMClassifier, np.ndarray, np.ndarray]:
    """Only ``signal`` (strongly) and ``weak`` (slightly) drive the label."""
    x = _features(2000, seed=1)
    logit = 2.5 * x[:, 0] + 0.5 * x[:, 1]
    y = (np.random.default_rng(2).random(2000) < 1 / (1 + np.exp(-logit))).astype(int)
    model = lgb.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, random_state=0, n_jobs=1)
    model.fit(x, y)
    return model, x, y


@pytest.fixture(scope="module")
def multiclass_data() -> tuple[lgb.LGBMClassifier, np.ndarray, np.ndarray]:
    """Three classes driven by ``signal`` and ``weak``; class 2 is rare."""
    x = _features(2400, seed=8)
    y = np.where(x[:, 0] > 0.4, 0, np.where(x[:, 1] > 1.0, 2, 1))
    flip = np.random.default_rng(9).random(y.size) < 0.1
    y[flip] = np.random.default_rng(10).integers(0, 3, flip.sum())
    model = lgb.LGBMClassifier(n_estimators=30, num_leaves=15, verbose=-1, random_state=0, n_jobs=1)
    model.fit(x, y)
    return model, x, y


@pytest.fixture(scope="module")
def regressor_data() -> tuple[lgb.LGBMRegressor, np.ndarray, np.ndarray]:
    x = _features(1500, seed=3)
    y = 3.0 * x[:, 0] + 0.3 * x[:, 1] + np.random.default_rng(4).normal(scale=0.5, size=1500)
    model = lgb.LGBMRegressor(n_estimators=30, num_leaves=15, verbose=-1, random_state=0, n_jobs=1)
    model.fit(x, y)
    return model, x, y


def test_perfect_predictions_give_auc_one_and_brier_zero() -> None:
    y = np.array([0, 1, 0, 1, 1])
    result = binary_metrics(y, y.astype(float), threshold=0.5)
    assert set(BINARY_METRICS) | {"rows", "positive_rate"} == set(result)
    assert result["auc"] == 1.0 and result["pr_auc"] == 1.0
    assert result["brier"] == 0.0 and result["accuracy"] == 1.0
    assert result["log_loss"] == pytest.approx(1e-15, abs=1e-12)
    assert result["rows"] == 5 and result["positive_rate"] == pytest.approx(0.6)


def test_binary_metrics_agree_with_sklearn(classifier_data) -> None:
    model, x, y = classifier_data
    prob = model.predict_proba(x)[:, 1]
    rounded = np.round(prob, 2)  # ties exercise the tie handling of AUC and average precision
    for scores in (prob, rounded):
        result = binary_metrics(y, scores, threshold=0.4)
        predicted = (scores >= 0.4).astype(int)
        assert result["auc"] == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
        assert result["pr_auc"] == pytest.approx(skm.average_precision_score(y, scores), abs=1e-12)
        assert result["log_loss"] == pytest.approx(skm.log_loss(y, scores), rel=1e-9)
        assert result["brier"] == pytest.approx(skm.brier_score_loss(y, scores), abs=1e-12)
        assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
        assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, predicted))
        assert result["recall"] == pytest.approx(skm.recall_score(y, predicted))
        assert result["precision"] == pytest.approx(skm.precision_score(y, predicted))


def test_threshold_metrics_on_a_hand_made_example() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    prob = np.array([0.9, 0.6, 0.3, 0.6, 0.2, 0.1])
    at_half = binary_metrics(y, prob, threshold=0.5)  # predicted 1 1 0 1 0 0
    assert at_half["accuracy"] == pytest.approx(4 / 6)
    assert at_half["recall"] == pytest.approx(2 / 3)
    assert at_half["precision"] == pytest.approx(2 / 3)
    at_point_six = binary_metrics(y, prob, threshold=0.6)  # >= is positive: same predictions
    assert at_point_six["recall"] == pytest.approx(2 / 3)
    strict = binary_metrics(y, prob, threshold=0.95)  # nothing predicted positive
    assert strict["recall"] == 0.0 and math.isnan(strict["precision"])
    assert strict["balanced_accuracy"] == 0.5  # never positive: no better than a constant


def test_single_class_gives_nan_ranking_metrics() -> None:
    result = binary_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.5)
    assert math.isnan(result["auc"]) and math.isnan(result["pr_auc"]) and math.isnan(result["recall"])
    assert math.isnan(result["balanced_accuracy"])
    assert result["accuracy"] == 1.0


def test_binary_inputs_are_validated() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        binary_metrics(np.array([0, 1]), np.array([-2.0, 3.0]), threshold=0.5)
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics(np.array([1, 2]), np.array([0.2, 0.3]), threshold=0.5)
    with pytest.raises(ValueError, match="values"):
        binary_metrics(np.array([0, 1, 1]), np.array([0.2, 0.3]), threshold=0.5)


def test_regression_metrics_agree_with_sklearn(regressor_data) -> None:
    model, x, y = regressor_data
    pred = model.predict(x)
    result = regression_metrics(y, pred)
    assert set(result) == set(REGRESSION_METRICS) | {"rows"}
    assert result["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, pred)))
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert result["r2"] == pytest.approx(skm.r2_score(y, pred))
    assert math.isnan(regression_metrics(np.ones(3), np.array([1.0, 2.0, 3.0]))["r2"])


def test_multiclass_metrics_agree_with_sklearn(multiclass_data) -> None:
    model, x, y = multiclass_data
    prob = model.predict_proba(x)
    classes = ["left", "middle", "rare"]
    result = multiclass_metrics(y, prob, classes)
    predicted = prob.argmax(axis=1)
    assert set(result) == {*MULTICLASS_METRICS, "rows", *(recall_name(c) for c in classes)}
    assert result["log_loss"] == pytest.approx(skm.log_loss(y, prob), rel=1e-9)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(y, predicted, average="macro"))
    per_class = skm.recall_score(y, predicted, average=None)
    assert [result[recall_name(c)] for c in classes] == pytest.approx(per_class.tolist())


def test_multiclass_metrics_edge_cases() -> None:
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    result = multiclass_metrics(np.array([0, 1, 1]), prob, ["a", "b", "c"])
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert math.isnan(result["recall_c"]) and result["recall_b"] == 0.5  # no support for c: undefined
    assert result["macro_f1"] == pytest.approx(skm.f1_score([0, 1, 1], [0, 1, 0], average="macro"))
    assert recall_name("light rain|heavy") == "recall_light rain_heavy"
    with pytest.raises(ValueError, match="codes 0..2"):
        multiclass_metrics(np.array([0, 3, 1]), prob, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\(rows, 4\)"):
        multiclass_metrics(np.array([0, 1, 1]), prob, ["a", "b", "c", "d"])
    assert higher_is_better("recall_rain") and higher_is_better("macro_f1") and not higher_is_better("log_loss")
    with pytest.raises(ValueError, match="unknown metric"):
        higher_is_better("gini")


def test_compute_metrics_dispatches_and_rejects_unknown_problems(multiclass_data) -> None:
    y = np.array([0, 1, 1, 0])
    prob = np.array([0.2, 0.7, 0.6, 0.4])
    assert compute_metrics("binary", y, prob, 0.5) == binary_metrics(y, prob, 0.5)
    assert compute_metrics("regression", y, prob, 0.5) == regression_metrics(y, prob)
    model, x, labels = multiclass_data
    matrix = model.predict_proba(x[:50])
    named = compute_metrics("multiclass", labels[:50], matrix, 0.5, ["p", "q", "r"])
    assert named == multiclass_metrics(labels[:50], matrix, ["p", "q", "r"])
    assert "recall_0" in compute_metrics("multiclass", labels[:50], matrix, 0.5)
    with pytest.raises(ValueError, match="ranking"):
        compute_metrics("ranking", y, prob, 0.5)
    with pytest.raises(ValueError, match="ranking"):
        sliced_metrics(pl.DataFrame({"y": y, "p": prob}), "y", "p", [], "ranking", 0.5)


def test_multiclass_slice_table_on_a_probability_matrix(multiclass_data) -> None:
    model, x, y = multiclass_data
    prob = model.predict_proba(x)
    frame = pl.DataFrame({"band": np.where(x[:, 2] > 0, "high", "low")})
    sliced = slice_table(frame, ["band"], y, prob, "multiclass", 0.5, ["a", "b", "c"])
    assert sliced.columns == ["slice", "value", "rows", *MULTICLASS_METRICS]
    high = frame.get_column("band").to_numpy() == "high"
    expected = multiclass_metrics(y[high], prob[high], ["a", "b", "c"])
    got = sliced.filter(pl.col("value") == "high").row(0, named=True)
    assert got["rows"] == high.sum() and got["macro_f1"] == pytest.approx(expected["macro_f1"])
    with pytest.raises(ValueError, match="scores for a frame"):
        slice_table(frame, ["band"], y, prob[:10], "multiclass", 0.5, ["a", "b", "c"])


def _scored_frame(classifier_data) -> pl.DataFrame:
    model, x, y = classifier_data
    rng = np.random.default_rng(5)
    group = rng.choice(["g1", "g2", "g3"], size=y.size).tolist()
    group[:3] = [None, None, None]
    segment = np.where(np.arange(y.size) < 10, "tiny", "big")
    hour = rng.integers(0, 5, y.size)
    frame = pl.DataFrame(
        {"y": y, "p": model.predict_proba(x)[:, 1], "group": group, "segment": segment, "hour": hour}
    )
    return frame.with_columns(pl.when(pl.col("segment") == "tiny").then(0).otherwise(pl.col("y")).alias("y"))


def test_sliced_metrics_rows_add_up_and_single_class_slice_is_nan(classifier_data) -> None:
    frame = _scored_frame(classifier_data)
    sliced = sliced_metrics(frame, "y", "p", ["group", "segment", "hour"], "binary", 0.5)
    assert sliced.columns[:3] == ["slice", "value", "rows"] and set(BINARY_METRICS) <= set(sliced.columns)
    totals = sliced.group_by("slice").agg(pl.col("rows").sum())
    assert dict(totals.iter_rows()) == dict.fromkeys(["group", "segment", "hour"], frame.height)
    groups = sliced.filter(pl.col("slice") == "group")
    assert groups.get_column("value").to_list() == ["g1", "g2", "g3", "(missing)"]
    assert groups.filter(pl.col("value") == "(missing)").get_column("rows").item() == 3
    tiny = sliced.filter(pl.col("value") == "tiny").row(0, named=True)
    assert tiny["rows"] == 10 and math.isnan(tiny["auc"]) and tiny["accuracy"] >= 0.0
    hours = sliced.filter(pl.col("slice") == "hour").get_column("value").to_list()
    assert hours == ["0", "1", "2", "3", "4"]
    hour_two = frame.filter(pl.col("hour") == 2)
    expected = binary_metrics(hour_two["y"].to_numpy(), hour_two["p"].to_numpy(), 0.5)
    got = sliced.filter((pl.col("slice") == "hour") & (pl.col("value") == "2")).row(0, named=True)
    assert got["auc"] == pytest.approx(expected["auc"]) and got["rows"] == hour_two.height


def test_sliced_metrics_names_missing_slice_columns(classifier_data) -> None:
    frame = _scored_frame(classifier_data)
    with pytest.raises(ValueError, match="region"):
        sliced_metrics(frame, "y", "p", ["group", "region"], "binary", 0.5)


def test_sliced_metrics_regression(regressor_data) -> None:
    model, x, y = regressor_data
    frame = pl.DataFrame({"y": y, "pred": model.predict(x), "band": np.where(x[:, 2] > 0, "high", "low")})
    sliced = sliced_metrics(frame, "y", "pred", ["band"], "regression", 0.5)
    assert sliced.columns == ["slice", "value", "rows", *REGRESSION_METRICS]
    assert sliced.get_column("rows").sum() == frame.height


def test_sliced_metrics_covers_every_row_of_a_large_frame_per_slice_column() -> None:
    rng = np.random.default_rng(6)
    rows = 100_000
    frame = pl.DataFrame(
        {
            "y": rng.integers(0, 2, rows),
            "p": rng.random(rows),
            "group": rng.choice([f"C{i}" for i in range(16)], rows),
            "site": rng.choice(["s1", "s2", "s3"], rows),
            "place": rng.choice([f"D{i}" for i in range(60)], rows),
            "hour": rng.integers(0, 21, rows),
        }
    )
    sliced = sliced_metrics(frame, "y", "p", ["group", "site", "place", "hour"], "binary", 0.5)
    assert sliced.height == 100
    assert sliced.group_by("slice").agg(pl.col("rows").sum())["rows"].to_list() == [rows] * 4


def test_worst_slice_gap_picks_worst_sizeable_slice() -> None:
    sliced = pl.DataFrame(
        {
            "slice": ["group", "group", "group", "site"],
            "value": ["g1", "g2", "g3", "s1"],
            "rows": [500, 5, 300, 800],
            "auc": [0.80, 0.40, 0.70, float("nan")],
            "log_loss": [0.40, 0.90, 0.50, 0.45],
        }
    )
    overall = {"auc": 0.78, "log_loss": 0.42}
    gap = worst_slice_gap(sliced, overall, "auc", min_rows=100)
    assert gap["slice"] == "group" and gap["value"] == "g3" and gap["slices_considered"] == 2
    assert gap["worst"] == pytest.approx(0.70) and gap["gap"] == pytest.approx(0.08)
    lower_better = worst_slice_gap(sliced, overall, "log_loss", min_rows=100)
    assert lower_better["value"] == "g3" and lower_better["gap"] == pytest.approx(0.08)
    assert worst_slice_gap(sliced, overall, "auc", min_rows=1)["value"] == "g2"
    ahead = worst_slice_gap(sliced, {"auc": 0.60, "log_loss": 0.42}, "auc", min_rows=100)
    assert ahead["gap"] == pytest.approx(-0.10)  # every sizeable slice beats overall: nothing trails
    nothing = worst_slice_gap(sliced, overall, "auc", min_rows=10_000)
    assert nothing["slice"] is None and nothing["slices_considered"] == 0 and math.isnan(nothing["gap"])
    assert not HIGHER_IS_BETTER["log_loss"] and HIGHER_IS_BETTER["auc"]


def test_shap_additivity_and_ranking(classifier_data) -> None:
    model, x, _ = classifier_data
    contributions = model.booster_.predict(x, pred_contrib=True)
    raw = model.booster_.predict(x, raw_score=True)
    np.testing.assert_allclose(contributions.sum(axis=1), raw, rtol=1e-6, atol=1e-6)
    importance = shap_importance(contributions, FEATURES)
    assert importance.columns == ["feature", "mean_abs_shap", "mean_shap"]
    assert importance.get_column("feature").to_list()[:2] == ["signal", "weak"]
    assert importance.get_column("mean_abs_shap").is_sorted(descending=True)
    with pytest.raises(ValueError, match="shape"):
        shap_importance(contributions[:, :-1], FEATURES)


def test_top_contributions_sorted_by_magnitude(classifier_data) -> None:
    model, x, _ = classifier_data
    row = model.booster_.predict(x[:1], pred_contrib=True)[0]
    top = top_contributions(row, FEATURES, k=3)
    assert len(top) == 3
    magnitudes = [abs(entry["contribution"]) for entry in top]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert magnitudes[0] == pytest.approx(np.abs(row[:-1]).max())
    assert top_contributions(np.array([0.1, -0.5, 0.3]), ["a", "b", "c"], k=2) == [
        {"feature": "b", "contribution": -0.5},
        {"feature": "c", "contribution": 0.3},
    ]


def test_metrics_markdown_has_both_tables(classifier_data) -> None:
    frame = _scored_frame(classifier_data)
    overall = binary_metrics(frame["y"].to_numpy(), frame["p"].to_numpy(), 0.5)
    sliced = sliced_metrics(frame, "y", "p", ["group"], "binary", 0.5)
    report = metrics_markdown(overall, sliced, ["auc", "log_loss"])
    assert report.index("## Overall metrics") < report.index("## Metrics by slice")
    assert f"| auc | {overall['auc']:.4f} |" in report
    assert "| slice | value | rows | auc | log_loss |" in report
    assert "| group | (missing) | 3 |" in report


def test_multiclass_shap_blocks_stack_into_one_importance(multiclass_data) -> None:
    model, x, _ = multiclass_data
    contributions = model.booster_.predict(x[:200], pred_contrib=True)
    assert contributions.shape == (200, 3 * (len(FEATURES) + 1))
    importance = shap_importance(contributions.reshape(-1, len(FEATURES) + 1), FEATURES)
    assert importance.get_column("feature").to_list()[:2] == ["signal", "weak"]


def test_plots_return_png(classifier_data, regressor_data, multiclass_data) -> None:
    model, x, y = classifier_data
    prob = model.predict_proba(x)[:, 1]
    contributions = model.booster_.predict(x, pred_contrib=True)
    importance = pl.DataFrame({"feature": FEATURES, "gain": model.booster_.feature_importance("gain")})
    regressor, rx, ry = regressor_data
    images = [
        plots.roc_curve_png(y, prob),
        plots.pr_curve_png(y, prob),
        plots.calibration_png(y, prob, bins=10),
        plots.feature_importance_png(importance, "gain"),
        plots.shap_summary_png(contributions, FEATURES),
        plots.residuals_png(ry, regressor.predict(rx)),
        plots.confusion_matrix_png(multiclass_data[2], multiclass_data[0].predict_proba(multiclass_data[1]),
                                   ["a", "b", "c"]),
    ]
    assert all(isinstance(image, bytes) and image.startswith(PNG_MAGIC) for image in images)
