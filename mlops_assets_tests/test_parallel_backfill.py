"""Parallel backfill under the daemon: the run queue from `mlops-assets init`, the multiprocess
executor, and both storage profiles.

What a user does: start the daemon (`dagster dev` does), then `dagster job backfill`. Months must
land in parallel, never more at once than the queue allows, training-tagged runs one at a time,
and SQLite must not answer "database is locked".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mlops_assets.settings import DAGSTER_DATABASE, PROJECT_ROOT, postgres_url

SERVER = os.environ.get("MLOPS_TEST_POSTGRES_URL", "")
BIN = Path(sys.executable).parent
MONTHS = ["2013-01-01", "2013-02-01", "2013-03-01", "2013-04-01"]
TRAINING_MONTHS = ["2013-06-01", "2013-07-01"]
QUEUE_LIMIT = 4
LOCKED = "database is locked"


def _profile_env(tmp_path: Path, selected: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    state = tmp_path / "state"
    env = {**os.environ, "MLOPS_STATE_DIR": str(state), "DAGSTER_HOME": str(state / "dagster_home"),
           "MLOPS_EXECUTOR": "multiprocess", "MLOPS_PROFILE": selected, "MLOPS_PROJECT": "flights"}
    env.pop("MLOPS_DAGSTER_POSTGRES_URL", None)
    if selected == "postgres":
        monkeypatch.setenv("MLOPS_POSTGRES_URL", SERVER)
        env["MLOPS_POSTGRES_URL"] = SERVER
        env["MLOPS_DAGSTER_POSTGRES_URL"] = postgres_url(DAGSTER_DATABASE)
    return env


@pytest.fixture(params=["embedded", pytest.param("postgres", marks=[
    pytest.mark.postgres, pytest.mark.skipif(not SERVER, reason="MLOPS_TEST_POSTGRES_URL not set")])])
def daemon(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict[str, str], Path, subprocess.Popen]]:
    """A state folder initialised for the profile and a dagster-daemon serving the workspace."""
    if request.param == "postgres":
        request.getfixturevalue("scratch_postgres")
    env = _profile_env(tmp_path, request.param, monkeypatch)
    subprocess.run([sys.executable, "-m", "mlops_assets", "init"], env=env, check=True, cwd=PROJECT_ROOT,
                   capture_output=True, timeout=120)
    for key in ("DAGSTER_HOME", "MLOPS_PROFILE", "MLOPS_POSTGRES_URL", "MLOPS_DAGSTER_POSTGRES_URL"):
        if key in env:
            monkeypatch.setenv(key, env[key])
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env=env,
                                   cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield env, log, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def _backfill(env: dict[str, str], months: list[str], tags: dict[str, str]) -> None:
    done = subprocess.run([str(BIN / "dagster"), "job", "backfill", "-w", "workspace.yaml", "-j", "ingestion_job",
                           "--partitions", ",".join(months), "--tags", json.dumps(tags), "--noprompt"],
                          env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]


def _wait_for_runs(instance: dg.DagsterInstance, tag: str, count: int, timeout: float,
                   daemon: subprocess.Popen, daemon_log: Path) -> list[dg.RunRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"the daemon exited: {daemon_log.read_text()[-3000:]}"
        records = instance.get_run_records(dg.RunsFilter(tags={"mlops/test": tag}))
        if len(records) == count and all(r.dagster_run.is_finished for r in records):
            return records
        time.sleep(2)
    states = {r.dagster_run.tags.get("dagster/partition"): r.dagster_run.status.value for r in records}
    raise AssertionError(f"backfill did not finish in {timeout:.0f} s: {states}")


def _max_overlap(records: list[dg.RunRecord]) -> int:
    """The largest number of runs that were executing at the same moment."""
    edges = sorted([(r.start_time, 1) for r in records] + [(r.end_time, -1) for r in records],
                   key=lambda edge: (edge[0], edge[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.e2e
def test_months_backfill_in_parallel_within_the_run_queue(
        daemon: tuple[dict[str, str], Path, subprocess.Popen]) -> None:
    env, daemon_log, process = daemon
    tag = uuid.uuid4().hex
    _backfill(env, TRAINING_MONTHS, {"mlops/test": tag, "mlops/stage": "training"})
    _backfill(env, MONTHS, {"mlops/test": tag})

    instance = dg.DagsterInstance.get()
    coordinator = instance.run_coordinator
    assert type(coordinator).__name__ == "QueuedRunCoordinator"
    records = _wait_for_runs(instance, tag, len(MONTHS) + len(TRAINING_MONTHS), 600, process, daemon_log)

    failed = {r.dagster_run.tags["dagster/partition"]: r.dagster_run.status.value
              for r in records if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS}
    assert not failed, f"runs did not succeed: {failed}; daemon log: {daemon_log.read_text()[-3000:]}"
    spans = {r.dagster_run.tags["dagster/partition"]: (round(r.start_time, 1), round(r.end_time, 1)) for r in records}
    assert _max_overlap(records) == QUEUE_LIMIT, f"the queue should run {QUEUE_LIMIT} months at once: {spans}"
    training = [r for r in records if r.dagster_run.tags.get("mlops/stage") == "training"]
    assert _max_overlap(training) == 1, "training-tagged runs must run one at a time"

    for record in records:
        messages = [e.message or "" for e in instance.all_logs(record.dagster_run.run_id)]
        assert any("multiprocess executor" in m for m in messages), "each run should use the multiprocess executor"
        assert not any(LOCKED in m for m in messages)
    assert LOCKED not in daemon_log.read_text()

    warehouse = Path(env["MLOPS_STATE_DIR"]) / "warehouse"
    for table in ("flights", "weather"):
        landed = sorted(p.parent.name for p in (warehouse / table).glob("period=*/data.parquet"))
        assert len(landed) == len(MONTHS) + len(TRAINING_MONTHS), landed
