"""The code location loads the way `dagster dev` and the CLI load it, with every job resolvable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlops_assets.cli import main
from mlops_assets.definitions import build_definitions
from mlops_assets.lake import Lake
from mlops_assets.settings import DATA_DIR, PROJECT_ROOT, PROJECTS_DIR

JOBS = {"ingestion_job", "feature_repository_job", "continuous_training_job", "landed_period_job",
        "monitoring_job", "batch_scoring_job", "approve_model", "rollback_champion"}


def test_every_job_and_asset_resolves() -> None:
    defs = build_definitions(PROJECTS_DIR / "flights" / "project.yaml")
    for job in JOBS:
        assert defs.resolve_job_def(job).name == job
    keys = {a.key.to_user_string() for a in defs.resolve_all_asset_specs()}
    assert {"flights", "weather", "weather_features", "route_delay_stats", "online_store", "training_set",
            "candidate_model", "model_evaluation", "registered_model_version", "champion_model"} <= keys
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("flights")).partitions_def is not None


def test_the_second_project_gets_the_same_graph() -> None:
    defs = build_definitions(PROJECTS_DIR / "weather" / "project.yaml")
    for job in JOBS:
        assert defs.resolve_job_def(job).name == job
    keys = {a.key.to_user_string() for a in defs.resolve_all_asset_specs()}
    assert {"weather", "daily_weather", "online_store", "training_set", "candidate_model", "champion_model",
            "batch_predictions", "drift_report", "model_performance"} <= keys
    sensors = {s.name for s in defs.sensors}
    assert {"landing_folder_sensor", "monitor_retraining_sensor", "run_failure_alert"} <= sensors


def test_importing_the_package_or_the_serving_app_builds_no_definitions() -> None:
    code = ("import sys, mlops_assets, mlops_assets.serving.app, mlops_assets.project.loading; "
            "bad = [m for m in sys.modules if m == 'dagster' or m.startswith(('mlops_assets.definitions', "
            "'mlops_assets.training', 'mlops_assets.evaluation', 'mlops_assets.registry'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_loading_the_definitions_leaves_numba_to_the_online_reads() -> None:
    """numba takes ~0.3-1 s to import: every Dagster process loads the definitions, only serving reads views."""
    code = "import sys, mlops_assets.definitions; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_workspace_points_at_the_package(tmp_path: Path) -> None:
    assert "module_name: mlops_assets.definitions" in (PROJECT_ROOT / "workspace.yaml").read_text()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "MLOPS_STATE_DIR": str(tmp_path / "state")}
    out = subprocess.run([sys.executable, "-m", "dagster", "job", "list", "-m", "mlops_assets.definitions"],
                         capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    listed = {line.removeprefix("Job: ").strip() for line in out.stdout.splitlines() if line.startswith("Job: ")}
    assert listed >= JOBS


def test_land_cli_delivers_a_file_as_a_period(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLOPS_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "may.csv"
    pl.read_parquet(DATA_DIR / "flights.parquet").head(10).drop("time_hour").write_csv(source)
    assert main(["land", str(source), "--table", "flights", "--period", "2013-05"]) == 0
    [landed] = Lake(tmp_path / "state", DATA_DIR).deliveries.all()
    assert (landed.source, landed.period, landed.status, landed.original_name) == ("flights", "2013-05", "pending",
                                                                                   "may.csv")
    assert landed.blob.read_bytes() == source.read_bytes() and landed.size == source.stat().st_size


@pytest.mark.parametrize(("args", "message"), [
    (["--table", "flights", "--period", "2013-13"], "is not a month"),
    (["--table", "flights", "--period", "nov"], "is not a month"),
    (["--table", "flights", "--period", "2013-11/../../x"], "is not a month"),
    (["--table", "flights", "--period", "2012-12"], "outside the project's calendar"),
    (["--table", "planes", "--period", "2013-05"], "declares no periodic source"),
    (["--table", "flights", "--period", "2099-01"], "outside the project's calendar"),
])
def test_land_refuses_bad_arguments_and_changes_nothing(tmp_path: Path, monkeypatch, capsys, args, message) -> None:
    monkeypatch.setenv("MLOPS_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "x.csv"
    source.write_text("a\n1\n")
    assert main(["land", str(source), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "state").exists()


def test_land_with_a_bad_path_keeps_the_current_delivery(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLOPS_STATE_DIR", str(tmp_path / "state"))
    good = tmp_path / "good.csv"
    good.write_text("a\n1\n")
    assert main(["land", str(good), "--table", "flights", "--period", "2013-05"]) == 0
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "x.txt").write_text("a\n1\n")
    for bad in (tmp_path / "missing.csv", tmp_path / "dir.csv", tmp_path / "x.txt"):
        assert main(["land", str(bad), "--table", "flights", "--period", "2013-05"]) == 2
    err = capsys.readouterr().err
    assert err.count("not a readable .csv or .parquet file") == 2 and "deliver .csv or .parquet" in err
    [kept] = Lake(tmp_path / "state", DATA_DIR).deliveries.all()
    assert kept.original_name == "good.csv" and kept.blob.read_text() == "a\n1\n"


def test_deliveries_are_listed_and_discarded_by_command(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MLOPS_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "a.csv").write_text("a\n1\n")
    assert main(["land", str(tmp_path / "a.csv"), "--table", "weather", "--period", "2013-05"]) == 0
    assert main(["deliveries"]) == 0
    listing = capsys.readouterr().out
    assert "d000001" in listing and "pending" in listing and "a.csv" in listing
    assert main(["discard", "d000001", "--reason", "wrong station"]) == 0
    assert main(["discard", "1", "--reason", "again"]) == 2
    assert main(["retry", "d000001"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "discarded already" in err[0] and "land the file again" in err[1]
    assert main(["retry", "d7"]) == 2 and "no delivery d000007" in capsys.readouterr().err


def test_profile_selects_storage_and_names_what_is_missing(monkeypatch) -> None:
    import pytest

    from mlops_assets.cli import dagster_yaml
    from mlops_assets.settings import default_tracking_uri, postgres_url, profile

    assert "storage:" not in dagster_yaml("embedded") and "MLOPS_DAGSTER_POSTGRES_URL" in dagster_yaml("postgres")
    monkeypatch.setenv("MLOPS_PROFILE", "postgres")
    monkeypatch.delenv("MLOPS_POSTGRES_URL", raising=False)
    with pytest.raises(ValueError, match="MLOPS_POSTGRES_URL"):
        profile()
    monkeypatch.setenv("MLOPS_POSTGRES_URL", "postgresql://u@127.0.0.1:5432/")
    assert default_tracking_uri() == "postgresql+psycopg2://u@127.0.0.1:5432/mlops_mlflow"
    assert postgres_url("postgres", sqlalchemy=False) == "postgresql://u@127.0.0.1:5432/postgres"
