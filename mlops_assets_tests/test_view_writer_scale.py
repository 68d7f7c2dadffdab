"""The writers that must stay linear in history: the month-by-month view writer reads each batch only for
the months it holds (batches that span several months must still give the whole-view build's events,
split by UTC month), and the online store fills a view in many transactions but readers switch at once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.features import online_store
from mlops_assets.features.assets import load_prepared, write_source_views
from mlops_assets.features.online_store import EVENT_ID, OnlineStore
from mlops_assets.features.repository import view_events
from mlops_assets.features.sources import DTYPES, prepare_all
from mlops_assets.lake import Lake
from mlops_assets.project.loading import load_project
from mlops_assets.project.spec import Project
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR
from mlops_assets_tests.serving_fixtures import WEATHER, typed


def _interleaved_batches(store: Lake, name: str, frame: pl.DataFrame) -> None:
    """Three batches of every third row (each spans every month, rows interleaved), then one of a month."""
    numbered = frame.with_row_index("__i")
    for batch in range(3):
        store.write_batch(name, numbered.filter(pl.col("__i") % 3 == batch).drop("__i"), f"2013-0{batch + 1}")
    store.write_batch(name, frame.filter(pl.col("month") == 2), "2013-04")


def test_batches_spanning_several_months_write_the_whole_views_month_parts(tmp_path: Path) -> None:
    project = load_project(PROJECTS_DIR / "flights")
    spec, store = project.spec, Lake(tmp_path / "state", DATA_DIR)
    for name, source in spec.sources.items():
        path = project.source_path(name)
        frame = pl.read_parquet(path).with_columns(pl.col(c).cast(DTYPES[s.type]) for c, s in source.schema_.items())
        if source.kind == "reference":
            store.write_batch(name, frame)
        else:
            _interleaved_batches(store, name, frame.filter(pl.col("month") <= 3, (pl.col("day") <= 3) | (pl.col("day") >= 28)))
    for source in ("flights", "weather"):
        views = [v for v, s in spec.feature_views.items() if s.source == source]
        whole = load_prepared(store, project, [source])[source]
        counts = write_source_views(store, project, source, views)
        for name in views:
            expected = view_events(spec, name, whole)
            month = pl.col(spec.feature_views[name].known_at).dt.convert_time_zone("UTC").dt.strftime("%Y-%m")
            parts = expected.with_columns(month.alias("__m")).partition_by("__m", as_dict=True, include_key=False)
            stored = sorted(p.parent.name.removeprefix("month=") for p in store.view_dir(name).glob("month=*/*"))
            assert stored == sorted(m for (m,) in parts) and len(stored) >= 4, name
            for (label,), part in parts.items():
                assert pl.read_parquet(store.view_dir(name) / f"month={label}" / "data.parquet").equals(part), label
            assert counts[name] == expected.height and store.read_view(name).equals(expected), name


def _weather_events() -> tuple[Project, pl.DataFrame]:
    loaded = load_project(WEATHER)
    raw = typed(loaded, "weather", pl.read_csv(loaded.source_path("weather"), try_parse_dates=True))
    return loaded.spec, view_events(loaded.spec, "daily_weather", prepare_all(loaded, {"weather": raw})["weather"])


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_view_written_in_many_transactions_switches_at_once(tmp_path: Path, monkeypatch) -> None:
    """Many fill transactions (a small COMMIT_ROWS); a reader inside a read transaction keeps the old rows
    until it ends; a failed write leaves the old view and no staging table; the same rows as one insert."""
    spec, events = _weather_events()
    monkeypatch.setattr(online_store, "COMMIT_ROWS", 97)
    monkeypatch.setattr(online_store, "WRITE_CHUNK_ROWS", 31)
    path = tmp_path / "store.db"
    store, reader = OnlineStore(path), OnlineStore(path)
    assert store.write_view_events(spec, "daily_weather", events.head(50)) == 50
    reader._conn().execute("BEGIN")
    assert reader.count(spec, "daily_weather") == 50
    assert store.write_view_events(spec, "daily_weather", events) == events.height
    assert reader.count(spec, "daily_weather") == 50 and reader.generation() == 1
    reader._conn().execute("COMMIT")
    stored = reader.read_view(spec, "daily_weather")
    assert reader.generation() == 2 and stored.frame.drop(EVENT_ID).equals(events.select(stored.frame.drop(EVENT_ID).columns))
    assert _tables(path) == {"meta", "views", "pushed_events", "events__daily_weather"}

    calls = [0]
    encode = online_store.encode_frame

    def failing(*args: object) -> pl.DataFrame:
        calls[0] += 1
        if calls[0] > 5:
            raise RuntimeError("disk gone")
        return encode(*args)

    monkeypatch.setattr(online_store, "encode_frame", failing)
    with pytest.raises(RuntimeError, match="disk gone"):
        store.write_view_events(spec, "daily_weather", events.head(400))
    assert reader.count(spec, "daily_weather") == events.height and reader.generation() == 2
    assert _tables(path) == {"meta", "views", "pushed_events", "events__daily_weather"}
