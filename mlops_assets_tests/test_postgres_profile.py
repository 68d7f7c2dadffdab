"""The `postgres` profile end to end: Dagster runs and the MLflow registry live in PostgreSQL.

Needs a server: `.ci/run` starts one on loopback and sets MLOPS_TEST_POSTGRES_URL; without it
the test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_assets.settings import PROJECT_ROOT
from mlops_assets_tests.projects import project_copy

SERVER = os.environ.get("MLOPS_TEST_POSTGRES_URL", "")
pytestmark = [pytest.mark.postgres, pytest.mark.skipif(not SERVER, reason="MLOPS_TEST_POSTGRES_URL not set")]


def query(database: str, sql: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(f"{SERVER.rstrip('/')}/{database}") as conn, conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def test_main_command_on_postgres_profile(tmp_path: Path, scratch_postgres: str) -> None:
    env = {**os.environ, "MLOPS_PROFILE": "postgres", "MLOPS_POSTGRES_URL": SERVER,
           "MLOPS_STATE_DIR": str(tmp_path / "state"), "DAGSTER_HOME": str(tmp_path / "state" / "dagster_home")}
    env.pop("MLOPS_DAGSTER_POSTGRES_URL", None)
    env["MLOPS_PROJECT"] = str(project_copy("flights", tmp_path / "project.yaml", **{"split.min_rows": 300,
                                                                                    "gate.min_slice_rows": 300}))
    done = subprocess.run([sys.executable, "-m", "mlops_assets", "run", "--periods", "2013-01..2013-04"],
                          env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = dict(query("mlops_dagster", "SELECT run_id, status FROM runs ORDER BY create_timestamp DESC LIMIT 2"))
    assert set(runs.values()) == {"SUCCESS"}
    aliases = query("mlops_mlflow", "SELECT alias, version FROM registered_model_aliases "
                                    "WHERE name = 'flights_arrival_delay' AND alias = 'champion'")
    assert aliases and f"version {aliases[0][1]}" in done.stdout
    assert not (tmp_path / "state" / "mlflow" / "mlflow.db").exists()
    assert "postgres" in (tmp_path / "state" / "dagster_home" / "dagster.yaml").read_text()
