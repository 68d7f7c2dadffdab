"""Data and prediction drift of served requests against the training set, as an Evidently 0.7 report.

Works for any project: numbers and categories (declared categorical, or not numeric) get
Evidently's default test for their kind, and the prediction column is whatever the project
predicts (a probability, a value, a class).

The share of drifted features is graded against the drift the training data shows between its
own periods (``drift_calibration``), not against a fixed threshold alone.

Why not ``DataDriftPreset``: on one month of requests (~28k rows x 49 columns) it takes several
seconds on two cores (see ``benchmarks/monitoring.py``), because it tests every column three times
(per-column ``ValueDrift``, the dataset count, and the table it renders) and draws two plotly
figures per column. The budget is 2 s. This report runs the *same* Evidently statistical tests,
chosen per column exactly as the preset chooses them (``get_stattest``: at these sizes Wasserstein
distance for numbers, Jensen-Shannon for categories and numbers with at most 5 values, each with
Evidently's default threshold), once per column, in one custom Evidently metric rendered as a
table. Only the prediction column gets Evidently's distribution plots.

The reference is a fixed-seed sample of the training set (``reference_sample``), drawn once and
passed to every report, so that two days' reports compare against the same rows.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field

import pandas as pd
import polars as pl

from mlops_assets.contract import LOG_PREDICTION

REFERENCE_ROWS = 30_000
SEED = 7
TABLE_COLUMNS = ["column", "type", "stattest", "score", "threshold", "drifted"]
NO_VALUES = "no values on one side"

# id(sample) -> (weak reference to the sample, rows of the frame it was drawn from, seed)
_SAMPLES: dict[int, tuple[weakref.ref[pl.DataFrame], int, int]] = {}


@dataclass(frozen=True)
class DriftSummary:
    """What a monitoring UI shows; ``per_feature`` holds Evidently's test, score, threshold and verdict."""

    share_drifted: float
    drifted_features: list[str]
    per_feature: dict[str, dict]
    prediction_drift: dict
    reference_rows: int
    current_rows: int
    sampled: bool
    seconds: float
    reference_source_rows: int = 0
    current_source_rows: int = 0
    notes: list[str] = field(default_factory=list)


def reference_sample(reference: pl.DataFrame, rows: int = REFERENCE_ROWS, seed: int = SEED) -> pl.DataFrame:
    """Fixed-seed sample of the training set, made once and reused by every drift report.

    The same rows every time keep reports comparable from day to day, and 30k rows keep a report
    fast. The sample is remembered (weakly, by identity) so a report can say it compared against
    a sample and of how many rows. A frame that is already small enough is returned as is.
    """
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    if reference.height <= rows:
        return reference
    sample = reference.sample(n=rows, seed=seed, shuffle=False)
    key = id(sample)
    _SAMPLES[key] = (weakref.ref(sample, lambda _: _SAMPLES.pop(key, None)), reference.height, seed)
    return sample


def _sample_origin(frame: pl.DataFrame) -> tuple[int, int] | None:
    """(source rows, seed) when ``frame`` came from ``reference_sample``, else None."""
    entry = _SAMPLES.get(id(frame))
    if entry is None or entry[0]() is not frame:
        return None
    return entry[1], entry[2]


def column_kinds(reference: pl.DataFrame, current: pl.DataFrame, columns: list[str],
           declared: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """Numerical and categorical columns; a column must be present, and of the same kind, on both sides.

    A column declared categorical is one whatever its type (a numeric code is not a quantity).
    """
    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if missing:
        raise ValueError(f"column(s) missing from the reference or the current frame: {', '.join(missing)}")
    numerical, categorical = [], []
    for column in columns:
        numeric = [frame.schema[column].is_numeric() for frame in (reference, current)]
        if column in declared:
            categorical.append(column)
            continue
        if numeric[0] != numeric[1]:
            raise ValueError(f"column {column!r} is numeric on one side only: "
                             f"{reference.schema[column]} vs {current.schema[column]}")
        (numerical if numeric[0] else categorical).append(column)
    return numerical, categorical


def _prediction_column(reference: pl.DataFrame, current: pl.DataFrame, prediction: str) -> str | None:
    return prediction if prediction in reference.columns and prediction in current.columns else None


def _null_shares(frame: pl.DataFrame, columns: list[str]) -> dict[str, float]:
    if frame.height == 0:
        return dict.fromkeys(columns, math.nan)
    return frame.select(pl.col(columns).null_count() / frame.height).row(0, named=True)


def _prediction_summary(table: pd.DataFrame, prediction: str, used: str | None) -> dict:
    if used is None:
        return {"score": None, "drifted": None,
                "skipped": f"no {prediction!r} column on both sides "
                           "(reference: pass the offline model's scores as that column)"}
    row = table.loc[used]
    return {"column": used, "score": float(row["score"]), "stattest": row["stattest"],
            "threshold": float(row["threshold"]), "drifted": bool(row["drifted"])}


def _per_feature(table: pd.DataFrame, features: list[str], ref_nulls: dict,
                 cur_nulls: dict) -> dict[str, dict]:
    return {
        f: {"score": float(table.at[f, "score"]), "stattest": table.at[f, "stattest"],
            "threshold": float(table.at[f, "threshold"]), "drifted": bool(table.at[f, "drifted"]),
            "type": table.at[f, "type"], "null_share_reference": ref_nulls[f],
            "null_share_current": cur_nulls[f]}
        for f in features
    }


def _sampling_notes(reference: pl.DataFrame, current_source: int, current_rows: int) -> list[str]:
    origin = _sample_origin(reference)
    notes = [f"reference: {reference.height:,}-row sample (seed {origin[1]}) of {origin[0]:,} training rows, "
             "the same rows for every report" if origin
             else f"reference: all {reference.height:,} rows given"]
    if current_rows < current_source:
        notes.append(f"current: {current_rows:,}-row sample (seed {SEED}) of {current_source:,} served rows")
    else:
        notes.append(f"current: all {current_source:,} served rows")
    return notes


def aligned(reference: pl.DataFrame, current: pl.DataFrame,
             columns: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both sides in one type per column: the log's JSON gives ints where training has floats, or nulls only."""
    casts = {c: pl.Float64 if reference.schema[c].is_numeric() or reference.schema[c] == pl.Null else pl.String
             for c in columns if c in reference.columns and c in current.columns
             and reference.schema[c] != current.schema[c]}
    if not casts:
        return reference, current
    return (reference.with_columns([pl.col(c).cast(t, strict=False) for c, t in casts.items()]),
            current.with_columns([pl.col(c).cast(t, strict=False) for c, t in casts.items()]))


def drift_report(reference: pl.DataFrame, current: pl.DataFrame, features: list[str],
                 prediction: str = LOG_PREDICTION, current_rows: int = 60_000,
                 categorical: tuple[str, ...] = ()) -> tuple[DriftSummary, str]:
    """Per-feature and prediction drift of ``current`` against ``reference``, and the Evidently HTML.

    Pass ``reference_sample(training_set)``, made once. ``current`` above ``current_rows`` is sampled
    (seed 7): the tests are already decisive at that size and the cost grows with rows.
    """
    start = time.perf_counter()
    if reference.height == 0 or current.height == 0:
        raise ValueError(f"drift needs rows on both sides: reference {reference.height}, "
                         f"current {current.height}")
    used_prediction = _prediction_column(reference, current, prediction)
    columns = [*features, *([used_prediction] if used_prediction else [])]
    aligned_reference, aligned_current = aligned(reference, current, columns)
    numerical, categorical_columns = column_kinds(aligned_reference, aligned_current, columns, categorical)
    sampled_current = (aligned_current.sample(n=current_rows, seed=SEED) if current.height > current_rows
                       else aligned_current)
    from mlops_assets.monitoring.evidently_report import run_report  # evidently takes ~2 s to import

    table, html = run_report(aligned_reference, sampled_current, numerical, categorical_columns, columns,
                             used_prediction)
    per_feature = _per_feature(table, features, _null_shares(reference, features),
                               _null_shares(sampled_current, features))
    drifted = [f for f in features if per_feature[f]["drifted"]]
    origin = _sample_origin(reference)
    summary = DriftSummary(
        share_drifted=len(drifted) / len(features) if features else 0.0, drifted_features=drifted,
        per_feature=per_feature, prediction_drift=_prediction_summary(table, prediction, used_prediction),
        reference_rows=reference.height, current_rows=sampled_current.height,
        sampled=origin is not None or sampled_current.height < current.height,
        seconds=time.perf_counter() - start,
        reference_source_rows=origin[0] if origin else reference.height, current_source_rows=current.height,
        notes=_sampling_notes(reference, current.height, sampled_current.height),
    )
    return summary, html


def _null_rises(summary: DriftSummary, points: float = 0.05) -> list[str]:
    """Features whose share of missing values rose: invisible to the tests, which drop missing values."""
    return [f"{f} ({v['null_share_reference']:.1%} -> {v['null_share_current']:.1%})"
            for f, v in summary.per_feature.items()
            if v["null_share_current"] - v["null_share_reference"] > points]


def drift_markdown(summary: DriftSummary, calibration: str | None = None) -> str:
    """A short drift section for a UI: the verdict first, then the drifted features with their tests."""
    lines = [f"**Data drift**: {len(summary.drifted_features)} of {len(summary.per_feature)} features "
             "drifted "
             f"({summary.share_drifted:.0%}), {summary.current_rows:,} current vs {summary.reference_rows:,} "
             f"reference rows, {summary.seconds:.2f} s.", ""]
    if calibration:
        lines.append(f"- {calibration}")
    lines += [f"- {note}" for note in summary.notes]
    pred = summary.prediction_drift
    if pred.get("skipped"):
        lines.append(f"- prediction drift skipped: {pred['skipped']}")
    else:
        lines.append(f"- prediction drift: {'**drifted**' if pred['drifted'] else 'none'} "
                     f"({pred['stattest']} {pred['score']:.4f}, threshold {pred['threshold']:.4f})")
    rises = _null_rises(summary)
    if rises:
        lines.append(f"- more missing values than in training: {', '.join(rises)}")
    if summary.drifted_features:
        lines += ["", "| feature | test | score | threshold |", "|---|---|---|---|"]
        lines += [f"| {f} | {summary.per_feature[f]['stattest']} | {summary.per_feature[f]['score']:.4f} | "
                  f"{summary.per_feature[f]['threshold']:.4f} |" for f in summary.drifted_features]
    return "\n".join([*lines, ""])
