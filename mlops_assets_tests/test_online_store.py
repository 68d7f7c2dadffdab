"""The online store of events on real rows: typed round trips, retention, static views, pushes (fan-out,
idempotence, ids shared with the bulk copy, refusals naming the field) and visibility across connections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from mlops_assets.features.online_store import (
    EVENT_ID,
    SEQ,
    EventError,
    OnlineStore,
    PushResult,
    UnknownSource,
    default_retention,
)
from mlops_assets.features.repository import view_aggregations, view_events, view_keys
from mlops_assets.features.sources import prepare_all
from mlops_assets.features.windows import OnlineWindows
from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.settings import DATA_DIR
from mlops_assets_tests.serving_fixtures import FLIGHTS, WEATHER, typed

NEW_YORK = ZoneInfo("America/New_York")
ARRIVAL_VIEWS = {"route_delay_stats", "carrier_delay_stats", "origin_delay_stats", "dest_delay_stats"}


@pytest.fixture(scope="module")
def weather() -> tuple[LoadedProject, pl.DataFrame]:
    loaded = load_project(WEATHER)
    raw = typed(loaded, "weather", pl.read_csv(loaded.source_path("weather"), try_parse_dates=True))
    return loaded, prepare_all(loaded, {"weather": raw})["weather"]


@pytest.fixture(scope="module")
def flights() -> tuple[LoadedProject, dict[str, pl.DataFrame]]:
    loaded = load_project(FLIGHTS)
    days = (pl.col("month") == 1) & (pl.col("day") <= 3)
    raw = {"flights": pl.read_parquet(DATA_DIR / "flights.parquet").filter(days),
           "planes": pl.read_parquet(DATA_DIR / "planes.parquet"),
           "airports": pl.read_parquet(DATA_DIR / "airports.parquet")}
    return loaded, prepare_all(loaded, {n: typed(loaded, n, f) for n, f in raw.items()})


def pushed_event(row: dict[str, object], columns: list[str]) -> dict[str, object]:
    """A real row as a client pushes it: naive New York local times (the source's zone)."""
    out = {}
    for name in columns:
        value = row[name]
        out[name] = value.astimezone(NEW_YORK).replace(tzinfo=None).isoformat() if isinstance(value, datetime) \
            else value
    return out


def test_events_round_trip_typed_with_retention_and_horizon(weather, tmp_path: Path) -> None:
    loaded, source = weather
    spec, store = loaded.spec, OnlineStore(tmp_path / "store.db")
    events = view_events(spec, "daily_weather", source)
    assert store.write_view_events(spec, "daily_weather", events, None) == events.height
    full = store.read_view(spec, "daily_weather")
    assert full is not None and full.horizon is None and not full.static
    assert full.frame.drop(EVENT_ID).equals(events.select(full.frame.drop(EVENT_ID).columns))
    assert full.frame[EVENT_ID][0] == "Seattle|15340"  # location | days since the epoch (2012-01-01)
    kept = store.write_view_events(spec, "daily_weather", events, timedelta(days=10))
    recent = store.read_view(spec, "daily_weather")
    latest = events["known_at"].max()
    assert recent.horizon == latest - timedelta(days=10) and kept == recent.frame.height == 20
    assert recent.frame["known_at"].min() > recent.horizon
    assert store.generation() == 2 and store.count(spec, "daily_weather") == 20


def test_a_static_view_keeps_the_latest_row_per_key(flights, tmp_path: Path) -> None:
    loaded, sources = flights
    spec, store = loaded.spec, OnlineStore(tmp_path / "store.db")
    planes = sources["planes"]
    doubled = pl.concat([planes.with_columns(seats=pl.lit(1.0)), planes])
    store.write_view_events(spec, "plane_features", doubled)
    stored = store.read_view(spec, "plane_features")
    assert stored.static and stored.frame.height == planes["tailnum"].n_unique()
    assert stored.frame.sort("tailnum")["seats"].equals(planes.sort("tailnum")["seats"])


def test_a_push_fans_out_to_the_views_that_know_its_time_and_keys(flights, tmp_path: Path) -> None:
    loaded, _ = flights
    spec, store = loaded.spec, OnlineStore(tmp_path / "store.db")
    departed = {"carrier": "UA", "flight": 1, "tailnum": None, "origin": "EWR", "dest": "IAH", "dep_delay": 4.0,
                "arr_delay": None, "scheduled_departure": "2013-01-04T08:00:00", "departed_at": "2013-01-04T08:04:00",
                "arrival_known_at": None}
    assert store.push(spec, "flights", [departed]) == PushResult(1, 0, 0)
    taken = {v for v in spec.feature_views if spec.feature_views[v].source == "flights"
             and store.pushed_frame(spec, v).height}
    assert taken == {"origin_departure_stats", "carrier_origin_departure_stats"}
    frame = store.pushed_frame(spec, "origin_departure_stats")
    assert frame["departed_at"].to_list() == [datetime(2013, 1, 4, 13, 4, tzinfo=UTC)]
    assert frame[EVENT_ID].to_list() == ["UA|1|EWR|1357304400000000"] and frame[SEQ].to_list() == [1]
    assert store.push(spec, "flights", [departed]) == PushResult(0, 1, 0)
    assert store.push(spec, "flights", [{**departed, "event_id": "retry-2"}]) == PushResult(1, 0, 0)
    nowhere = {**departed, "flight": 2, "departed_at": None}
    assert store.push(spec, "flights", [nowhere, {**departed, "flight": 3}]) == PushResult(1, 0, 1)
    arrived = {**departed, "flight": 4, "tailnum": "N1", "arr_delay": 30.0, "arrival_known_at": "2013-01-04T12:00:00"}
    store.push(spec, "flights", [arrived])
    assert all(store.pushed_frame(spec, v)["flight"].to_list() == [4] for v in ARRIVAL_VIEWS)
    assert store.last_seq() == 2 + 2 + 2 + 3 + len(ARRIVAL_VIEWS)  # rows stored per view, duplicates take no seq


def test_a_bulk_event_and_its_pushed_copy_are_one_event(flights, tmp_path: Path) -> None:
    loaded, sources = flights
    spec, store, view = loaded.spec, OnlineStore(tmp_path / "store.db"), "origin_departure_stats"
    events = view_events(spec, view, sources["flights"])
    store.write_view_events(spec, view, events)
    stored = store.read_view(spec, view)
    columns = ["carrier", "flight", "tailnum", "origin", "dest", "scheduled_departure", "departed_at", "dep_delay",
               "arr_delay", "arrival_known_at"]
    rows = sources["flights"].filter(pl.col("departed_at").is_not_null()).head(3).to_dicts()
    store.push(spec, "flights", [pushed_event(r, columns) for r in rows])
    pushed = store.pushed_frame(spec, view)
    assert set(pushed[EVENT_ID]) <= set(stored.frame[EVENT_ID])
    keys, known_at = view_keys(spec, view), spec.feature_views[view].known_at
    windows = OnlineWindows(keys, known_at, view_aggregations(spec, view), EVENT_ID, stored.horizon)
    windows.push(stored.frame)
    assert windows.push(pushed) == 0 and len(windows) == events.height


def test_push_refusals_name_each_field_and_store_nothing(flights, tmp_path: Path) -> None:
    loaded, _ = flights
    spec, store = loaded.spec, OnlineStore(tmp_path / "store.db")
    good = {"carrier": "UA", "flight": 1, "tailnum": None, "origin": "EWR", "dest": "IAH", "dep_delay": 4.0,
            "arr_delay": None, "scheduled_departure": "2013-01-04T08:00:00", "departed_at": "2013-01-04T08:04:00",
            "arrival_known_at": None}
    cases = [({k: v for k, v in good.items() if k != "origin"}, "events[1].origin", "field required"),
             ({**good, "dep_delay": "late"}, "events[1].dep_delay", "must be a number"),
             ({**good, "flight": 1.5}, "events[1].flight", "must be an integer"),
             ({**good, "departed_at": "yesterday"}, "events[1].departed_at", "ISO 8601"),
             ({**good, "departed_at": "2013-03-10T02:30:00"}, "events[1].departed_at", "does not exist"),
             ({**good, "colour": "red"}, "events[1].colour", "unknown field")]
    for payload, field, problem in cases:
        with pytest.raises(EventError) as refused:
            store.push(spec, "flights", [good, payload])
        assert any(p["field"] == field and problem in p["problem"] for p in refused.value.problems), refused.value
    with pytest.raises(EventError, match=r"events\[1\]: must be a JSON object"):
        store.push(spec, "flights", [good, [1, 2]])
    for source in ("trains", "airports"):
        with pytest.raises(UnknownSource):
            store.push(spec, source, [good])
    assert store.last_seq() == 0


def test_pushes_are_seen_by_another_connection_in_order(weather, tmp_path: Path) -> None:
    loaded, source = weather
    spec = loaded.spec
    writer, reader = OnlineStore(tmp_path / "store.db"), OnlineStore(tmp_path / "store.db")
    row = {"location": "Seattle", "date": "2016-01-01", "precipitation": 0.0, "temp_max": 9.5, "temp_min": 2.0,
           "wind": 3.1, "weather": "sun", "known_at": "2016-01-02T00:00:00Z"}
    assert reader.pushed_since(spec, 0) == (0, {})
    writer.push(spec, "weather", [row, {**row, "date": "2016-01-02", "known_at": "2016-01-03T00:00:00Z"}])
    last, frames = reader.pushed_since(spec, 0)
    assert last == 2 and frames["daily_weather"]["date"].dt.day().to_list() == [1, 2]
    assert reader.pushed_since(spec, last) == (last, {})
    assert reader.pushed_frame(spec, "daily_weather", after_seq=1)[SEQ].to_list() == [2]


def test_the_push_mark_tells_another_process_what_is_new_without_a_query(weather, tmp_path: Path) -> None:
    """The mark (shared memory beside the store) moves with every stored push and never back; a duplicate
    push stores nothing and leaves it; a store whose mark cannot be mapped makes readers always query."""
    spec = weather[0].spec
    writer, reader = OnlineStore(tmp_path / "store.db"), OnlineStore(tmp_path / "store.db")
    row = {"location": "Seattle", "date": "2016-01-01", "precipitation": 0.0, "temp_max": 9.5, "temp_min": 2.0,
           "wind": 3.1, "weather": "sun", "known_at": "2016-01-02T00:00:00Z"}
    assert not reader.pushed_after(0)
    writer.push(spec, "weather", [row])
    assert reader.pushed_after(0) and not reader.pushed_after(1)
    writer.push(spec, "weather", [row])  # a duplicate: nothing stored, nothing new
    assert not reader.pushed_after(1)
    writer.push(spec, "weather", [{**row, "date": "2016-01-02"}])
    assert reader.pushed_after(1) and reader.pushed_since(spec, 1)[0] == 2
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "store.db.pushed").mkdir()  # cannot be mapped
    assert OnlineStore(tmp_path / "ro" / "store.db").pushed_after(10**9)


def test_default_retention_covers_the_longest_window(weather, flights) -> None:
    assert default_retention(weather[0].spec, "daily_weather") == timedelta(days=29)
    assert default_retention(flights[0].spec, "route_delay_stats") == timedelta(days=29)
    assert default_retention(flights[0].spec, "plane_features") is None
