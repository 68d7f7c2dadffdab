"""Feature transforms and the online store on real slices of the sample data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from mlops_assets.features import transforms
from mlops_assets.features.online_store import OnlineStore
from mlops_assets.features.views import origin_departure_view, route_delay_view, weather_view
from mlops_assets.lake import Lake


def test_trailing_delays_use_only_arrivals_observed_before(flights_sample: pl.DataFrame) -> None:
    """The 7-day route mean at an event equals a direct average of arrivals observed in (t-7d, t]."""
    events = transforms.flight_events(flights_sample, timedelta(hours=2))
    stats = transforms.arrival_delay_stats(events, ["origin", "dest"], "route")
    row = stats.filter((pl.col("origin") == "JFK") & (pl.col("dest") == "LAX")).row(500, named=True)
    t = row["observed_at"]
    window = events.filter(
        (pl.col("origin") == "JFK") & (pl.col("dest") == "LAX") & pl.col("arr_delay").is_not_null()
        & (pl.col("arrival_observed_at") > t - timedelta(days=7)) & (pl.col("arrival_observed_at") <= t)
    )
    assert row["route_arrivals_7d"] == window.height
    assert abs(row["route_arr_delay_mean_7d"] - window["arr_delay"].mean()) < 1e-9
    assert abs(row["route_delayed_share_7d"] - (window["arr_delay"] > 15).mean()) < 1e-9


def test_a_flight_is_observed_only_after_it_arrived(flights_sample: pl.DataFrame) -> None:
    events = transforms.flight_events(flights_sample, timedelta(hours=2)).drop_nulls("arrival_observed_at")
    assert (events["arrival_observed_at"] > events["scheduled_departure"]).all()
    assert (events["prediction_time"] == events["scheduled_departure"] - timedelta(hours=2)).all()


def test_scheduled_departure_is_utc_of_local_schedule(flights_sample: pl.DataFrame) -> None:
    first = transforms.flight_events(flights_sample.head(1), timedelta(hours=2)).row(0, named=True)
    assert first["sched_dep_time"] == 515
    assert first["scheduled_departure"] == datetime(2013, 1, 1, 10, 15, tzinfo=UTC)
    assert transforms.request_features(pl.DataFrame([first]))["sched_hour"].item() == 5


def test_weather_trailing_precipitation(weather_sample: pl.DataFrame) -> None:
    feats = transforms.weather_features(weather_sample).filter(pl.col("origin") == "EWR").sort("observed_at")
    row = feats.row(100, named=True)
    window = feats.filter(
        (pl.col("observed_at") > row["observed_at"] - timedelta(hours=3)) & (pl.col("observed_at") <= row["observed_at"])
    )
    assert abs(row["precip_3h"] - window["precip"].sum()) < 1e-9


def test_online_store_serves_latest_value_with_freshness(lake: Lake, flights_sample: pl.DataFrame,
                                                          weather_sample: pl.DataFrame) -> None:
    store = OnlineStore(lake.root / "online.db")
    weather = transforms.weather_features(weather_sample)
    assert store.write_view(weather_view, weather) == 3
    latest = weather.filter(pl.col("origin") == "JFK").sort("observed_at").row(-1, named=True)
    value = store.read(weather_view, ("JFK",))
    assert value.event_time == latest["observed_at"]
    assert value.values["temp"] == latest["temp"]
    assert value.age_seconds(latest["observed_at"] + timedelta(hours=1)) == 3600
    missing = store.read(weather_view, ("XXX",))
    assert missing.values is None and missing.age_seconds(latest["observed_at"]) is None


def test_online_vector_for_one_request_reads_every_view(lake: Lake, flights_sample: pl.DataFrame) -> None:
    events = transforms.flight_events(flights_sample, timedelta(hours=2))
    store = OnlineStore(lake.root / "online.db")
    store.write_view(route_delay_view, transforms.arrival_delay_stats(events, ["origin", "dest"], "route"))
    store.write_view(origin_departure_view, transforms.departure_delay_stats(events))
    vector = store.read_many([route_delay_view, origin_departure_view], {"origin": "LGA", "dest": "ATL"})
    assert vector["route_delay_stats"].values["route_arrivals_28d"] > 0
    assert vector["origin_departure_stats"].event_time is not None


def test_batch_read_returns_what_single_reads_return(lake: Lake, flights_sample: pl.DataFrame) -> None:
    events = transforms.flight_events(flights_sample, timedelta(hours=2))
    store = OnlineStore(lake.root / "online.db")
    store.write_view(route_delay_view, transforms.arrival_delay_stats(events, ["origin", "dest"], "route"))
    keys = [("LGA", "ATL"), ("JFK", "LAX"), ("EWR", "XXX"), ("LGA", "ATL")]
    batch = store.read_keys(route_delay_view, keys)
    assert set(batch) == {("LGA", "ATL"), ("JFK", "LAX")}
    for key, value in batch.items():
        assert value == store.read(route_delay_view, key)
