"""Evaluation metrics, slices, SHAP summaries and plots on synthetic data and tiny real LightGBM models."""

from __future__ import annotations

import math

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from sklearn import metrics as skm

from mlops_assets.evaluation import plots
from mlops_assets.evaluation.metrics import (
    BINARY_METRICS,
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    binary_metrics,
    compute_metrics,
    metrics_markdown,
    regression_metrics,
    shap_importance,
    sliced_metrics,
    top_contributions,
    worst_slice_gap,
)

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


def test_single_class_gives_nan_ranking_metrics() -> None:
    result = binary_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]), threshold=0.5)
    assert math.isnan(result["auc"]) and math.isnan(result["pr_auc"]) and math.isnan(result["recall"])
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


def test_compute_metrics_dispatches_and_rejects_unknown_problems() -> None:
    y = np.array([0, 1, 1, 0])
    prob = np.array([0.2, 0.7, 0.6, 0.4])
    assert compute_metrics("binary", y, prob, 0.5) == binary_metrics(y, prob, 0.5)
    assert compute_metrics("regression", y, prob, 0.5) == regression_metrics(y, prob)
    with pytest.raises(ValueError, match="multiclass"):
        compute_metrics("multiclass", y, prob, 0.5)
    with pytest.raises(ValueError, match="ranking"):
        sliced_metrics(pl.DataFrame({"y": y, "p": prob}), "y", "p", [], "ranking", 0.5)


def _scored_frame(classifier_data) -> pl.DataFrame:
    model, x, y = classifier_data
    rng = np.random.default_rng(5)
    carrier = rng.choice(["AA", "DL", "UA"], size=y.size).tolist()
    carrier[:3] = [None, None, None]
    segment = np.where(np.arange(y.size) < 10, "tiny", "big")
    hour = rng.integers(0, 5, y.size)
    frame = pl.DataFrame(
        {"y": y, "p": model.predict_proba(x)[:, 1], "carrier": carrier, "segment": segment, "hour": hour}
    )
    return frame.with_columns(pl.when(pl.col("segment") == "tiny").then(0).otherwise(pl.col("y")).alias("y"))


def test_sliced_metrics_rows_add_up_and_single_class_slice_is_nan(classifier_data) -> None:
    frame = _scored_frame(classifier_data)
    sliced = sliced_metrics(frame, "y", "p", ["carrier", "segment", "hour"], "binary", 0.5)
    assert sliced.columns[:3] == ["slice", "value", "rows"] and set(BINARY_METRICS) <= set(sliced.columns)
    totals = sliced.group_by("slice").agg(pl.col("rows").sum())
    assert dict(totals.iter_rows()) == dict.fromkeys(["carrier", "segment", "hour"], frame.height)
    carriers = sliced.filter(pl.col("slice") == "carrier")
    assert carriers.get_column("value").to_list() == ["AA", "DL", "UA", "(missing)"]
    assert carriers.filter(pl.col("value") == "(missing)").get_column("rows").item() == 3
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
    with pytest.raises(ValueError, match="origin_airport"):
        sliced_metrics(frame, "y", "p", ["carrier", "origin_airport"], "binary", 0.5)


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
            "carrier": rng.choice([f"C{i}" for i in range(16)], rows),
            "origin": rng.choice(["EWR", "JFK", "LGA"], rows),
            "dest": rng.choice([f"D{i}" for i in range(60)], rows),
            "hour": rng.integers(0, 21, rows),
        }
    )
    sliced = sliced_metrics(frame, "y", "p", ["carrier", "origin", "dest", "hour"], "binary", 0.5)
    assert sliced.height == 100
    assert sliced.group_by("slice").agg(pl.col("rows").sum())["rows"].to_list() == [rows] * 4


def test_worst_slice_gap_picks_worst_sizeable_slice() -> None:
    sliced = pl.DataFrame(
        {
            "slice": ["carrier", "carrier", "carrier", "origin"],
            "value": ["AA", "DL", "UA", "JFK"],
            "rows": [500, 5, 300, 800],
            "auc": [0.80, 0.40, 0.70, float("nan")],
            "log_loss": [0.40, 0.90, 0.50, 0.45],
        }
    )
    overall = {"auc": 0.78, "log_loss": 0.42}
    gap = worst_slice_gap(sliced, overall, "auc", min_rows=100)
    assert gap["slice"] == "carrier" and gap["value"] == "UA" and gap["slices_considered"] == 2
    assert gap["worst"] == pytest.approx(0.70) and gap["gap"] == pytest.approx(0.08)
    lower_better = worst_slice_gap(sliced, overall, "log_loss", min_rows=100)
    assert lower_better["value"] == "UA" and lower_better["gap"] == pytest.approx(0.08)
    assert worst_slice_gap(sliced, overall, "auc", min_rows=1)["value"] == "DL"
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
    sliced = sliced_metrics(frame, "y", "p", ["carrier"], "binary", 0.5)
    report = metrics_markdown(overall, sliced, ["auc", "log_loss"])
    assert report.index("## Overall metrics") < report.index("## Metrics by slice")
    assert f"| auc | {overall['auc']:.4f} |" in report
    assert "| slice | value | rows | auc | log_loss |" in report
    assert "| carrier | (missing) | 3 |" in report


def test_plots_return_png(classifier_data, regressor_data) -> None:
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
    ]
    assert all(isinstance(image, bytes) and image.startswith(PNG_MAGIC) for image in images)
