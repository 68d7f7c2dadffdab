"""Tests of the nycflights13 validation suites on real slices and on deliberately broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_assets.validation.suites import ValidationReport, validate_batch

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
CSV_DIR = Path("/work/shared/datasets/nycflights13")
CSV_FILES = {
    "flights": "flights.csv.zip",
    "weather": "weather.csv",
    "planes": "planes.csv",
    "airlines": "airlines.csv",
    "airports": "airports.csv",
}


def _load(table: str) -> pd.DataFrame:
    """Committed parquet copy when present (CI), else the shared CSVs (NA = missing)."""
    parquet = DATA_DIR / f"{table}.parquet"
    if parquet.exists():
        return pd.read_parquet(parquet)
    frame = pd.read_csv(CSV_DIR / CSV_FILES[table], na_values=["NA"], keep_default_na=False)
    if "time_hour" in frame.columns:
        frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
    return frame


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    """All five tables, loaded once for the module."""
    return {table: _load(table) for table in CSV_FILES}


@pytest.fixture()
def march(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Flights of 2013-03 with a fresh index, safe to mutate."""
    flights = tables["flights"]
    return flights[flights["month"] == 3].reset_index(drop=True).copy()


def _hard(report: ValidationReport, expectation: str, column: str | None = None) -> list:
    """Hard failures of one expectation type, optionally on one column."""
    return [
        f
        for f in report.hard_failures
        if f.expectation == expectation and (column is None or f.column == column)
    ]


@pytest.mark.parametrize("table", ["flights", "weather"])
def test_every_real_month_passes(tables: dict[str, pd.DataFrame], table: str) -> None:
    frame = tables[table]
    for month in range(1, 13):
        batch = frame[frame["month"] == month]
        report = validate_batch(table, batch, f"{table} 2013-{month:02d}", expected_month=(2013, month))
        assert report.passed, report.to_markdown()
        assert report.row_count == len(batch) > 0


@pytest.mark.parametrize("table", ["planes", "airlines", "airports"])
def test_reference_tables_pass_without_any_failure(tables: dict[str, pd.DataFrame], table: str) -> None:
    report = validate_batch(table, tables[table], table)
    assert report.passed
    assert report.failures == []


def test_known_wind_speed_outlier_is_soft_only(tables: dict[str, pd.DataFrame]) -> None:
    weather = tables["weather"]
    report = validate_batch("weather", weather[weather["month"] == 2], "weather 2013-02", (2013, 2))
    assert report.passed
    [soft] = report.soft_failures
    assert soft.column == "wind_speed"
    assert soft.sample_rows[0]["wind_speed"] > 1000


def test_missing_column_is_hard_and_named(march: pd.DataFrame) -> None:
    report = validate_batch("flights", march.drop(columns=["dep_delay"]), "flights 2013-03")
    assert not report.passed
    [failure] = _hard(report, "expect_table_columns_to_match_set", "dep_delay")
    assert "dep_delay" in failure.description
    assert all(f.column == "dep_delay" for f in report.failures)


def test_unexpected_extra_column_is_hard(march: pd.DataFrame) -> None:
    report = validate_batch("flights", march.assign(extra=1), "flights 2013-03")
    assert _hard(report, "expect_table_columns_to_match_set", "extra")


def test_text_in_numeric_column_is_hard_and_named(march: pd.DataFrame) -> None:
    march["dep_delay"] = march["dep_delay"].astype(object)
    march.loc[10, "dep_delay"] = "late"
    report = validate_batch("flights", march, "flights 2013-03")
    assert not report.passed
    [failure] = report.hard_failures
    assert failure.column == "dep_delay"
    assert failure.expectation == "expect_column_values_to_be_in_type_list"
    assert "dep_delay" in failure.description and "'late'" in failure.description
    assert failure.unexpected_count == 1
    assert [row["dep_delay"] for row in failure.sample_rows] == ["late"]


def test_nullable_and_narrow_numeric_dtypes_are_accepted(march: pd.DataFrame) -> None:
    frame = march.astype({"dep_delay": "Int64", "distance": "int32", "air_time": "Float64"})
    frame["time_hour"] = frame["time_hour"].astype("datetime64[ns, UTC]")
    assert validate_batch("flights", frame, "flights 2013-03").passed


def test_null_in_key_is_hard(march: pd.DataFrame) -> None:
    march.loc[[3, 4], "carrier"] = None
    report = validate_batch("flights", march, "flights 2013-03")
    [failure] = _hard(report, "expect_column_values_to_not_be_null", "carrier")
    assert failure.unexpected_count == 2
    assert len(failure.sample_rows) == 2


def test_out_of_range_is_hard_with_sample_rows(march: pd.DataFrame) -> None:
    march.loc[7, "distance"] = 99999
    march.loc[8, "dep_delay"] = -500
    report = validate_batch("flights", march, "flights 2013-03")
    [distance] = _hard(report, "expect_column_values_to_be_between", "distance")
    assert distance.unexpected_count == 1
    assert distance.sample_rows[0]["distance"] == 99999
    assert "distance within [10, 5000]: 1 of" in distance.description
    [delay] = _hard(report, "expect_column_values_to_be_between", "dep_delay")
    assert delay.sample_rows[0]["dep_delay"] == -500


def test_unknown_origin_is_hard(march: pd.DataFrame) -> None:
    march.loc[0, "origin"] = "BOS"
    report = validate_batch("flights", march, "flights 2013-03")
    [failure] = _hard(report, "expect_column_values_to_be_in_set", "origin")
    assert "'BOS'" in failure.description


def test_duplicated_rows_break_uniqueness(march: pd.DataFrame) -> None:
    doubled = pd.concat([march, march.head(3)], ignore_index=True)
    report = validate_batch("flights", doubled, "flights 2013-03")
    [failure] = _hard(report, "expect_compound_columns_to_be_unique")
    assert failure.unexpected_count == 6
    assert failure.sample_rows


def test_empty_frame_fails_on_row_count(march: pd.DataFrame) -> None:
    report = validate_batch("flights", march.iloc[0:0], "flights 2013-03")
    assert [f.expectation for f in report.hard_failures] == ["expect_table_row_count_to_be_between"]


def test_batch_claiming_march_with_april_rows_is_hard(tables: dict[str, pd.DataFrame]) -> None:
    flights = tables["flights"]
    mixed = pd.concat([flights[flights["month"] == 3], flights[flights["month"] == 4].head(20)])
    report = validate_batch("flights", mixed, "flights 2013-03", expected_month=(2013, 3))
    [failure] = report.hard_failures
    assert failure.column == "month"
    assert "claims 2013-03 but contains other months" in failure.description
    assert failure.unexpected_count == 20
    assert {row["month"] for row in failure.sample_rows} == {4}


def test_moderate_null_rise_in_sparse_column_is_soft(tables: dict[str, pd.DataFrame]) -> None:
    weather = tables["weather"]
    batch = weather[weather["month"] == 3].reset_index(drop=True)
    batch.loc[batch.index[: int(len(batch) * 0.4)], "pressure"] = np.nan
    report = validate_batch("weather", batch, "weather 2013-03", expected_month=(2013, 3))
    assert report.passed
    [failure] = report.soft_failures
    assert failure.column == "pressure"
    assert failure.expectation == "expect_column_values_to_not_be_null"


def test_report_serialises_and_renders(march: pd.DataFrame) -> None:
    march.loc[7, "distance"] = 99999
    report = validate_batch("flights", march, "flights 2013-03")
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["passed"] is False
    assert payload["failures"][0]["sample_rows"][0]["time_hour"].startswith("2013-03")
    markdown = report.to_markdown()
    assert "FAILED" in markdown and "| distance |" in markdown and "99999" in markdown


def test_unknown_table_and_misplaced_month_are_rejected(tables: dict[str, pd.DataFrame]) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        validate_batch("trains", tables["airlines"], "trains")
    with pytest.raises(ValueError, match="no monthly period"):
        validate_batch("planes", tables["planes"], "planes", expected_month=(2013, 3))
