"""Training/serving skew: the feature values a model was served, compared with the offline computation.

The training set's own feature code, run on the served request as of its prediction time, says
what each feature *should* have been. A served value that differs points at a stale online
store, an event pushed late, a TTL handled differently, a transform that is not shared, or a
type change. A rate per feature says which.

Rules: both missing is a match, one missing is a mismatch; numbers match within 1e-9, relative
to the larger magnitude and absolute below 1 (windowed sums round differently in the last bits
from one computation to the next; NaN counts as missing, as the prediction log writes NaN as
null); anything else is compared exactly as text. Rows present on one side only are counted, never silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import polars as pl

from mlops_assets.contract import PREDICTION_TIME
from mlops_assets.features.request_features import calendar_features
from mlops_assets.project.spec import Project

OfflineFeatures = Callable[[Project, pl.DataFrame, dict[str, pl.DataFrame]], pl.DataFrame]
SERVED_KEYS = ["request_id", "instance"]
TOLERANCE = 1e-9
OFFLINE_SUFFIX = "__offline"
_IN_SERVING = "__in_serving"
_IN_OFFLINE = "__in_offline"
SCHEMA = {
    "feature": pl.String, "kind": pl.String, "rows_compared": pl.Int64, "mismatches": pl.Int64,
    "mismatch_rate": pl.Float64, "one_side_missing": pl.Int64, "max_abs_diff": pl.Float64,
    "serving_unmatched": pl.Int64, "offline_unmatched": pl.Int64,
}  # fmt: skip


def _check_inputs(serving: pl.DataFrame, offline: pl.DataFrame, keys: list[str], features: list[str]) -> None:
    """Fail on what makes the comparison meaningless: missing columns, key types, ambiguous offline rows."""
    for name, frame in (("serving", serving), ("offline", offline)):
        missing = [c for c in [*keys, *features] if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} frame lacks column(s): {', '.join(missing)}")
    for key in keys:
        if serving.schema[key] != offline.schema[key]:
            raise ValueError(f"key {key!r} is {serving.schema[key]} in serving "
                             f"but {offline.schema[key]} offline; "
                             "cast it before comparing")
    duplicated = offline.select(keys).is_duplicated().sum()
    if duplicated:
        raise ValueError(f"{duplicated} offline rows share their keys ({', '.join(keys)}): "
                         "the expected value is ambiguous")


def _is_number(serving: pl.DataFrame, offline: pl.DataFrame, feature: str) -> bool:
    return serving.schema[feature].is_numeric() and offline.schema[feature].is_numeric()


def _values(feature: str, number: bool) -> tuple[pl.Expr, pl.Expr]:
    served, stored = pl.col(feature), pl.col(feature + OFFLINE_SUFFIX)
    if number:
        return served.cast(pl.Float64).fill_nan(None), stored.cast(pl.Float64).fill_nan(None)
    return served.cast(pl.String), stored.cast(pl.String)


def _aggregates(feature: str, number: bool, tolerance: float) -> list[pl.Expr]:
    """Mismatch count, one-side-missing count and largest absolute difference of one feature."""
    served, stored = _values(feature, number)
    one_missing = served.is_null() ^ stored.is_null()
    if number:
        scale = pl.max_horizontal(served.abs(), stored.abs(), pl.lit(1.0))
        differ = (served - stored).abs() > tolerance * scale
        max_diff = (served - stored).abs().max()
    else:
        differ = served != stored
        max_diff = pl.lit(None, dtype=pl.Float64)
    mismatch = one_missing | differ.fill_null(False)
    return [mismatch.sum().alias(f"{feature}|mismatches"), one_missing.sum().alias(f"{feature}|missing"),
            max_diff.cast(pl.Float64).alias(f"{feature}|max_abs_diff")]


def _joined(serving: pl.DataFrame, offline: pl.DataFrame, keys: list[str], values: list[str]) -> pl.DataFrame:
    """Full join on the keys, with a marker per side so absent rows stay visible."""
    left = serving.select(*keys, *values).with_columns(pl.lit(True).alias(_IN_SERVING))
    right = offline.select(*keys, *values).with_columns(pl.lit(True).alias(_IN_OFFLINE))
    return left.join(right, on=keys, how="full", coalesce=True, suffix=OFFLINE_SUFFIX, nulls_equal=False)


def offline_for_served(served: pl.DataFrame, project: Project, views: dict[str, pl.DataFrame],
                       compute: OfflineFeatures) -> pl.DataFrame:
    """Every model feature of each served request recomputed offline, as of the prediction time the
    offline definition gives (request time minus the lead), keyed like the log (request id, instance)."""
    fields = [f for f in project.request.fields if f in served.columns]
    moment = pl.col(project.request.time).cast(pl.Datetime("us", "UTC")) - project.prediction_time.lead
    queries = served.select(*SERVED_KEYS, *fields).unique(SERVED_KEYS, keep="first", maintain_order=True)
    queries = calendar_features(project, queries.with_columns(moment.alias(PREDICTION_TIME)))
    return compute(project, queries, views)


def skew_report(serving: pl.DataFrame, offline: pl.DataFrame, keys: list[str], features: list[str],
                tolerance: float = TOLERANCE) -> pl.DataFrame:
    """One row per feature: rows compared, mismatches and their rate, plus the rows found on one side only.

    Every serving row is compared (a request logged by two arms counts twice, with the same values).
    A feature that is also a key matches by construction. ``offline_unmatched`` is normal when not
    every example was requested; ``serving_unmatched`` is not: it means served requests the offline
    side does not know.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance}")
    _check_inputs(serving, offline, keys, features)
    values = [f for f in features if f not in keys]
    joined = _joined(serving, offline, keys, values)
    in_serving, in_offline = pl.col(_IN_SERVING).is_not_null(), pl.col(_IN_OFFLINE).is_not_null()
    counts = joined.select(serving_only=(in_serving & ~in_offline).sum(),
                           offline_only=(in_offline & ~in_serving).sum())
    compared = joined.filter(in_serving & in_offline)
    numbers = {f: _is_number(serving, offline, f) for f in features}
    expressions = [e for f in values for e in _aggregates(f, numbers[f], tolerance)]
    aggregates = compared.select(expressions).row(0, named=True) if expressions else {}
    rows = [_feature_row(f, numbers[f], compared.height, aggregates, counts.row(0)) for f in features]
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def _feature_row(feature: str, number: bool, compared: int, aggregates: dict, unmatched: tuple) -> tuple:
    """One output row; a key feature has no aggregates and no mismatches."""
    mismatches = int(aggregates.get(f"{feature}|mismatches") or 0)
    return (feature, "number" if number else "text", compared, mismatches,
            mismatches / compared if compared else math.nan, int(aggregates.get(f"{feature}|missing") or 0),
            aggregates.get(f"{feature}|max_abs_diff"), int(unmatched[0]), int(unmatched[1]))


def skew_markdown(report: pl.DataFrame, top: int = 10) -> str:
    """Skewed features first; the one-sided row counts are stated because they are easy to miss."""
    if report.height == 0:
        return "**Training/serving skew**: no features compared.\n"
    first = report.row(0, named=True)
    skewed = report.filter(pl.col("mismatches") > 0).sort("mismatch_rate", descending=True)
    lines = [f"**Training/serving skew**: {skewed.height} of {report.height} features differ from the "
             "offline "
             f"store on {first['rows_compared']:,} compared rows.", "",
             f"- served rows with no offline row: {first['serving_unmatched']:,}",
             f"- offline rows never served: {first['offline_unmatched']:,}"]
    if skewed.height:
        lines += ["", "| feature | mismatch rate | mismatches | one side missing | max abs diff |",
                  "|---|---|---|---|---|"]
        for row in skewed.head(top).iter_rows(named=True):
            diff = "" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.4g}"
            lines.append(f"| {row['feature']} | {row['mismatch_rate']:.2%} | {row['mismatches']:,} | "
                         f"{row['one_side_missing']:,} | {diff} |")
    return "\n".join([*lines, ""])
