"""Overall and per-slice metrics, slice gaps and SHAP summaries for the governance gate and model card.

The binary metrics are computed with plain numpy rather than per-call sklearn functions: a sliced
report calls them once per slice value, and sklearn's input validation would dominate the cost.
The tests pin every metric to its sklearn counterpart.

Conventions that matter for a gate:

- A prediction is positive when ``probability >= threshold``.
- Undefined metrics are ``NaN``, never an exception and never a made-up 0 or 1: AUC and PR-AUC
  when a slice holds a single class, recall with no positives, precision with no predicted
  positives, R² when the target is constant. ``worst_slice_gap`` skips NaN values.
- PR-AUC is average precision (step-wise, no interpolation), as sklearn's ``average_precision_score``.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

BINARY_METRICS: tuple[str, ...] = ("auc", "pr_auc", "log_loss", "brier", "accuracy", "recall", "precision")
REGRESSION_METRICS: tuple[str, ...] = ("rmse", "mae", "r2")
HIGHER_IS_BETTER: dict[str, bool] = {
    "auc": True, "pr_auc": True, "log_loss": False, "brier": False, "accuracy": True,
    "recall": True, "precision": True, "rmse": False, "mae": False, "r2": True,
}  # fmt: skip
PROBLEMS: tuple[str, ...] = ("binary", "regression")
MISSING_VALUE = "(missing)"
LOG_LOSS_EPS = 1e-15

_ROW_INDEX = "__evaluation_row__"
_NAN = float("nan")


def paired_arrays(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as finite 1-D float arrays of equal length, so a bad join fails loudly here."""
    truth = np.asarray(y_true, dtype=np.float64).ravel()
    score = np.asarray(y_score, dtype=np.float64).ravel()
    if truth.shape != score.shape:
        raise ValueError(f"y_true has {truth.size} values but the scores have {score.size}")
    if not (np.isfinite(truth).all() and np.isfinite(score).all()):
        raise ValueError("labels and scores must be finite (no NaN, null or inf)")
    return truth, score


def _check_binary(truth: np.ndarray, prob: np.ndarray, threshold: float) -> None:
    """Raw log-odds or 1/2 labels would give plausible-looking but wrong metrics: reject them."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], got {threshold}")
    if not np.isin(truth, (0.0, 1.0)).all():
        raise ValueError("binary labels must be 0 or 1")
    if prob.size and (prob.min() < 0.0 or prob.max() > 1.0):
        raise ValueError("binary scores must be probabilities within [0, 1]")


def _roc_auc(truth: np.ndarray, prob: np.ndarray, positives: float) -> float:
    """Mann-Whitney U with tie-averaged ranks: equal to the trapezoidal ROC area."""
    negatives = truth.size - positives
    if positives == 0 or negatives == 0:
        return _NAN
    _, inverse, counts = np.unique(prob, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][truth == 1.0].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def _average_precision(truth: np.ndarray, prob: np.ndarray, positives: float) -> float:
    """Sum over distinct thresholds of recall gained times precision, as sklearn does."""
    if positives == 0 or positives == truth.size:
        return _NAN
    order = np.argsort(-prob, kind="mergesort")
    sorted_prob, sorted_truth = prob[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_prob)), sorted_prob.size - 1]
    true_pos = np.cumsum(sorted_truth)[last_of_tie]
    precision = true_pos / (last_of_tie + 1)
    recall = true_pos / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def binary_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict[str, float]:
    """All of BINARY_METRICS plus ``rows`` and ``positive_rate``.

    AUC and PR-AUC are NaN when only one class is present (a ranking metric needs both); recall is
    NaN without positives and precision NaN without predicted positives. Log loss clips the
    probabilities to [1e-15, 1 - 1e-15] so a confident miss costs a large but finite amount.
    """
    truth, prob = paired_arrays(y_true, y_prob)
    _check_binary(truth, prob, threshold)
    rows = truth.size
    if rows == 0:
        return {name: _NAN for name in BINARY_METRICS} | {"rows": 0.0, "positive_rate": _NAN}
    positives = float(truth.sum())
    clipped = np.clip(prob, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    predicted = prob >= threshold
    true_pos = float(np.count_nonzero(predicted & (truth == 1.0)))
    predicted_pos = float(np.count_nonzero(predicted))
    return {
        "auc": _roc_auc(truth, prob, positives),
        "pr_auc": _average_precision(truth, prob, positives),
        "log_loss": float(-np.mean(truth * np.log(clipped) + (1.0 - truth) * np.log1p(-clipped))),
        "brier": float(np.mean((prob - truth) ** 2)),
        "accuracy": float(np.mean(predicted == (truth == 1.0))),
        "recall": true_pos / positives if positives else _NAN,
        "precision": true_pos / predicted_pos if predicted_pos else _NAN,
        "rows": float(rows),
        "positive_rate": positives / rows,
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² plus ``rows``; R² is NaN for a constant target (no variance to explain)."""
    truth, pred = paired_arrays(y_true, y_pred)
    if truth.size == 0:
        return {name: _NAN for name in REGRESSION_METRICS} | {"rows": 0.0}
    error = pred - truth
    squared = float(np.sum(error**2))
    total = float(np.sum((truth - truth.mean()) ** 2))
    return {
        "rmse": math.sqrt(squared / truth.size),
        "mae": float(np.mean(np.abs(error))),
        "r2": 1.0 - squared / total if total > 0 else _NAN,
        "rows": float(truth.size),
    }


def _check_problem(problem: str) -> None:
    if problem not in PROBLEMS:
        raise ValueError(f"unknown problem {problem!r}; expected one of {', '.join(PROBLEMS)}")


def compute_metrics(
    problem: str, y_true: ArrayLike, y_score: ArrayLike, threshold: float
) -> dict[str, float]:
    """One entry point for both task types; ``threshold`` is ignored for regression."""
    _check_problem(problem)
    if problem == "binary":
        return binary_metrics(np.asarray(y_true), np.asarray(y_score), threshold)
    return regression_metrics(np.asarray(y_true), np.asarray(y_score))


def _metric_columns(problem: str) -> tuple[str, ...]:
    return (*BINARY_METRICS, "positive_rate") if problem == "binary" else REGRESSION_METRICS


def _slice_groups(frame: pl.DataFrame, column: str) -> list[tuple[str, np.ndarray]]:
    """Row positions per value, grouped once by polars, in the column's natural order, nulls last."""
    grouped = (
        frame.select(pl.col(column))
        .with_row_index(_ROW_INDEX)
        .group_by(column)
        .agg(pl.col(_ROW_INDEX))
        .sort(column, nulls_last=True)
    )
    values = grouped.get_column(column).cast(pl.String).fill_null(MISSING_VALUE)
    positions = grouped.get_column(_ROW_INDEX)
    return [(value, rows.to_numpy()) for value, rows in zip(values, positions, strict=True)]


def _check_columns(frame: pl.DataFrame, label: str, score: str, slices: list[str]) -> None:
    missing_slices = [column for column in slices if column not in frame.columns]
    if missing_slices:
        raise ValueError(f"slice column(s) not in the frame: {', '.join(missing_slices)}")
    for role, column in (("label", label), ("score", score)):
        if column not in frame.columns:
            raise ValueError(f"{role} column {column!r} not in the frame")
        if frame.get_column(column).null_count():
            raise ValueError(f"{role} column {column!r} contains nulls")


def sliced_metrics(
    frame: pl.DataFrame, label: str, score: str, slices: list[str], problem: str, threshold: float
) -> pl.DataFrame:
    """One row per (slice column, value) so a model that is good on average but bad for a segment shows.

    Values are strings (nulls as ``(missing)``); a slice column's rows add up to the frame's.
    """
    _check_problem(problem)
    _check_columns(frame, label, score, slices)
    truth = frame.get_column(label).to_numpy()
    scores = frame.get_column(score).to_numpy()
    metric_names = _metric_columns(problem)
    records: list[dict[str, object]] = []
    for column in slices:
        for value, rows in _slice_groups(frame, column):
            metrics = compute_metrics(problem, truth[rows], scores[rows], threshold)
            named = {name: metrics[name] for name in metric_names}
            records.append({"slice": column, "value": value, "rows": rows.size} | named)
    schema = {"slice": pl.String, "value": pl.String, "rows": pl.Int64}
    return pl.DataFrame(records, schema=schema | dict.fromkeys(metric_names, pl.Float64))


def worst_slice_gap(
    sliced: pl.DataFrame, overall: dict[str, float], metric: str, min_rows: int
) -> dict[str, object]:
    """How far the worst sizeable slice falls behind the overall value, for a fairness-style gate.

    Slices under ``min_rows`` or with a NaN metric are ignored (too noisy or undefined). With no
    eligible slice, ``slice`` and ``value`` are None and ``worst`` and ``gap`` are NaN.
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(HIGHER_IS_BETTER)}")
    if metric not in sliced.columns or metric not in overall:
        raise ValueError(f"metric {metric!r} is missing from the sliced frame or the overall metrics")
    eligible = sliced.filter((pl.col("rows") >= min_rows) & pl.col(metric).is_finite())
    result: dict[str, object] = {"metric": metric, "slice": None, "value": None, "worst": _NAN, "gap": _NAN}
    if eligible.height:
        values = eligible.get_column(metric).to_numpy()
        position = int(np.argmin(values) if HIGHER_IS_BETTER[metric] else np.argmax(values))
        worst = float(values[position])
        result |= {
            "slice": eligible.get_column("slice")[position],
            "value": eligible.get_column("value")[position],
            "worst": worst,
            "gap": abs(float(overall[metric]) - worst),
        }
    return result | {"slices_considered": eligible.height}


def _contribution_matrix(contributions: np.ndarray, feature_names: list[str]) -> np.ndarray:
    matrix = np.asarray(contributions, dtype=np.float64)
    expected = len(feature_names) + 1
    if matrix.ndim != 2 or matrix.shape[1] != expected:
        raise ValueError(
            f"contributions must have shape (rows, {expected}) for {len(feature_names)} features plus the "
            f"bias column, got {matrix.shape}"
        )
    if matrix.shape[0] == 0:
        raise ValueError("contributions has no rows")
    return matrix[:, :-1]


def shap_importance(contributions: np.ndarray, feature_names: list[str]) -> pl.DataFrame:
    """Global importance from LightGBM's exact TreeSHAP values (``pred_contrib=True``), bias excluded.

    Unlike split counts or gain, mean |SHAP| is measured in model output units (log-odds for a
    binary model) and is consistent across features.
    """
    matrix = _contribution_matrix(contributions, feature_names)
    return pl.DataFrame(
        {
            "feature": feature_names,
            "mean_abs_shap": np.abs(matrix).mean(axis=0),
            "mean_shap": matrix.mean(axis=0),
        },
        schema={"feature": pl.String, "mean_abs_shap": pl.Float64, "mean_shap": pl.Float64},
    ).sort("mean_abs_shap", descending=True, maintain_order=True)


def top_contributions(
    contribution_row: np.ndarray, feature_names: list[str], k: int
) -> list[dict[str, float | str]]:
    """The ``k`` features that moved one prediction the most, to explain a single served request.

    Accepts the row with or without LightGBM's trailing bias value; the bias is never returned.
    """
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    row = np.asarray(contribution_row, dtype=np.float64).ravel()
    if row.size == len(feature_names) + 1:
        row = row[:-1]
    if row.size != len(feature_names):
        raise ValueError(f"contribution row has {row.size} values for {len(feature_names)} features")
    order = np.argsort(-np.abs(row), kind="stable")[:k]
    return [{"feature": feature_names[index], "contribution": float(row[index])} for index in order]


def _cell(value: object) -> str:
    """Markdown-safe cell: floats with 4 decimals, row counts as integers, pipes escaped."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]


def metrics_markdown(overall: dict[str, float], sliced: pl.DataFrame, metrics: list[str]) -> str:
    """A model-card section that a reviewer can read without opening the run."""
    unknown = [name for name in metrics if name not in overall or name not in sliced.columns]
    if unknown:
        raise ValueError(f"metric(s) missing from the overall metrics or sliced frame: {', '.join(unknown)}")
    overall_rows: list[list[object]] = [[name, float(overall[name])] for name in metrics]
    if "rows" in overall:
        overall_rows.insert(0, ["rows", int(overall["rows"])])
    lines = ["## Overall metrics", "", *_table(["metric", "value"], overall_rows), ""]
    lines += ["## Metrics by slice", ""]
    if sliced.height == 0:
        return "\n".join([*lines, "_No slices._", ""])
    columns = ["slice", "value", "rows", *metrics]
    slice_rows = [list(row) for row in sliced.select(columns).iter_rows()]
    return "\n".join([*lines, *_table(columns, slice_rows), ""])
