"""Suites generated from the project files' declarations, on real slices and on deliberately broken ones."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import polars as pl
import pytest

from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.project.spec import SourceSpec
from mlops_assets.validation.specs import Range, table_spec
from mlops_assets.validation.suites import ValidationReport, validate_batch

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"


ZONE = "America/New_York"  # the flights project cuts its months on New York's calendar


def month(year: int, number: int, zone: str = ZONE) -> tuple[datetime, datetime]:
    """[start, end) of a calendar month in `zone`."""
    tz = ZoneInfo(zone)
    return datetime(year, number, 1, tzinfo=tz), datetime(year + number // 12, number % 12 + 1, 1, tzinfo=tz)


@pytest.fixture(scope="module")
def flights_project() -> LoadedProject:
    return load_project(ROOT / "projects" / "flights")


@pytest.fixture(scope="module")
def tables() -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(DATA_DIR / f"{name}.parquet") for name in ("flights", "weather", "planes", "airports")}


def in_month(frame: pl.DataFrame, year: int, number: int) -> pl.DataFrame:
    start, end = (moment.astimezone(UTC) for moment in month(year, number))
    return frame.filter((pl.col("time_hour") >= start) & (pl.col("time_hour") < end))


@pytest.fixture(scope="module")
def march_frame(tables: dict[str, pl.DataFrame]) -> pd.DataFrame:
    return in_month(tables["flights"], 2013, 3).head(3000).to_pandas()


@pytest.fixture()
def march(march_frame: pd.DataFrame) -> pd.DataFrame:
    """3000 flights of 2013-03 (UTC) with a fresh index, safe to mutate."""
    return march_frame.copy()


def check(project: LoadedProject, frame: pl.DataFrame | pd.DataFrame, source: str = "flights",
          period: tuple[datetime, datetime] | None = None) -> ValidationReport:
    return validate_batch(source, project.spec.sources[source], frame, f"{source} batch", period)


def hard(report: ValidationReport, expectation: str, column: str | None = None) -> list:
    """Hard failures of one expectation type, optionally on one column."""
    return [f for f in report.hard_failures if f.expectation == expectation and (column is None or f.column == column)]


def test_spec_is_generated_from_the_declaration(flights_project: LoadedProject) -> None:
    assert flights_project.spec.sources["flights"].time_zone == ZONE
    spec = table_spec("weather", flights_project.spec.sources["weather"])
    assert spec.columns[:2] == ("origin", "year") and "time_hour" in spec.columns
    assert {"origin", "time_hour"} <= set(spec.required) and "temp" not in spec.required
    assert spec.max_null_share["wind_gust"] == 0.95 and spec.max_null_share["temp"] == 0.10
    assert [r for r in spec.ranges if r.column == "wind_speed"] == [
        Range("wind_speed", 0, 150, "soft"), Range("wind_speed", 0, 150, "hard", 0.99)]
    planes = table_spec("planes", flights_project.spec.sources["planes"])
    assert "speed" not in planes.max_null_share and "speed" in planes.never_empty
    flights = flights_project.spec.sources["flights"]
    assert set(table_spec("flights", flights).columns) == set(flights.schema_), "derived columns are not delivered"


@pytest.mark.parametrize(("source", "months"), [("flights", (1, 6, 12)), ("weather", (2, 11))])
def test_real_months_pass(flights_project: LoadedProject, tables: dict[str, pl.DataFrame], source: str,
                          months: tuple[int, ...]) -> None:
    for number in months:
        batch = in_month(tables[source], 2013, number)
        report = check(flights_project, batch, source, month(2013, number))
        assert report.passed, report.to_markdown()
        assert report.hard_failures == [] and report.row_count == batch.height > 0
        assert batch["month"].unique().to_list() == [number], "the local calendar's month"


@pytest.mark.parametrize("source", ["planes", "airports"])
def test_reference_tables_pass_without_any_failure(flights_project: LoadedProject, tables: dict[str, pl.DataFrame],
                                                   source: str) -> None:
    report = check(flights_project, tables[source], source)
    assert report.passed and report.failures == []


def test_known_wind_speed_outlier_is_soft_only(flights_project: LoadedProject, tables: dict[str, pl.DataFrame]) -> None:
    report = check(flights_project, in_month(tables["weather"], 2013, 2), "weather", month(2013, 2))
    assert report.passed
    [soft] = report.soft_failures
    assert soft.column == "wind_speed" and soft.sample_rows[0]["wind_speed"] > 1000


def test_missing_column_is_hard_and_named(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    report = check(flights_project, march.drop(columns=["dep_delay"]))
    [failure] = hard(report, "expect_table_columns_to_match_set", "dep_delay")
    assert "required column dep_delay is missing" in failure.description
    assert all(f.column == "dep_delay" for f in report.failures)


def test_unexpected_extra_column_is_hard(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    report = check(flights_project, march.assign(extra=1))
    [failure] = report.hard_failures
    assert failure.column == "extra" and "unexpected column extra" in failure.description


def test_text_value_in_numeric_column_is_one_hard_failure(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    march["dep_delay"] = march["dep_delay"].astype(object)
    march.loc[10, "dep_delay"] = "late"
    report = check(flights_project, march)
    [failure] = report.failures
    assert (failure.severity, failure.column, failure.unexpected_count) == ("hard", "dep_delay", 1)
    assert "dep_delay is declared float" in failure.description and "'late'" in failure.description
    assert [row["dep_delay"] for row in failure.sample_rows] == ["late"]


def test_polars_text_column_is_reported_as_whole_column_text(flights_project: LoadedProject,
                                                             march: pd.DataFrame) -> None:
    frame = pl.from_pandas(march).with_columns(pl.col("distance").cast(pl.String))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("far")).otherwise("distance")
                               .alias("distance"))
    [failure] = check(flights_project, frame).failures
    assert failure.column == "distance" and "the whole column is text" in failure.description
    assert "1 of 3000 values are not numbers (e.g. 'far')" in failure.description


def test_narrow_and_nullable_dtypes_and_shuffled_order_are_accepted(flights_project: LoadedProject,
                                                                    march: pd.DataFrame) -> None:
    frame = march.astype({"dep_delay": "Float64", "distance": "int32", "air_time": "Float64", "carrier": "string"})
    frame["time_hour"] = frame["time_hour"].dt.tz_convert("America/New_York")
    assert check(flights_project, frame[list(reversed(frame.columns))]).passed


def test_null_in_non_nullable_column_is_hard(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    march.loc[[3, 4], "carrier"] = None
    [failure] = hard(check(flights_project, march), "expect_column_values_to_not_be_null", "carrier")
    assert failure.unexpected_count == 2 and len(failure.sample_rows) == 2
    assert "carrier non-null: 2 of 3000 rows" in failure.description


def test_out_of_range_is_hard_with_sample_rows(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    march.loc[7, "distance"] = 99999
    march.loc[8, "dep_delay"] = -500
    report = check(flights_project, march)
    [distance] = hard(report, "expect_column_values_to_be_between", "distance")
    assert distance.unexpected_count == 1 and distance.sample_rows[0]["distance"] == 99999
    assert "distance within [10, 5000]: 1 of" in distance.description
    [delay] = hard(report, "expect_column_values_to_be_between", "dep_delay")
    assert delay.sample_rows[0]["dep_delay"] == -500


def test_unknown_domain_value_is_hard(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    march.loc[0, "origin"] = "BOS"
    [failure] = hard(check(flights_project, march), "expect_column_values_to_be_in_set", "origin")
    assert "outside the set (e.g. 'BOS')" in failure.description


def test_duplicated_rows_break_the_declared_key(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    doubled = pd.concat([march, march.head(3)], ignore_index=True)
    [failure] = hard(check(flights_project, doubled), "expect_compound_columns_to_be_unique")
    assert failure.unexpected_count == 6 and failure.sample_rows
    assert failure.description.startswith("(year, month, day, carrier, flight, origin, sched_dep_time) unique")


def test_entirely_null_declared_column_is_hard(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    march["tailnum"] = None
    [failure] = check(flights_project, march).failures
    assert (failure.severity, failure.column) == ("hard", "tailnum")
    assert failure.description == "column tailnum is entirely null"


def test_empty_frame_fails_on_row_count_only(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    report = check(flights_project, march.iloc[0:0])
    assert [f.expectation for f in report.failures] == ["expect_table_row_count_to_be_between"]


def test_rows_outside_the_claimed_period_are_hard(flights_project: LoadedProject,
                                                  tables: dict[str, pl.DataFrame]) -> None:
    mixed = pl.concat([in_month(tables["flights"], 2013, 3).head(500), in_month(tables["flights"], 2013, 4).head(20)])
    [failure] = check(flights_project, mixed, period=month(2013, 3)).failures
    assert failure.column == "time_hour" and failure.unexpected_count == 20
    assert "batch claims [2013-03-01, 2013-04-01) but has time_hour outside it: 20 of 520" in failure.description
    assert all(row["time_hour"].startswith("2013-04") for row in failure.sample_rows)


def test_moderate_null_rise_is_soft(flights_project: LoadedProject, tables: dict[str, pl.DataFrame]) -> None:
    batch = in_month(tables["weather"], 2013, 3).to_pandas()
    batch.loc[batch.index[: int(len(batch) * 0.4)], "pressure"] = np.nan
    report = check(flights_project, batch, "weather", month(2013, 3))
    assert report.passed
    [failure] = report.soft_failures
    assert failure.column == "pressure" and failure.expectation == "expect_column_values_to_not_be_null"


def test_rules_that_cannot_run_are_clear_failures(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    declared = flights_project.spec.sources["flights"].model_dump(by_alias=True)
    rules = [{"name": "typo", "rule": "distanse > 0"}, {"name": "broken", "rule": "distance >"}]
    spec = SourceSpec.model_validate({**declared, "expectations": rules})
    report = validate_batch("flights", spec, march, "flights batch")
    messages = sorted(f.description for f in report.hard_failures)
    assert messages[0].startswith("rule broken (distance >) cannot be evaluated: is not a polars SQL expression")
    assert messages[1].startswith("rule typo (distanse > 0) cannot be evaluated: names 'distanse', not a column")


def test_report_serialises_and_renders(flights_project: LoadedProject, march: pd.DataFrame) -> None:
    march.loc[7, "distance"] = 99999
    report = check(flights_project, march)
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["passed"] is False and payload["hard_failure_count"] == 1
    assert payload["failures"][0]["sample_rows"][0]["time_hour"].startswith("2013-03")
    markdown = report.to_markdown()
    assert "FAILED" in markdown and "| distance |" in markdown and "99999" in markdown


def test_period_needs_a_time_column(flights_project: LoadedProject, tables: dict[str, pl.DataFrame]) -> None:
    with pytest.raises(ValueError, match="has no `time` column"):
        check(flights_project, tables["planes"], "planes", month(2013, 3))
