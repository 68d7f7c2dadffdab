"""Shared fixtures: small real slices of the committed sample data and a throwaway state folder."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from mlops_assets.lake import Lake
from mlops_assets.settings import DAGSTER_DATABASE, DATA_DIR, MLFLOW_DATABASE


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


@pytest.fixture()
def scratch_postgres() -> str:
    """The scratch server in MLOPS_TEST_POSTGRES_URL with the profile's databases dropped, so each
    test starts from an empty Dagster and MLflow store (a registry left by an earlier run would point
    at artifacts in a deleted temp folder)."""
    server = os.environ.get("MLOPS_TEST_POSTGRES_URL", "")
    if not server:
        pytest.skip("MLOPS_TEST_POSTGRES_URL not set")
    import psycopg2

    conn = psycopg2.connect(f"{server.rstrip('/')}/postgres")
    conn.autocommit = True
    with conn.cursor() as cursor:
        for database in (DAGSTER_DATABASE, MLFLOW_DATABASE):
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    conn.close()
    return server
