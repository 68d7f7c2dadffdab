"""Pushed events reach the offline store: the next feature build, hence the next training set, sees
what the service saw (ingested events win on the same event id)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from mlops_assets.alerts import AlertSink
from mlops_assets.features.assets import feature_assets
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.ingestion.assets import ingestion_assets
from mlops_assets.lake import Lake
from mlops_assets.project.loading import load_project
from mlops_assets.resources import LakeResource, OnlineStoreResource, ProjectResource
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR

PROJECT = load_project(PROJECTS_DIR / "weather")


def _resources(root: Path) -> dict:
    return {"lake": LakeResource(state_dir=str(root), data_dir=str(DATA_DIR)),
            "project": ProjectResource(path=str(PROJECT.path)),
            "online": OnlineStoreResource(path=str(root / "online.db")),
            "alerts": AlertSink(path=str(root / "alerts.jsonl"), webhook_url="")}


def test_pushed_events_are_appended_to_the_offline_store_once(tmp_path: Path) -> None:
    instance = dg.DagsterInstance.ephemeral()
    [weather] = ingestion_assets(PROJECT.spec)
    views, online = feature_assets(PROJECT.spec)
    assert dg.materialize([weather], partition_key="2015-12-01", instance=instance,
                          resources=_resources(tmp_path)).success
    new = {"location": "Seattle", "date": "2016-01-01", "precipitation": 0.0, "temp_max": 8.0, "temp_min": 1.0,
           "wind": 3.0, "weather": "sun", "known_at": "2016-01-02T00:00:00Z"}
    ingested_again = {**new, "date": "2015-12-31", "temp_max": 99.0, "known_at": "2016-01-01T00:00:00Z"}
    store = OnlineStore(tmp_path / "online.db")
    assert store.push(PROJECT.spec, "weather", [new, ingested_again]).accepted == 2
    assert store.push(PROJECT.spec, "weather", [new]).duplicates == 1
    assert dg.materialize([views], instance=instance, resources=_resources(tmp_path)).success
    events = Lake(tmp_path, DATA_DIR).read_view("daily_weather")
    seattle = events.filter(pl.col("location") == "Seattle").sort("known_at")
    assert seattle.height == 31 + 1                      # December's ingested days plus the pushed one
    assert seattle["temp_max"][-1] == 8.0                # the pushed event, once
    assert 99.0 not in seattle["temp_max"].to_list()     # the ingested 2015-12-31 wins over its pushed copy
