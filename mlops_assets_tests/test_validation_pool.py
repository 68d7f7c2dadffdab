"""Periods validated side by side in worker processes (once `pool.start` ran, as `mlops-assets run` does) give
exactly the reports of validating them one by one here, failures included; without a start nothing is
spawned; a pool whose worker died is dropped and the batches still validated."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.ingestion.batches import load_periods
from mlops_assets.lake import Lake
from mlops_assets.project.loading import LoadedProject, load_project
from mlops_assets.validation import pool
from mlops_assets.validation.suites import validate_batch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weather() -> LoadedProject:
    return load_project(ROOT / "projects" / "weather")


@pytest.fixture()
def fresh_pool() -> Iterator[None]:
    pool.stop()
    yield
    pool.stop()


def months(*numbers: int) -> list[tuple[str, datetime, datetime, None]]:
    """(key, start, end, no delivery) of 2012's months: the weather project's embedded data."""
    return [(f"2012-{n:02d}", datetime(2012, n, 1, tzinfo=UTC), datetime(2012 + n // 12, n % 12 + 1, 1, tzinfo=UTC),
             None) for n in numbers]


def months_keys(*numbers: int) -> list[str]:
    return [key for key, *_ in months(*numbers)]


def test_pooled_reports_equal_in_process_ones_failures_included(lake: Lake, weather: LoadedProject,
                                                                fresh_pool: None) -> None:
    pool.start(2)
    batches = load_periods(weather, "weather", months(1, 2, 3, 4))
    assert [b.report.passed for b in batches] == [True] * 4 and [b.period for b in batches] == months_keys(1, 2, 3, 4)
    spec = weather.spec.sources["weather"]
    frames = [b.frame for b in batches]
    frames[2] = frames[2].with_columns(pl.lit(None, dtype=frames[2].schema[spec.time]).alias(spec.time))
    names = [b.report.batch_name for b in batches]
    periods = [(start, end) for _, start, end, _ in months(1, 2, 3, 4)]
    pooled = pool.validate_batches("weather", spec, frames, names, periods)
    here = [validate_batch("weather", spec, f, n, p) for f, n, p in zip(frames, names, periods, strict=True)]
    assert pooled == here and not pooled[2].passed and pooled[0].passed


def test_without_start_nothing_is_spawned_and_a_broken_pool_is_dropped(lake: Lake, weather: LoadedProject,
                                                                      fresh_pool: None) -> None:
    """Runs side by side (a backfill, the daemon) must not each spawn a worker per core."""
    assert [b.report.passed for b in load_periods(weather, "weather", months(3, 4, 5, 6))] == [True] * 4
    assert pool._POOL is None
    pool.start(1)
    workers = list(pool._POOL._processes.values())
    os.kill(workers[0].pid, signal.SIGKILL)
    workers[0].join()
    batches = load_periods(weather, "weather", months(7, 8, 9))
    assert [b.report.passed for b in batches] == [True] * 3 and pool._POOL is None
