"""Replay: send a month of scheduled flights through the prediction service, then land the labels.

The service runs in-process (its real ASGI app); before each day the replay online store is
rebuilt as of that day's first prediction time, so the service sees what it would have seen
then (refreshed daily, as a batch-fed online store would be).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.transforms import flight_events
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.lake import Lake
from mlops_assets.serving.config import ServingConfig
from mlops_assets.task import TaskConfig
from mlops_assets.training.dataset import label_flights

REQUEST_FIELDS = ("carrier", "flight", "tailnum", "origin", "dest", "scheduled_departure", "distance")
TRUTH_KEYS = ["carrier", "flight", "origin", "scheduled_departure"]


@dataclass(frozen=True)
class ReplayResult:
    month: str
    requests: int
    days: int
    failures: int


def rebuild_online_store(store: OnlineStore, views: dict[str, pl.DataFrame], as_of: datetime) -> None:
    """Latest value per key among values known at `as_of`."""
    for name, data in views.items():
        view = FEATURE_VIEWS[name]
        store.write_view(view, data.filter(pl.col(view.timestamp_field) <= as_of))


def scheduled_requests(flights: pl.DataFrame, task: TaskConfig) -> pl.DataFrame:
    events = flight_events(flights, timedelta(hours=task.prediction_lead_hours))
    return events.select(*REQUEST_FIELDS, "prediction_time").sort("prediction_time").with_columns(
        day=pl.col("prediction_time").dt.date(),
        scheduled_departure=pl.col("scheduled_departure").dt.strftime("%Y-%m-%dT%H:%M:%S%z"),
        distance=pl.col("distance").cast(pl.Float64),
    )


def _instances(rows: pl.DataFrame) -> list[dict]:
    return [{k: v for k, v in r.items() if v is not None} for r in rows.select(REQUEST_FIELDS).to_dicts()]


def replay_month(lake: Lake, month: str, config: ServingConfig, task: TaskConfig, batch: int = 100) -> ReplayResult:
    """Every scheduled flight of the month, day by day, through POST /v1/predict/batch."""
    from fastapi.testclient import TestClient  # the web stack loads only when a replay runs

    from mlops_assets.serving.app import create_app

    requests = scheduled_requests(lake.read_batches("flights", [month]), task)
    views = {name: lake.read_view(name) for name in FEATURE_VIEWS}
    store = OnlineStore(Path(config.online_store_path))
    failures, days = 0, 0
    rebuild_online_store(store, views, requests["prediction_time"].min())
    with TestClient(create_app(config)) as client:
        for (_day,), rows in requests.partition_by("day", as_dict=True, maintain_order=True).items():
            rebuild_online_store(store, views, rows["prediction_time"].min())
            days += 1
            for start in range(0, rows.height, batch):
                response = client.post("/v1/predict/batch", json={"instances": _instances(rows.slice(start, batch))})
                failures += response.status_code != 200
    return ReplayResult(month, requests.height, days, failures)


def ground_truth(flights: pl.DataFrame, task: TaskConfig) -> pl.DataFrame:
    """Arrivals as labels, keyed like the prediction log (cancelled/diverted per the task's rule)."""
    events = flight_events(flights, timedelta(hours=task.prediction_lead_hours))
    labelled = label_flights(events, task.delayed_minutes, task.drop_cancelled_and_diverted)
    return labelled.select(*TRUTH_KEYS, "is_delayed", "arrival_observed_at")
