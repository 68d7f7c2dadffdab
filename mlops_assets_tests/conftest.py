"""Shared fixtures: small real slices of the committed sample data and a throwaway state folder."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mlops_assets.lake import Lake
from mlops_assets.settings import DATA_DIR


@pytest.fixture(scope="session")
def flights_sample() -> pl.DataFrame:
    """Two real months of flights (January and February)."""
    return pl.scan_parquet(DATA_DIR / "flights.parquet").filter(pl.col("month") <= 2).collect()


@pytest.fixture(scope="session")
def weather_sample() -> pl.DataFrame:
    return pl.scan_parquet(DATA_DIR / "weather.parquet").filter(pl.col("month") <= 2).collect()


@pytest.fixture(scope="session")
def planes() -> pl.DataFrame:
    return pl.read_parquet(DATA_DIR / "planes.parquet")


@pytest.fixture()
def lake(tmp_path: Path) -> Lake:
    return Lake(root=tmp_path / "state", data_dir=DATA_DIR)
