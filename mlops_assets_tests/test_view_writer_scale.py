"""The month-by-month view writer reads each batch only for the months it holds: batches that each span
several months (and interleave) must still give the whole-view build's events, split by UTC month."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mlops_assets.features.assets import load_prepared, write_source_views
from mlops_assets.features.repository import view_events
from mlops_assets.features.sources import DTYPES
from mlops_assets.lake import Lake
from mlops_assets.project.loading import load_project
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR


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
