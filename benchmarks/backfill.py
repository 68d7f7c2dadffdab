"""Benchmark of a 12-month ingestion backfill: one in-process range run vs the daemon's run queue.

Both on throwaway platforms (temporary MLOPS_STATE_DIR and DAGSTER_HOME, embedded SQLite profile) of
the flights project (MLOPS_PROJECT=flights: its periodic sources, flights and weather, each month):

- `range`: `ingestion_job` of `build_definitions(project file)` over 2013-01..2013-12 as one run, in
  process (what `mlops-assets run` does);
- `queue`: `dagster job backfill -w workspace.yaml -j ingestion_job` of the 12 months under
  `dagster-daemon`, one run per month, the run queue from `mlops-assets init` (4 at once) and the
  executor named by `--executor`.

    .venv/bin/python benchmarks/backfill.py [--executor multiprocess|in_process]

Prints wall times (queue: from submission to the last run's end, plus each run's own span) and writes
`benchmarks/results/backfill.json`. The queue pays a process start per run (and per step with the
multiprocess executor); it wins when partitions are heavy, not on small months on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = PROJECT_ROOT / "benchmarks" / "results" / "backfill.json"
BIN = Path(sys.executable).parent
PROJECT = "flights"
PROJECT_FILE = PROJECT_ROOT / "projects" / PROJECT / "project.yaml"
FIRST, LAST = "2013-01-01", "2013-12-01"
TIMEOUT_S = 1800.0
# Variables that would point the throwaway platform at another project, store or instance.
INHERITED_AWAY = ("MLOPS_TASK", "MLOPS_MLFLOW_TRACKING_URI", "MLOPS_POSTGRES_URL",
                  "MLOPS_DAGSTER_POSTGRES_URL")


def platform_env(root: Path, executor: str) -> dict[str, str]:
    """The environment of a throwaway platform, with its Dagster home created by `mlops-assets init`."""
    state = root / "state"
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_AWAY}
    env |= {"MLOPS_STATE_DIR": str(state), "DAGSTER_HOME": str(state / "dagster_home"),
            "MLOPS_EXECUTOR": executor, "MLOPS_PROFILE": "embedded", "MLOPS_PROJECT": PROJECT}
    subprocess.run([sys.executable, "-m", "mlops_assets", "init"], env=env, cwd=PROJECT_ROOT, check=True,
                   capture_output=True)
    return env


RANGE_SCRIPT = f"""
import time, dagster as dg
from pathlib import Path
from mlops_assets.definitions import build_definitions
defs = build_definitions(Path({str(PROJECT_FILE)!r}))
tags = {{"dagster/asset_partition_range_start": "{FIRST}", "dagster/asset_partition_range_end": "{LAST}"}}
start = time.perf_counter()
job = defs.resolve_job_def("ingestion_job")
result = job.execute_in_process(instance=dg.DagsterInstance.get(), tags=tags)
print(time.perf_counter() - start, result.success)
"""


def range_run(root: Path) -> dict[str, float]:
    """One in-process run over the range; process start-up measured apart from the run itself."""
    env = platform_env(root, "in_process")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RANGE_SCRIPT], env=env, cwd=PROJECT_ROOT, check=False,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the range run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    run_seconds, success = done.stdout.split()[-2:]
    assert success == "True", done.stderr[-2000:]
    return {"wall_s": round(wall, 2), "run_s": round(float(run_seconds), 2)}


def queued_backfill(root: Path, executor: str) -> dict[str, float]:
    """Submit the backfill to a running daemon and wait for the 12 runs to finish."""
    import dagster as dg

    env = platform_env(root, executor)
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    log = (root / "daemon.log").open("w")
    daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env=env,
                              cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        start = time.time()
        backfill = [str(BIN / "dagster"), "job", "backfill", "-w", "workspace.yaml", "-j", "ingestion_job",
                    "--from", FIRST, "--to", LAST, "--noprompt"]
        submitted_run = subprocess.run(backfill, env=env, cwd=PROJECT_ROOT, check=False, capture_output=True,
                                       text=True)
        if submitted_run.returncode != 0:
            raise RuntimeError(f"`dagster job backfill` failed:\n{submitted_run.stderr[-3000:]}")
        submitted = time.time()
        with dg.DagsterInstance.get() as instance:
            while time.time() - start < TIMEOUT_S:
                records = instance.get_run_records()
                if len(records) == 12 and all(r.dagster_run.is_finished for r in records):
                    break
                time.sleep(1)
            else:
                raise TimeoutError("the backfill did not finish")
        statuses = {r.dagster_run.status.value for r in records}
        assert statuses == {"SUCCESS"}, statuses
        spans = sorted(r.end_time - r.start_time for r in records)
        return {"wall_s": round(max(r.end_time for r in records) - start, 2),
                "submit_s": round(submitted - start, 2),
                "first_run_start_after_submit_s": round(min(r.start_time for r in records) - submitted, 2),
                "run_span_median_s": round(spans[len(spans) // 2], 2), "run_span_max_s": round(spans[-1], 2)}
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
        log.close()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executor", default="multiprocess", choices=["multiprocess", "in_process"])
    args = parser.parse_args()
    before = load_average()
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        ranged = range_run(Path(a))
        queued = queued_backfill(Path(b), args.executor)
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
              "cores": os.cpu_count(), "project": PROJECT, "months": 12, "queue_limit": 4,
              "executor": args.executor, "load_average_before": before, "load_average_after": load_average(),
              "range_run": ranged, "queued_backfill": queued}
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(result, indent=2) + "\n")
    print(f"12 months of the {PROJECT} project, {os.cpu_count()} cores; load average (1, 5, 15 min) "
          f"before {before}, after {result['load_average_after']}")
    print(f"  one in-process range run      wall {ranged['wall_s']:7.1f} s "
          f"(run itself {ranged['run_s']:.1f} s)")
    print(f"  backfill, queue of 4, {args.executor:<12} wall {queued['wall_s']:7.1f} s "
          f"(per run median {queued['run_span_median_s']:.1f} s, max {queued['run_span_max_s']:.1f} s)")


if __name__ == "__main__":
    main()
