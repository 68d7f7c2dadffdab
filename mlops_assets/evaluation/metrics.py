"""Overall and per-slice metrics and slice gaps for the governance gate and model card, per problem type.

The binary metrics are computed with plain numpy rather than per-call sklearn functions: a sliced
report calls them once per slice value, and sklearn's input validation would dominate the cost.
The tests pin every metric to its sklearn counterpart. Multiclass metrics live in `multiclass`.

Conventions that matter for a gate:

- A binary prediction is positive when ``probability >= threshold``; a multiclass prediction is
  the most probable class; multiclass labels are class codes (column indices of the scores).
- Undefined metrics are ``NaN``, never an exception and never a made-up 0 or 1: AUC and PR-AUC
  when a slice holds a single class, recall with no positives, precision with no predicted
  positives, balanced accuracy without both classes, R² when the target is constant.
  ``worst_slice_gap`` skips NaN values.
- PR-AUC is average precision (step-wise, no interpolation), as sklearn's ``average_precision_score``.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from numpy.typing import ArrayLike

from mlops_assets.evaluation.multiclass import (
    LOG_LOSS_EPS,
    MULTICLASS_METRICS,
    RECALL_PREFIX,
    multiclass_metrics,
)

BINARY_METRICS: tuple[str, ...] = ("auc", "pr_auc", "log_loss", "brier", "accuracy", "balanced_accuracy",
                                   "recall", "precision")
REGRESSION_METRICS: tuple[str, ...] = ("rmse", "mae", "r2")
PROBLEM_METRICS: dict[str, tuple[str, ...]] = {
    "binary": BINARY_METRICS, "multiclass": MULTICLASS_METRICS, "regression": REGRESSION_METRICS,
}
HIGHER_IS_BETTER: dict[str, bool] = {
    "auc": True, "pr_auc": True, "log_loss": False, "brier": False, "accuracy": True, "balanced_accuracy": True,
    "recall": True, "precision": True, "macro_f1": True, "rmse": False, "mae": False, "r2": True,
}  # fmt: skip
PROBLEMS: tuple[str, ...] = tuple(PROBLEM_METRICS)
MISSING_VALUE = "(missing)"

_ROW_INDEX = "__evaluation_row__"
_NAN = float("nan")


def higher_is_better(metric: str) -> bool:
    """Direction of a metric, including the per-class `recall_<class>` ones; unknown is an error."""
    if metric.startswith(RECALL_PREFIX):
        return True
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(HIGHER_IS_BETTER)}")
    return HIGHER_IS_BETTER[metric]


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

    AUC, PR-AUC and balanced accuracy are NaN when only one class is present; recall is NaN
    without positives and precision NaN without predicted positives. Log loss clips the
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
    true_neg = float(np.count_nonzero(~predicted & (truth == 0.0)))
    predicted_pos = float(np.count_nonzero(predicted))
    negatives = rows - positives
    return {
        "auc": _roc_auc(truth, prob, positives),
        "pr_auc": _average_precision(truth, prob, positives),
        "log_loss": float(-np.mean(truth * np.log(clipped) + (1.0 - truth) * np.log1p(-clipped))),
        "brier": float(np.mean((prob - truth) ** 2)),
        "accuracy": float(np.mean(predicted == (truth == 1.0))),
        "balanced_accuracy": (true_pos / positives + true_neg / negatives) / 2 if positives and negatives else _NAN,
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
    problem: str, y_true: ArrayLike, y_score: ArrayLike, threshold: float, classes: list[str] | None = None
) -> dict[str, float]:
    """One entry point for every problem; ``threshold`` is binary only, ``classes`` multiclass only.

    Multiclass labels are class codes; without ``classes`` they are named by their code.
    """
    _check_problem(problem)
    if problem == "binary":
        return binary_metrics(np.asarray(y_true), np.asarray(y_score), threshold)
    if problem == "multiclass":
        scores = np.asarray(y_score)
        names = classes if classes is not None else [str(i) for i in range(scores.shape[-1])]
        return multiclass_metrics(y_true, scores, names)
    return regression_metrics(np.asarray(y_true), np.asarray(y_score))


def metric_columns(problem: str) -> tuple[str, ...]:
    """The metrics a sliced table holds for a problem (per-class recalls stay in the overall figures)."""
    _check_problem(problem)
    return (*BINARY_METRICS, "positive_rate") if problem == "binary" else PROBLEM_METRICS[problem]


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
    truth, scores = frame.get_column(label).to_numpy(), frame.get_column(score).to_numpy()
    return slice_table(frame, slices, truth, scores, problem, threshold)


def slice_table(
    frame: pl.DataFrame, slices: list[str], truth: np.ndarray, scores: np.ndarray, problem: str,
    threshold: float, classes: list[str] | None = None,
) -> pl.DataFrame:
    """`sliced_metrics` on label and score arrays aligned with `frame` (a multiclass score is a matrix)."""
    _check_problem(problem)
    missing_slices = [column for column in slices if column not in frame.columns]
    if missing_slices:
        raise ValueError(f"slice column(s) not in the frame: {', '.join(missing_slices)}")
    if len(truth) != frame.height or len(scores) != frame.height:
        raise ValueError(f"{len(truth)} labels and {len(scores)} scores for a frame of {frame.height} rows")
    names = metric_columns(problem)
    records: list[dict[str, object]] = []
    for column in slices:
        for value, rows in _slice_groups(frame, column):
            metrics = compute_metrics(problem, truth[rows], scores[rows], threshold, classes)
            records.append({"slice": column, "value": value, "rows": rows.size} | {n: metrics[n] for n in names})
    schema = {"slice": pl.String, "value": pl.String, "rows": pl.Int64}
    return pl.DataFrame(records, schema=schema | dict.fromkeys(names, pl.Float64))


def worst_slice_gap(
    sliced: pl.DataFrame, overall: dict[str, float], metric: str, min_rows: int
) -> dict[str, object]:
    """How far the worst sizeable slice trails the overall value, for a fairness-style gate.

    Slices under ``min_rows`` or with a NaN metric are ignored (too noisy or undefined). ``gap`` is
    positive when the worst slice is worse than overall (negative if every slice beats it). With
    no eligible slice, ``slice`` and ``value`` are None and ``worst`` and ``gap`` are NaN.
    """
    higher = higher_is_better(metric)
    if metric not in sliced.columns or metric not in overall:
        raise ValueError(f"metric {metric!r} is missing from the sliced frame or the overall metrics")
    eligible = sliced.filter((pl.col("rows") >= min_rows) & pl.col(metric).is_finite())
    result: dict[str, object] = {"metric": metric, "slice": None, "value": None, "worst": _NAN, "gap": _NAN}
    if eligible.height:
        values = eligible.get_column(metric).to_numpy()
        position = int(np.argmin(values) if higher else np.argmax(values))
        worst = float(values[position])
        result |= {
            "slice": eligible.get_column("slice")[position],
            "value": eligible.get_column("value")[position],
            "worst": worst,
            "gap": (float(overall[metric]) - worst) * (1.0 if higher else -1.0),
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
