"""Deliveries of a project's sources, loaded, validated against their declaration and coerced to it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from mlops_assets.ingestion.batches import Batch, load_period, load_reference, quarantine, rejection_message
from mlops_assets.lake import Lake
from mlops_assets.project.loading import LoadedProject, load_project

ROOT = Path(__file__).resolve().parents[1]
DECLARED = {"int": pl.Int64, "float": pl.Float64, "str": pl.String, "date": pl.Date,
            "datetime": pl.Datetime("us", "UTC")}


def month(year: int, number: int, zone: str = "UTC") -> tuple[datetime, datetime]:
    """[start, end) of a calendar month in `zone` (the source's declared `time_zone`)."""
    tz = ZoneInfo(zone)
    return datetime(year, number, 1, tzinfo=tz), datetime(year + number // 12, number % 12 + 1, 1, tzinfo=tz)


@pytest.fixture(scope="module")
def flights_project() -> LoadedProject:
    return load_project(ROOT / "projects" / "flights")


@pytest.fixture(scope="module")
def weather_project() -> LoadedProject:
    return load_project(ROOT / "projects" / "weather")


@pytest.fixture()
def deliver(lake: Lake, weather_project: LoadedProject) -> Callable[[pl.DataFrame], Batch]:
    """Land a CSV as the weather project's 2012-03 delivery and load it."""

    def _deliver(frame: pl.DataFrame) -> Batch:
        path = lake.root.parent / "2012-03.csv"
        frame.write_csv(path, null_value="NA")
        delivery = lake.deliveries.add(path, "weather", "2012-03", landed_by="test")
        return load_period(weather_project, "weather", "2012-03", *month(2012, 3), delivery)

    return _deliver


@pytest.fixture()
def march_2012(lake: Lake, weather_project: LoadedProject) -> pl.DataFrame:
    return load_period(weather_project, "weather", "2012-03", *month(2012, 3)).frame


def has_declared_schema(batch: Batch, project: LoadedProject) -> bool:
    schema = project.spec.sources[batch.table].schema_
    return dict(batch.frame.schema) == {name: DECLARED[column.type] for name, column in schema.items()}


def only_failure(batch: Batch) -> str:
    [failure] = batch.report.failures
    assert failure.severity == "hard"
    return failure.description


def with_value(frame: pl.DataFrame, column: str, row: int, value: object) -> pl.DataFrame:
    return frame.with_columns(pl.when(pl.int_range(pl.len()) == row).then(pl.lit(value)).otherwise(column).alias(column))


@pytest.mark.parametrize("number", [2, 7])
def test_embedded_flights_month_passes_and_is_coerced(lake: Lake, flights_project: LoadedProject,
                                                      number: int) -> None:
    start, end = month(2013, number, flights_project.spec.sources["flights"].time_zone)
    batch = load_period(flights_project, "flights", f"2013-{number:02d}", start, end)
    assert batch.report.passed and batch.report.failures == [], batch.report.to_markdown()
    assert batch.origin.endswith("flights.parquet") and has_declared_schema(batch, flights_project)
    assert start <= batch.frame["time_hour"].min() and batch.frame["time_hour"].max() < end
    assert batch.frame["month"].unique().to_list() == [number], "months are cut on the declared calendar"
    assert batch.frame.height == pl.scan_parquet(ROOT / "data" / "flights.parquet").filter(
        pl.col("month") == number).select(pl.len()).collect().item()


@pytest.mark.parametrize("source", ["planes", "airports"])
def test_reference_tables_pass_and_are_coerced(lake: Lake, flights_project: LoadedProject, source: str) -> None:
    batch = load_reference(flights_project, source)
    assert batch.report.passed and batch.period is None and batch.report.failures == []
    assert has_declared_schema(batch, flights_project)


def test_weather_project_csv_months_pass(lake: Lake, weather_project: LoadedProject) -> None:
    for year, number in [(2012, 1), (2014, 6), (2015, 12)]:
        start, end = month(year, number)
        batch = load_period(weather_project, "weather", f"{year}-{number:02d}", start, end)
        assert batch.report.passed and batch.report.failures == [], batch.report.to_markdown()
        assert batch.frame.height == 2 * (end - start).days, "two locations, one row a day"
        assert has_declared_schema(batch, weather_project)


def test_shuffled_landed_csv_passes_and_is_put_back_in_declared_order(deliver: Callable, march_2012: pl.DataFrame,
                                                                      weather_project: LoadedProject) -> None:
    batch = deliver(march_2012.select(reversed(march_2012.columns)).reverse())
    assert batch.report.passed and batch.delivery is not None
    assert batch.frame.columns == list(weather_project.spec.sources["weather"].schema_)
    assert has_declared_schema(batch, weather_project)


def test_impossible_temperature_is_rejected(deliver: Callable, march_2012: pl.DataFrame) -> None:
    batch = deliver(with_value(march_2012, "temp_min", 4, -999.0))
    assert only_failure(batch).startswith("temp_min within [-50, 40]: 1 of 62 rows (1.61%) outside (e.g. -999)")
    assert batch.report.failures[0].sample_rows[0]["temp_min"] == -999


def test_extra_rule_failing_is_rejected(deliver: Callable, march_2012: pl.DataFrame) -> None:
    batch = deliver(with_value(march_2012, "temp_max", 9, -20.0))
    assert only_failure(batch) == "rule min_below_max (temp_min <= temp_max): 1 of 62 rows (1.61%) break it"
    row = batch.report.failures[0].sample_rows[0]
    assert list(row)[:2] == ["temp_min", "temp_max"] and row["temp_max"] == -20


def test_text_in_numeric_csv_column_is_one_failure(deliver: Callable, march_2012: pl.DataFrame) -> None:
    frame = march_2012.with_columns(pl.col("wind").cast(pl.String))
    batch = deliver(with_value(frame, "wind", 2, "calm"))
    description = only_failure(batch)
    assert description.startswith("wind is declared float but the whole column is text: 1 of 62 values")
    assert "'calm'" in description and batch.frame.schema["wind"] == pl.String


def test_missing_column_and_unknown_domain_value(deliver: Callable, march_2012: pl.DataFrame) -> None:
    assert only_failure(deliver(march_2012.drop("wind"))).startswith("required column wind is missing")
    assert "(e.g. 'hail')" in only_failure(deliver(with_value(march_2012, "weather", 0, "hail")))


def test_null_and_duplicate_keys_are_rejected(deliver: Callable, march_2012: pl.DataFrame) -> None:
    nulls = deliver(with_value(march_2012, "location", 1, None))
    assert only_failure(nulls) == "location non-null: 1 of 62 rows (1.61%) null"
    doubled = deliver(pl.concat([march_2012, march_2012.head(1)]))
    assert only_failure(doubled) == "(location, date) unique: 2 of 63 rows (3.17%) duplicated"


def test_landed_rows_outside_the_period_are_rejected(deliver: Callable, march_2012: pl.DataFrame) -> None:
    late = march_2012.head(3).with_columns(pl.col("date").dt.offset_by("1mo"))
    batch = deliver(pl.concat([march_2012, late]))
    assert only_failure(batch).startswith(
        "batch claims [2012-03-01, 2012-04-01) but has date outside it: 3 of 65 rows (4.62%) outside the period")


def test_entirely_null_column_is_rejected(lake: Lake, flights_project: LoadedProject) -> None:
    bounds = month(2013, 5, flights_project.spec.sources["weather"].time_zone)
    frame = load_period(flights_project, "weather", "2013-05", *bounds).frame
    path = lake.root.parent / "2013-05.parquet"
    frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("wind_gust")).write_parquet(path)
    batch = load_period(flights_project, "weather", "2013-05", *bounds,
                        lake.deliveries.add(path, "weather", "2013-05", landed_by="test"))
    assert only_failure(batch) == "column wind_gust is entirely null"


def test_rejected_batch_is_kept_as_delivered_with_a_one_line_reason(lake: Lake, deliver: Callable,
                                                                    march_2012: pl.DataFrame) -> None:
    batch = deliver(with_value(march_2012, "temp_min", 4, -999.0))
    folder = quarantine(lake, batch)
    assert (folder / "2012-03.csv").exists() and (folder / "report.json").exists()
    [line] = rejection_message([(batch, folder)]).splitlines()
    assert line.startswith("weather 2012-03 from ") and "temp_min within [-50, 40]" in line


def test_unreadable_landed_file_is_a_clear_failure(lake: Lake, weather_project: LoadedProject) -> None:
    path = lake.root.parent / "2012-03.parquet"
    path.write_bytes(b"PAR1 truncated")
    batch = load_period(weather_project, "weather", "2012-03", *month(2012, 3),
                        lake.deliveries.add(path, "weather", "2012-03", landed_by="test"))
    assert batch.frame is None and not batch.report.passed
    assert only_failure(batch).startswith("2012-03.parquet is not a readable table: ")


def test_nothing_to_read_is_a_clear_failure(lake: Lake, weather_project: LoadedProject) -> None:
    source = weather_project.spec.sources["weather"].model_copy(update={"path": None})
    project = LoadedProject(weather_project.spec.model_copy(update={"sources": {"weather": source}}),
                            weather_project.path)
    batch = load_period(project, "weather", "2012-03", *month(2012, 3))
    assert batch.frame is None and batch.origin == "nowhere"
    assert only_failure(batch) == "nothing landed for weather 2012-03 and source weather declares no `path` to read it from"
