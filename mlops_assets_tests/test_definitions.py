"""The code location loads the way `dagster dev` and the CLI load it, with every job resolvable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl

from mlops_assets.cli import main
from mlops_assets.definitions import build_definitions
from mlops_assets.lake import Lake
from mlops_assets.settings import DATA_DIR, PROJECT_ROOT

JOBS = {"ingestion_job", "feature_repository_job", "continuous_training_job", "landed_month_job",
        "approve_model", "rollback_champion"}


def test_every_job_and_asset_resolves() -> None:
    defs = build_definitions()
    for job in JOBS:
        assert defs.resolve_job_def(job).name == job
    keys = {a.key.to_user_string() for a in defs.resolve_all_asset_specs()}
    assert {"flights", "weather", "weather_features", "route_delay_stats", "online_store", "training_set",
            "candidate_model", "model_evaluation", "registered_model_version", "champion_model"} <= keys
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("flights")).partitions_def is not None


def test_workspace_points_at_the_package(tmp_path: Path) -> None:
    assert "module_name: mlops_assets" in (PROJECT_ROOT / "workspace.yaml").read_text()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "MLOPS_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-m", "dagster", "job", "list", "-m", "mlops_assets"],
                         capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    listed = {line.removeprefix("Job: ").strip() for line in out.stdout.splitlines() if line.startswith("Job: ")}
    assert listed >= JOBS


def test_land_cli_delivers_a_file_as_a_month(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "may.csv"
    Lake(tmp_path, DATA_DIR).embedded_month("flights", "2013-05").head(10).drop("time_hour").write_csv(source)
    assert main(["land", str(source), "--table", "flights", "--month", "2013-05"]) == 0
    landed = Lake(tmp_path / "state", DATA_DIR).landed_file("flights", "2013-05")
    assert landed is not None and pl.read_csv(landed).height == 10


def test_profile_selects_storage_and_names_what_is_missing(monkeypatch) -> None:
    import pytest

    from mlops_assets.cli import dagster_yaml
    from mlops_assets.settings import postgres_url, profile
    from mlops_assets.tracking import default_tracking_uri

    assert "storage:" not in dagster_yaml("embedded") and "MLOPS_DAGSTER_POSTGRES_URL" in dagster_yaml("postgres")
    monkeypatch.setenv("MLOPS_PROFILE", "postgres")
    monkeypatch.delenv("MLOPS_POSTGRES_URL", raising=False)
    with pytest.raises(ValueError, match="MLOPS_POSTGRES_URL"):
        profile()
    monkeypatch.setenv("MLOPS_POSTGRES_URL", "postgresql://u@127.0.0.1:5432/")
    assert default_tracking_uri() == "postgresql+psycopg2://u@127.0.0.1:5432/mlops_mlflow"
    assert postgres_url("postgres", sqlalchemy=False) == "postgresql://u@127.0.0.1:5432/postgres"
