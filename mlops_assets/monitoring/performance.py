"""Live model performance once the labels arrive, measured exactly as the offline evaluation measures it.

A label is known some time after its prediction (an arrival, tomorrow's temperature), so served
predictions are joined to labels as they come, by the project's example id: every prediction is
kept once, unlabelled ones wait with a null label, and the coverage says how much of the
traffic can be judged yet. The metrics are ``evaluation.metrics``' own, per problem type (binary:
AUC, log loss, calibration; multiclass: log loss, accuracy; regression: RMSE, MAE), so a live
figure is comparable with the model card's, and the gap to the offline test figure is the
concept-drift signal (features can look stable while the relation to the label moves).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from mlops_assets.contract import LOG_PREDICTION, PERIOD
from mlops_assets.evaluation.metrics import HIGHER_IS_BETTER, compute_metrics, slice_table
from mlops_assets.project.spec import BinSlice, Project

DELIVERIES = "label_deliveries"
SHADOW = "shadow"
PROBABILITY, PROBABILITIES = "probability", "probabilities"
CALIBRATION_BINS = 10
DEGRADATION_TOLERANCE = 0.01
HEADLINE = {"binary": ("auc", "log_loss", "brier", "recall"), "multiclass": ("log_loss", "accuracy", "macro_f1"),
            "regression": ("rmse", "mae", "r2")}


def score_column(project: Project) -> str:
    """The column a problem's metrics read: the binary probability, the class probabilities, the value."""
    return {"binary": PROBABILITY, "multiclass": PROBABILITIES, "regression": LOG_PREDICTION}[project.problem]


def slice_names(project: Project) -> list[str]:
    return [s.name if isinstance(s, BinSlice) else s for s in project.slices]


def _check_keys(serving: pl.DataFrame, truth: pl.DataFrame, keys: list[str], label: str) -> None:
    for name, frame, columns in (("serving", serving, keys), ("truth", truth, [*keys, label])):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} frame lacks column(s): {', '.join(missing)}")
    for key in keys:
        if serving.schema[key] != truth.schema[key]:
            raise ValueError(f"key {key!r} is {serving.schema[key]} in serving "
                             f"but {truth.schema[key]} in truth")
    if label in serving.columns:
        raise ValueError(f"serving frame already has a {label!r} column")


def _labels(truth: pl.DataFrame, keys: list[str], label: str, extra: list[str]) -> pl.DataFrame:
    """One label per key; identical re-deliveries collapse (and are counted), conflicting ones raise."""
    delivered = truth.filter(pl.col(label).is_not_null())
    distinct = delivered.select(*keys, label).unique()
    conflicts = distinct.filter(pl.struct(keys).is_duplicated())
    if conflicts.height:
        example = conflicts.sort(keys).row(0, named=True)
        count = conflicts.select(keys).n_unique()
        raise ValueError(f"{count} key(s) have conflicting labels, e.g. {example}")
    deliveries = delivered.group_by(keys).agg(pl.len().cast(pl.Int64).alias(DELIVERIES),
                                              *[pl.col(c).last() for c in extra])
    return distinct.join(deliveries, on=keys, how="inner")


def join_ground_truth(serving: pl.DataFrame, truth: pl.DataFrame, keys: list[str], label: str) -> pl.DataFrame:
    """Every logged prediction once, in log order, with its label (null until it arrives).

    Truth columns the log lacks (binned slice columns) come along. ``label_deliveries``
    counts the truth rows that carried the label (0: not arrived, 2+: delivered again).
    """
    _check_keys(serving, truth, keys, label)
    extra = [c for c in truth.columns if c not in serving.columns and c not in (*keys, label)]
    joined = serving.join(_labels(truth, keys, label, extra), on=keys, how="left", validate="m:1",
                          maintain_order="left", nulls_equal=False)
    return joined.with_columns(pl.col(DELIVERIES).fill_null(0))


def label_coverage(joined: pl.DataFrame, label: str) -> dict[str, float]:
    """How much of the served traffic can be judged yet; predictions whose label came twice or more."""
    predictions = joined.height
    labelled = int(joined.get_column(label).is_not_null().sum())
    repeated = int((joined.get_column(DELIVERIES) > 1).sum()) if DELIVERIES in joined.columns else 0
    return {"predictions": predictions, "labelled": labelled,
            "coverage": labelled / predictions if predictions else math.nan,
            "predictions_with_repeated_label": repeated}


def classes_of(frame: pl.DataFrame, project: Project) -> list[str]:
    """Multiclass class order: the project's, else the probability struct's fields as logged."""
    if project.classes:
        return list(project.classes)
    dtype = frame.schema.get(PROBABILITIES)
    if isinstance(dtype, pl.Struct):
        return [f.name for f in dtype.fields]
    raise ValueError("a multiclass project needs `classes`, or predictions with `probabilities`")


def truth_and_scores(frame: pl.DataFrame, project: Project,
                     classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores as `evaluation.metrics` takes them (multiclass: class codes and a probability matrix)."""
    label = frame.get_column(project.label.name)
    if project.problem != "multiclass":
        return label.cast(pl.Float64).to_numpy(), frame.get_column(score_column(project)).cast(pl.Float64).to_numpy()
    classes = classes or classes_of(frame, project)
    codes = label.cast(pl.String).replace_strict(classes, list(range(len(classes))), default=None,
                                                 return_dtype=pl.Int64)
    if codes.null_count() > label.null_count():
        unknown = label.filter(codes.is_null() & label.is_not_null()).unique().head(3).to_list()
        raise ValueError(f"labels outside the classes {classes}: {unknown}")
    probabilities = frame.get_column(PROBABILITIES).struct.unnest()
    matrix = np.column_stack([probabilities.get_column(c).cast(pl.Float64).fill_null(0.0).to_numpy()
                              if c in probabilities.columns else np.zeros(frame.height) for c in classes])
    return codes.to_numpy().astype(np.float64), matrix


def calibration_table(y_true: np.ndarray, y_prob: np.ndarray,
                      bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """Equal-width probability bins: mean predicted vs observed rate (NaN for an empty bin)."""
    prob = np.asarray(y_prob, dtype=np.float64)
    truth = np.asarray(y_true, dtype=np.float64)
    index = np.minimum((prob * bins).astype(np.int64), bins - 1)
    rows = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=prob, minlength=bins)
    observed = np.bincount(index, weights=truth, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [{"bin": b, "lower": b / bins, "upper": (b + 1) / bins, "rows": int(rows[b]),
                 "mean_predicted": float(predicted[b] / rows[b]),
                 "observed_rate": float(observed[b] / rows[b])}
                for b in range(bins)]


def expected_calibration_error(table: list[dict[str, float]]) -> float:
    """Row-weighted mean gap between predicted and observed rates, one number for a trend chart."""
    total = sum(row["rows"] for row in table)
    if not total:
        return math.nan
    gaps = (row["rows"] * abs(row["mean_predicted"] - row["observed_rate"]) for row in table if row["rows"])
    return sum(gaps) / total


def offline_deltas(live: dict[str, float], offline: dict[str, float] | None) -> dict[str, dict]:
    """Live minus offline per shared metric; ``worse_by`` > 0 means worse whatever the metric's direction."""
    deltas: dict[str, dict] = {}
    for metric, before in (offline or {}).items():
        if metric == "rows" or metric not in live:
            continue
        delta = float(live[metric]) - float(before)
        direction = HIGHER_IS_BETTER.get(metric)
        worse_by = None if direction is None else (-delta if direction else delta)
        deltas[metric] = {"offline": float(before), "live": float(live[metric]), "delta": delta,
                          "worse_by": worse_by,
                          "degraded": worse_by is not None and worse_by > DEGRADATION_TOLERANCE}
    return deltas


def _served(joined: pl.DataFrame, score: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """Scored rows users were answered with; a shadow model's rows (the same requests scored again)
    and rows without a score (refused or failed requests) are left out, and counted."""
    shadow = pl.col("arm").eq_missing(SHADOW) if "arm" in joined.columns else pl.lit(False)
    unscored = pl.col(score).is_null() & ~shadow
    counts = joined.select(shadow_rows_excluded=shadow.sum(), unscored_rows_excluded=unscored.sum()).row(0)
    return joined.filter(~shadow & ~unscored), {"shadow_rows_excluded": int(counts[0]),
                                                "unscored_rows_excluded": int(counts[1])}


def live_performance(joined: pl.DataFrame, project: Project, offline: dict[str, float] | None) -> dict:
    """Overall, per-period and per-slice metrics on labelled served rows, binary calibration, the gap to offline."""
    label, score = project.label.name, score_column(project)
    served, excluded = _served(joined, score)
    labelled = served.filter(pl.col(label).is_not_null())
    classes = classes_of(labelled, project) if project.problem == "multiclass" else None
    truth, scores = truth_and_scores(labelled, project, classes)
    overall = compute_metrics(project.problem, truth, scores, project.threshold, classes)
    slices = [s for s in slice_names(project) if s in labelled.columns and s != PERIOD]
    periods = [PERIOD] if PERIOD in labelled.columns else []
    result = {
        "problem": project.problem, "metric": project.primary_metric,
        "coverage": label_coverage(served, label) | excluded, "threshold": project.threshold,
        "overall": overall,
        "by_period": slice_table(labelled, periods, truth, scores, project.problem, project.threshold,
                                 classes).to_dicts(),
        "by_slice": slice_table(labelled, slices, truth, scores, project.problem, project.threshold,
                                classes).to_dicts(),
        "deltas": offline_deltas(overall, offline),
    }
    if project.problem == "binary":
        calibration = calibration_table(truth, scores)
        result |= {"calibration": calibration, "expected_calibration_error": expected_calibration_error(calibration)}
    return result


def _delta_line(metric: str, delta: dict) -> str:
    flag = " **degraded**" if delta["degraded"] else ""
    return f"| {metric} | {delta['offline']:.4f} | {delta['live']:.4f} | {delta['delta']:+.4f}{flag} |"


def performance_markdown(result: dict) -> str:
    """Coverage, live vs offline metrics, and (binary) the worst calibration bin, for a UI."""
    cov, overall, metrics = result["coverage"], result["overall"], HEADLINE[result["problem"]]
    lines = [f"**Live performance**: {cov['labelled']:,} of {cov['predictions']:,} served predictions "
             "labelled "
             f"({cov['coverage']:.1%}); left out: {cov['shadow_rows_excluded']:,} shadow rows, "
             f"{cov['unscored_rows_excluded']:,} unscored.", ""]
    deltas = result["deltas"]
    if deltas:
        lines += ["| metric | offline | live | delta |", "|---|---|---|---|"]
        lines += [_delta_line(m, deltas[m]) for m in metrics if m in deltas]
    else:
        lines += [f"- {m}: {overall[m]:.4f}" for m in metrics if m in overall]
    filled = [row for row in result.get("calibration", []) if row["rows"]]
    if filled:
        worst = max(filled, key=lambda row: abs(row["mean_predicted"] - row["observed_rate"]))
        lines += ["", f"- calibration error {result['expected_calibration_error']:.4f}; worst bin "
                  f"[{worst['lower']:.1f}, {worst['upper']:.1f}): predicted {worst['mean_predicted']:.3f}, "
                  f"observed {worst['observed_rate']:.3f} on {worst['rows']:,} rows"]
    return "\n".join([*lines, ""])
