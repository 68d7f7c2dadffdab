"""Training sets from project declarations: labels, prediction times, periods, splits, row floors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.contract import PERIOD, PREDICTION_TIME, SPLIT
from mlops_assets.features.repository import model_features, view_events
from mlops_assets.features.sources import DTYPES, prepare_all
from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.settings import DATA_DIR, PROJECTS_DIR
from mlops_assets.training.training_set import assign_splits, build_training_set, examples_frame
from mlops_assets_tests.projects import project_copy


def _raw(project: LoadedProject, rows: pl.Expr | None = None) -> dict[str, pl.DataFrame]:
    out = {}
    for name, source in project.spec.sources.items():
        path = project.source_path(name)
        frame = pl.read_csv(path, try_parse_dates=True) if path.suffix == ".csv" else pl.read_parquet(path)
        frame = frame.with_columns(pl.col(c).cast(DTYPES[s.type]) for c, s in source.schema_.items())
        if rows is not None and source.kind == "periodic":
            frame = frame.filter(rows)
        out[name] = frame
    return out


def _training_set(project: LoadedProject, rows: pl.Expr | None = None) -> pl.DataFrame:
    prepared = prepare_all(project, _raw(project, rows))
    views = {v: view_events(project.spec, v, prepared[project.spec.feature_views[v].source])
             for v in project.spec.used_views}
    return build_training_set(project, prepared, views)


def test_weather_training_set_has_every_feature_yesterdays_values_and_time_splits() -> None:
    project = load_project(PROJECTS_DIR / "weather")
    frame = _training_set(project)
    assert set(model_features(project.spec)) <= set(frame.columns)
    assert frame.group_by(SPLIT).len().sort(SPLIT).to_dict(as_series=False) == {
        "split": ["test", "train", "validation"], "len": [368, 2372, 182]}
    day = pl.datetime(2015, 6, 2, time_zone="UTC")
    row = frame.filter((pl.col("location") == "Seattle") & (pl.col("day_start") == day)).row(0, named=True)
    raw = pl.read_csv(PROJECTS_DIR / "weather" / "data" / "weather.csv", try_parse_dates=True)
    yesterday = raw.filter((pl.col("location") == "Seattle") & (pl.col("date") == pl.date(2015, 6, 1))).row(0, named=True)
    assert row["temp_max"] == yesterday["temp_max"]          # plain feature: the last value known at midnight
    today = raw.filter((pl.col("location") == "Seattle") & (pl.col("date") == pl.date(2015, 6, 2))).row(0, named=True)
    assert row["temp_max_today"] == today["temp_max"]         # the label is the day itself, never a feature
    week = raw.filter((pl.col("location") == "Seattle") & pl.col("date").is_between(pl.date(2015, 5, 26),
                                                                                       pl.date(2015, 6, 1)))
    assert row["wx_temp_max_mean_7d"] == pytest.approx(week["temp_max"].mean(), abs=1e-9)
    assert row["days_reported_7d"] == 7.0 and row[PERIOD] == "2015-06"


def test_flights_periods_follow_new_york_and_labels_come_from_the_threshold() -> None:
    project = load_project(PROJECTS_DIR / "flights")
    examples = examples_frame(project, prepare_all(project, _raw(project, pl.col("month") == 1)))
    assert examples[PERIOD].unique().to_list() == ["2013-01"]  # late-evening departures stay in their local month
    assert examples["is_delayed"].dtype == pl.Int8 and examples["is_delayed"].null_count() == 0
    assert (examples["scheduled_departure"] - examples[PREDICTION_TIME]).unique().to_list() == [timedelta(hours=2)]
    assert examples.select(pl.col("sched_hour").is_between(0, 23).all()).item()


def test_too_few_validation_rows_is_a_clear_error(tmp_path: Path) -> None:
    project = load_project(project_copy("weather", tmp_path / "p.yaml", **{"split.min_rows": 500}))
    with pytest.raises(ValueError, match=r"the validation split has 182 rows .* fewer than split.min_rows=500"):
        _training_set(project)


def test_a_split_that_leaves_no_periods_names_what_is_needed(tmp_path: Path) -> None:
    project = load_project(project_copy("weather", tmp_path / "p.yaml", **{"split.test": 40, "split.validation": 10}))
    with pytest.raises(ValueError, match="the split needs at least 51 months"):
        _training_set(project)


def test_gap_periods_are_dropped_between_splits(tmp_path: Path) -> None:
    project = load_project(project_copy("weather", tmp_path / "p.yaml", **{"split.gap": 1}))
    frame = _training_set(project)
    periods = {s: sorted(frame.filter(pl.col(SPLIT) == s)[PERIOD].unique()) for s in ("train", "validation", "test")}
    assert periods["test"][0] == "2015-07" and periods["validation"] == ["2015-03", "2015-04", "2015-05"]
    assert periods["train"][-1] == "2015-01"  # 2015-02 and 2015-06 are the gaps


def test_future_label_is_the_same_entitys_value_one_day_later(tmp_path: Path) -> None:
    project = load_project(project_copy("weather", tmp_path / "p.yaml", **{
        "label": {"name": "temp_max_tomorrow", "future": {"column": "temp_max", "offset": "1d"}}}))
    examples = examples_frame(project, prepare_all(project, _raw(project)))
    raw = _raw(project)["weather"].sort("location", "date")
    expected = raw.with_columns(pl.col("temp_max").shift(-1).over("location").alias("next"),
                                day_start=pl.col("date").cast(pl.Datetime("us", "UTC"))).drop_nulls("next")
    joined = examples.join(expected.select("location", "day_start", "next"), on=["location", "day_start"])
    assert joined.height == examples.height == 2920
    assert (joined["temp_max_tomorrow"] == joined["next"]).all()


def test_multiclass_label_is_a_string_class(tmp_path: Path) -> None:
    project = load_project(project_copy("weather", tmp_path / "p.yaml", **{
        "problem": "multiclass", "label": {"name": "sky", "column": "weather"}, "metric": "log_loss",
        "gate": {"floors": {}}}))
    frame = assign_splits(examples_frame(project, prepare_all(project, _raw(project))), project.spec)
    assert frame["sky"].dtype == pl.String and set(frame["sky"].unique()) == {"sun", "rain", "fog", "snow", "drizzle"}


def test_data_dir_still_holds_the_flights_tables() -> None:
    assert {p.stem for p in DATA_DIR.glob("*.parquet")} >= {"flights", "weather", "planes", "airports"}


def test_period_by_period_build_equals_the_whole_history_build(tmp_path: Path) -> None:
    """The partition-wise feature views and training set (what keeps 100x data in memory) give the same
    rows, in the same order, with the same values (1e-9) as the whole-history functions."""
    from mlops_assets.features.assets import load_prepared, source_view_events, write_source_views
    from mlops_assets.lake import Lake
    from mlops_assets.training.training_set import period_of, write_training_set_by_period

    project = load_project(PROJECTS_DIR / "flights")
    spec, store = project.spec, Lake(tmp_path / "state", DATA_DIR)
    for name, frame in _raw(project, pl.col("month") >= 9).items():
        source = spec.sources[name]
        if source.kind == "reference":
            store.write_batch(name, frame)
            continue
        month = period_of(pl.col(source.time), "month", source.time_zone)
        labelled = frame.with_columns(month.alias("__period"))
        for (label,), part in labelled.partition_by("__period", as_dict=True, include_key=False).items():
            store.write_batch(name, part, label)
    for source in dict.fromkeys(v.source for v in spec.feature_views.values()):
        views = [v for v, s in spec.feature_views.items() if s.source == source]
        whole = load_prepared(store, project, [source])[source]
        expected_views = {name: view_events(spec, name, whole) for name in views}
        for name, events in source_view_events(store, project, source, views):
            assert events.equals(expected_views[name]), name
        counts = write_source_views(store, project, source, views)
        for name in views:
            assert counts[name] == expected_views[name].height
            assert store.read_view(name).equals(expected_views[name]), name
    expected = build_training_set(project, load_prepared(store, project, [spec.examples.source]),
                                  {v: store.read_view(v) for v in spec.feature_views})
    path, _, rows = write_training_set_by_period(project, store)
    got = pl.read_parquet(path)
    assert rows == got.height == expected.height and got.schema == expected.schema
    floats = [c for c, t in got.schema.items() if t == pl.Float64]
    assert got.drop(floats).equals(expected.drop(floats))
    for column in floats:
        x, y = got[column], expected[column]
        assert (x.is_null() == y.is_null()).all(), column
        assert (((x - y).abs() / y.abs().clip(lower_bound=1.0)).max() or 0.0) <= 1e-9, column
