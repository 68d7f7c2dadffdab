"""Wrong but valid: semantic checks of a real month against the months before it, and file diagnoses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.ingestion.batches import coerce, embedded_period, read_source_file
from mlops_assets.lake import BatchReadError
from mlops_assets.partitions import period_bounds
from mlops_assets.project.loading import load_project
from mlops_assets.settings import PROJECTS_DIR
from mlops_assets.validation.semantics import column_psi, semantic_report

PROJECT = load_project(PROJECTS_DIR / "flights")
SPEC = PROJECT.spec.sources["flights"]


def month(number: int) -> pl.DataFrame:
    bounds = period_bounds(f"2013-{number:02d}-01", "month", SPEC.time_zone)
    return coerce(embedded_period(PROJECT, "flights", *bounds), SPEC)


@pytest.fixture(scope="module")
def earlier() -> list[pl.DataFrame]:
    return [month(m) for m in range(1, 11)]


@pytest.fixture(scope="module")
def november() -> pl.DataFrame:
    return month(11)


def judge(batch: pl.DataFrame, earlier: list[pl.DataFrame], period: str = "2013-11") -> list[str]:
    bounds = period_bounds(f"{period}-01", "month", SPEC.time_zone)
    return semantic_report(f"flights {period}", SPEC, SPEC.semantics, batch, earlier, bounds).findings


def local_read_as_utc(frame: pl.DataFrame) -> pl.DataFrame:
    wall = pl.col("time_hour").dt.convert_time_zone(SPEC.time_zone).dt.replace_time_zone(None)
    return frame.with_columns(wall.dt.replace_time_zone("UTC").alias("time_hour"))


SHIFTED: dict[str, tuple[Callable[[pl.DataFrame], pl.DataFrame], str]] = {
    "storm: every delay +45 min": (lambda f: f.with_columns(pl.col("dep_delay") + 45, pl.col("arr_delay") + 45),
                                   "dep_delay shifted"),
    "distances in km": (lambda f: f.with_columns(pl.col("distance") * 1.609344), "distance shifted"),
    "only days 1-10": (lambda f: f.filter(pl.col("day") <= 10), "10 of the period's 30 days"),
    "time_hour a month late": (lambda f: f.with_columns(pl.col("time_hour").dt.offset_by("1mo")),
                               "disagrees with their calendar columns"),
    "local time read as UTC": (local_read_as_utc, "disagrees with their calendar columns"),
}


def test_a_good_month_passes(earlier: list[pl.DataFrame], november: pl.DataFrame) -> None:
    assert judge(november, earlier) == []


@pytest.mark.parametrize("case", list(SHIFTED))
def test_wrong_but_valid_months_are_held(case: str, earlier: list[pl.DataFrame], november: pl.DataFrame) -> None:
    change, needle = SHIFTED[case]
    findings = judge(change(november), earlier)
    assert any(needle in f for f in findings), findings


def test_a_month_shifted_into_the_next_period_is_held_there(earlier: list[pl.DataFrame],
                                                            november: pl.DataFrame) -> None:
    """November's rows with time_hour moved to December, delivered as December: the calendar columns disagree."""
    moved = november.with_columns(pl.col("time_hour").dt.offset_by("1mo"))
    assert any("calendar columns" in f for f in judge(moved, [*earlier, november], period="2013-12"))


def test_too_little_history_is_said_not_guessed(november: pl.DataFrame) -> None:
    bounds = period_bounds("2013-11-01", "month", SPEC.time_zone)
    report = semantic_report("flights 2013-11", SPEC, SPEC.semantics, november, [month(1)], bounds)
    assert not report.held and "1 earlier period(s), 3 needed" in report.notes[0]


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift() -> None:
    values = pl.Series("x", list(range(1000)), dtype=pl.Float64)
    assert column_psi(values, values) == pytest.approx(0.0, abs=1e-9)
    assert column_psi(values, values + 100) < column_psi(values, values + 500)
    text = pl.Series("c", ["a"] * 500 + ["b"] * 500)
    assert column_psi(text, pl.Series("c", ["a"] * 900 + ["b"] * 100)) > 0.25


def _utf16(path: Path) -> None:
    path.write_text("year,month\n2013,5\n", encoding="utf-16")


def _semicolons(path: Path) -> None:
    path.write_text("year;month;day\n2013;5;1\n")


def _cut_off(path: Path) -> None:
    path.write_text("year,month,day\n2013,5,1\n2013,5")


def _latin1(path: Path) -> None:
    path.write_bytes("year,dest\n2013,Bogot\xe1\n".encode("latin-1"))


BROKEN_FILES = {"UTF-16": (_utf16, "UTF-16"), "semicolons": (_semicolons, "wrong delimiter: the header is "
                                                                          "separated by semicolons"),
                "truncated": (_cut_off, "truncated: the last line has 2 of 3 fields"),
                "latin-1": (_latin1, "not UTF-8 text")}


@pytest.mark.parametrize("case", list(BROKEN_FILES))
def test_a_broken_file_is_named_for_what_is_wrong(case: str, tmp_path: Path) -> None:
    write, message = BROKEN_FILES[case]
    write(tmp_path / "2013-05.csv")
    with pytest.raises(BatchReadError, match=message):
        read_source_file(tmp_path / "2013-05.csv", SPEC)


def test_a_cut_parquet_file_says_truncated(tmp_path: Path, november: pl.DataFrame) -> None:
    target = tmp_path / "2013-11.parquet"
    november.head(100).write_parquet(target)
    target.write_bytes(target.read_bytes()[:-20])
    with pytest.raises(BatchReadError, match="truncated or not parquet"):
        read_source_file(target, SPEC)
