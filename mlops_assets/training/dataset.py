"""Training sets: labels, point-in-time features, time-based splits and a content hash."""

from __future__ import annotations

import hashlib

import polars as pl

from mlops_assets.features.pit import point_in_time_join
from mlops_assets.features.transforms import REQUEST_COLUMNS, request_features
from mlops_assets.features.views import FeatureView
from mlops_assets.task import SplitConfig, TaskConfig

SPLIT = "split"
MONTH = "month"
DISTANCE_BANDS = [500.0, 1000.0, 2000.0]
DISTANCE_LABELS = ["<500", "500-1000", "1000-2000", "2000+"]


def label_flights(events: pl.DataFrame, delayed_minutes: int, drop_cancelled_and_diverted: bool) -> pl.DataFrame:
    """Label = arrived more than `delayed_minutes` late.

    Cancelled (no departure) and diverted (departed, no arrival delay) flights have no arrival
    delay: dropped by default, or counted as delayed (the traveller did not arrive on time).
    """
    late = pl.col("arr_delay") > delayed_minutes
    if drop_cancelled_and_diverted:
        return events.filter(pl.col("arr_delay").is_not_null()).with_columns(is_delayed=late.cast(pl.Int8))
    return events.with_columns(is_delayed=(pl.col("arr_delay").is_null() | late).cast(pl.Int8))


def assign_splits(df: pl.DataFrame, split: SplitConfig, month_column: str = MONTH) -> pl.DataFrame:
    """Newest months test, the ones before validate, the rest train: no shuffling across time."""
    months = sorted(df[month_column].unique().to_list())
    needed = split.test_months + split.validation_months + 1
    if len(months) < needed:
        raise ValueError(f"need at least {needed} months for the split, have {len(months)}: {months}")
    test = months[-split.test_months:]
    validation = months[-needed + 1:-split.test_months]
    return df.with_columns(
        pl.when(pl.col(month_column).is_in(test)).then(pl.lit("test"))
        .when(pl.col(month_column).is_in(validation)).then(pl.lit("validation"))
        .otherwise(pl.lit("train")).alias(SPLIT)
    )


def content_hash(df: pl.DataFrame) -> str:
    """Stable fingerprint of schema and rows (in order): same data, same hash."""
    digest = hashlib.sha256(str(df.schema).encode())
    digest.update(df.hash_rows(seed=0).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def distance_band(distance: pl.Expr) -> pl.Expr:
    return distance.cut(DISTANCE_BANDS, labels=DISTANCE_LABELS, left_closed=True).cast(pl.String)


def flight_training_set(
    events: pl.DataFrame, views: list[tuple[FeatureView, pl.DataFrame]], task: TaskConfig
) -> pl.DataFrame:
    """One row per labelled flight: request features plus every view joined as of prediction time."""
    labelled = label_flights(events, task.delayed_minutes, task.drop_cancelled_and_diverted)
    entities = request_features(
        labelled.select(*REQUEST_COLUMNS, "prediction_time", "is_delayed",
                        pl.date(pl.col("year"), pl.col("month"), 1).dt.strftime("%Y-%m").alias(MONTH))
    ).with_columns(distance_band=distance_band(pl.col("distance"))).sort(task.timestamp)
    joined = point_in_time_join(entities, views, timestamp=task.timestamp)
    return assign_splits(joined, task.split)


def model_features(task: TaskConfig, views: list[FeatureView]) -> list[str]:
    """The model's inputs: the task's own features, then every view's features."""
    return [*task.features, *(f for v in views for f in v.features)]
