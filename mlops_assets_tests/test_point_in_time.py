"""The point-in-time join: identical to a naive reference, never looks ahead, never drops a row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops_assets.features import transforms
from mlops_assets.features.pit import event_ts_column, point_in_time_join
from mlops_assets.features.views import FeatureView, plane_view, route_delay_view, weather_view

T0 = datetime(2013, 1, 1, tzinfo=UTC)


def naive_lookup(view: FeatureView, data: pl.DataFrame, key: tuple, ts: datetime) -> dict | None:
    """Reference: scan the whole view for the newest value of this key at or before ts, within TTL."""
    best = None
    for row in data.iter_rows(named=True):
        event = row[view.timestamp_field]
        if tuple(row[k] for k in view.entity_keys) != key or event > ts:
            continue
        if view.ttl is not None and event < ts - view.ttl:
            continue
        if best is None or event >= best[view.timestamp_field]:
            best = row
    return None if best is None else {f: best[f] for f in view.features}


@pytest.fixture(scope="module")
def joined_sample(flights_sample: pl.DataFrame, weather_sample: pl.DataFrame, planes: pl.DataFrame):
    events = transforms.flight_events(flights_sample, timedelta(hours=2))
    views = [
        (weather_view, transforms.weather_features(weather_sample)),
        (plane_view, transforms.plane_features(planes)),
        (route_delay_view, transforms.arrival_delay_stats(events, ["origin", "dest"], "route")),
    ]
    entities = events.select("origin", "dest", "tailnum", "prediction_time").sample(150, seed=7)
    return entities, views, point_in_time_join(entities, views, "prediction_time", keep_event_timestamps=True)


def test_join_matches_naive_reference(joined_sample) -> None:
    entities, views, joined = joined_sample
    assert joined.height == entities.height
    for view, data in views:
        small = data.filter(pl.col(view.entity_keys[0]).is_in(entities[view.entity_keys[0]].unique().to_list()))
        for row in joined.iter_rows(named=True):
            expected = naive_lookup(view, small, tuple(row[k] for k in view.entity_keys), row["prediction_time"])
            got = {f: row[f] for f in view.features}
            assert got == (expected or dict.fromkeys(view.features)), (view.name, row)


def test_joined_values_never_come_from_the_future(joined_sample) -> None:
    _, views, joined = joined_sample
    for view, _ in views:
        ts = joined[event_ts_column(view)]
        assert (ts.is_null() | (ts <= joined["prediction_time"])).all()


def test_rows_sharing_key_and_time_all_kept_and_missing_values_give_nulls() -> None:
    view = FeatureView("v", ("k",), "ts", ("x",), "test view", ttl=timedelta(hours=1))
    data = pl.DataFrame({"k": ["a", "a"], "ts": [T0, T0 + timedelta(hours=2)], "x": [1.0, 2.0]})
    entities = pl.DataFrame({
        "k": ["a", "a", "a", "b", None],
        "t": [T0 + timedelta(minutes=30)] * 2 + [T0 + timedelta(minutes=90), T0, T0],
    })
    out = point_in_time_join(entities, [(view, data)], "t")
    assert out["k"].to_list() == entities["k"].to_list()
    assert out["x"].to_list() == [1.0, 1.0, None, None, None]


def test_missing_key_column_is_a_clear_error() -> None:
    view = FeatureView("v", ("k",), "ts", ("x",), "test view", ttl=None)
    with pytest.raises(KeyError, match="'v', 'k'"):
        point_in_time_join(pl.DataFrame({"t": [T0]}), [(view, pl.DataFrame({"k": [], "ts": [], "x": []}))], "t")


minutes = st.integers(min_value=0, max_value=600)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(st.tuples(st.sampled_from("abc"), minutes, st.floats(-5, 5)), max_size=30),
    queries=st.lists(st.tuples(st.sampled_from("abcd"), minutes), min_size=1, max_size=30),
    ttl=st.one_of(st.none(), st.integers(1, 300)),
)
def test_property_no_lookahead_ttl_respected_every_row_once(events, queries, ttl) -> None:
    view = FeatureView("v", ("k",), "ts", ("x",), "prop", ttl=None if ttl is None else timedelta(minutes=ttl))
    data = pl.DataFrame(
        {"k": [e[0] for e in events], "ts": [T0 + timedelta(minutes=e[1]) for e in events],
         "x": [e[2] for e in events]},
        schema={"k": pl.String, "ts": pl.Datetime("us", "UTC"), "x": pl.Float64},
    )
    entities = pl.DataFrame(
        {"k": [q[0] for q in queries], "t": [T0 + timedelta(minutes=q[1]) for q in queries]},
        schema={"k": pl.String, "t": pl.Datetime("us", "UTC")},
    )
    out = point_in_time_join(entities, [(view, data)], "t", keep_event_timestamps=True)
    assert out.select("k", "t").equals(entities)
    for row in out.iter_rows(named=True):
        event = row["v__event_ts"]
        if event is None:
            assert naive_lookup(view, data, (row["k"],), row["t"]) is None
            continue
        assert event <= row["t"]
        assert ttl is None or event >= row["t"] - timedelta(minutes=ttl)
