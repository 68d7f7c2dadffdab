"""The landing sensor under a real dagster-daemon: bad files in the inbox never stall the good one.

Before deliveries, a file for a period outside the calendar made every tick fail
(`DagsterUnknownPartitionError`), so no later file was picked up and nothing alerted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
from dagster._core.scheduler.instigation import TickStatus

from mlops_assets.alerts import read_alerts
from mlops_assets.lake import Lake
from mlops_assets.settings import DATA_DIR, PROJECT_ROOT, PROJECTS_DIR

BIN = Path(sys.executable).parent


def _wait(condition, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; daemon log tail:\n{log.read_text()[-3000:]}")


def test_daemon_rejects_bad_inbox_files_alone_and_ingests_the_good_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "MLOPS_STATE_DIR": str(state), "DAGSTER_HOME": str(state / "dagster_home"),
           "MLOPS_PROJECT": "weather", "MLOPS_ALERT_WEBHOOK": ""}
    subprocess.run([sys.executable, "-m", "mlops_assets", "init"], env=env, check=True, cwd=PROJECT_ROOT,
                   capture_output=True, timeout=120)
    inbox = state / "landing" / "weather"
    inbox.mkdir(parents=True)
    weather = pl.read_csv(PROJECTS_DIR / "weather" / "data" / "weather.csv")
    weather.filter(pl.col("date").str.starts_with("2013-01")).write_csv(inbox / "2013-01.csv")
    (inbox / "2012-13.csv").write_text("location,date\nSeattle,2012-12-01\n")
    (inbox / "january.csv").write_text("location,date\nSeattle,2013-01-01\n")
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env=env,
                                  cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    ledger = Lake(state, DATA_DIR).deliveries
    try:
        def settled() -> bool:
            return {d.original_name: d.status for d in ledger.all()} == {
                "2013-01.csv": "ingested", "2012-13.csv": "rejected", "january.csv": "rejected"}

        _wait(settled, 300, "the good delivery to be ingested and the bad ones rejected", log)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
    reasons = {d.original_name: d.reason for d in ledger.all()}
    assert "is not a month" in reasons["2012-13.csv"] and "is not <period>.csv" in reasons["january.csv"]
    alerts = [a for a in read_alerts(state / "alerts" / "alerts.jsonl") if a["source"] == "delivery:weather"]
    assert sorted(a["details"]["original_name"] for a in alerts) == ["2012-13.csv", "january.csv"]
    assert not list(inbox.iterdir())
    with dg.DagsterInstance.from_config(str(state / "dagster_home")) as instance:
        [sensor] = [s for s in instance.all_instigator_state() if s.name == "landing_folder_sensor"]
        ticks = instance.get_ticks(sensor.instigator_origin_id, sensor.selector_id)
        assert ticks and all(t.status != TickStatus.FAILURE for t in ticks)
