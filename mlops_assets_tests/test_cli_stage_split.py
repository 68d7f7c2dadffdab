"""What `mlops-assets run` does around its two jobs: the tracking store prepared in a second process,
and the per-stage split it prints (start-up, jobs with their steps slowest first, the rest, the total)."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_assets.cli import format_stage_split, prepare_tracking_store


def test_the_tracking_store_is_created_in_a_second_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("MLOPS_PROFILE", raising=False)
    monkeypatch.delenv("MLOPS_MLFLOW_TRACKING_URI", raising=False)
    assert prepare_tracking_store().wait(timeout=120) == 0
    with sqlite3.connect(tmp_path / "mlflow" / "mlflow.db") as db:
        assert {name for (name,) in db.execute("select name from experiments")} == {"Default", "mlops_assets"}


def test_split_lists_steps_slowest_first_and_the_unaccounted_rest() -> None:
    jobs = [("ingestion_job", 14.0, [("weather", 3.9), ("flights", 9.9)]),
            ("continuous_training_job", 20.0, [("training_set", 2.0), ("candidate_model", 12.5)])]
    lines = format_stage_split(jobs, startup=6.0, total=41.25).splitlines()
    assert [line.split()[0] for line in lines] == [
        "Seconds", "start-up", "ingestion_job", "flights", "weather", "continuous_training_job",
        "candidate_model", "training_set", "other", "total"]
    assert lines[3].startswith("    flights") and lines[2].startswith("  ingestion_job")
    assert [line.split()[-1] for line in lines[1:]] == ["6.0", "14.0", "9.9", "3.9", "20.0", "12.5", "2.0",
                                                        "1.2", "41.2"]
    assert len({len(line) for line in lines[1:]}) == 1  # one column of seconds


def test_split_without_steps_still_shows_start_up_and_total() -> None:
    lines = format_stage_split([("ingestion_job", 1.0, [])], startup=0.5, total=2.0).splitlines()
    assert lines[-1].split() == ["total", "2.0"] and lines[-2].split()[-1] == "0.5"


def test_the_command_exits_with_mains_code_and_its_words_after_run_too(tmp_path: Path) -> None:
    """`mlops-assets` (the console script's `entry`): a refused `run` still says why in one line and exits 2
    through the fast exit (its validation workers started, then killed); other commands exit normally."""
    env = {**os.environ, "MLOPS_STATE_DIR": str(tmp_path)}
    refused = subprocess.run([sys.executable, "-m", "mlops_assets", "run", "--periods", "nov"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: nov is not a month; write YYYY-MM"], refused.stderr[-2000:]
    checked = subprocess.run([sys.executable, "-m", "mlops_assets", "check", "projects/flights"], env=env,
                             capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert checked.returncode == 0 and "flights" in checked.stdout
