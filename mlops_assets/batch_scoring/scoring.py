"""Batch inference: score a month of scheduled flights with features as of each prediction time."""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from mlops_assets.features.pit import point_in_time_join
from mlops_assets.features.transforms import REQUEST_COLUMNS, flight_events, request_features
from mlops_assets.features.views import FeatureView
from mlops_assets.task import TaskConfig
from mlops_assets.training.model import TabularModel

OUTPUT_COLUMNS = ("carrier", "flight", "tailnum", "origin", "dest", "scheduled_departure", "prediction_time")


def score_month(flights: pl.DataFrame, views: list[tuple[FeatureView, pl.DataFrame]], model: TabularModel,
                task: TaskConfig, model_version: str) -> pl.DataFrame:
    """Every scheduled flight of the month (cancelled ones too: at prediction time nobody knows)."""
    events = flight_events(flights, timedelta(hours=task.prediction_lead_hours))
    entities = request_features(events.select(*REQUEST_COLUMNS, "prediction_time")).sort(task.timestamp)
    joined = point_in_time_join(entities, views, timestamp=task.timestamp)
    scores = model.predict(joined.to_pandas())
    return joined.select(*OUTPUT_COLUMNS).with_columns(
        probability=pl.Series(scores, dtype=pl.Float64),
        decision=pl.Series(scores >= task.threshold),
        model_name=pl.lit(task.model_name),
        model_version=pl.lit(model_version),
    )
