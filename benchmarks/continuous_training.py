"""Benchmark of the main pipeline: full-year ingestion, then continuous_training_job twice.

Runs on a throwaway platform (temporary MLOPS_STATE_DIR holding the lake, online store, SQLite MLflow
store and artifact root; temporary DAGSTER_HOME; embedded profile) with the flights project
(`projects/flights/project.yaml`), exactly as `mlops-assets run` drives it: the definitions of
`build_definitions(project file)` with their default resources, `ingestion_job` as one range run over
the periods the embedded history covers (`cli.default_periods`: 2013-01..2013-12), then
`continuous_training_job`. The second training run finds the first run's champion and scores it too.
Each job runs in a fresh process (this script with a hidden `--stage`) so its peak RSS is its own;
per-step durations come from the Dagster event log (STEP_START -> STEP_SUCCESS/STEP_FAILURE).

    .venv/bin/python benchmarks/continuous_training.py [--keep]

`--keep` leaves the platform in place: its state folder then serves `benchmarks/serving.py`
(`MLOPS_STATE_DIR=<folder>/state`).

Prints a table and writes `benchmarks/results/continuous_training.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULTS_PATH = PROJECT_ROOT / "benchmarks" / "results" / "continuous_training.json"
PROJECT_FILE = PROJECT_ROOT / "projects" / "flights" / "project.yaml"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
JOBS = {"ingest": "ingestion_job", "train": "continuous_training_job"}
OVERHEAD_GOAL = 1.25
MAIN_JOB_GOAL_S = 180.0
QUIET_CPU_PERCENT = 10.0
QUIET_SAMPLE_S = 2.0
QUIET_WAIT_LIMIT_S = 15.0
CONTENDED_CORES = 0.25
END_EVENTS = {"STEP_SUCCESS": "success", "STEP_FAILURE": "failure"}
REPORTED_METADATA = {
    "candidate_model": ("trials", "validation_auc", "best_iteration"),
    "model_evaluation": ("test_auc", "test_pr_auc", "test_log_loss", "champion_version", "blessed"),
    "registered_model_version": ("version",),
    "champion_model": ("champion_version", "outcome"),
}


class OtherLoad:
    """CPU seconds used by processes outside this process tree while a job runs (contention).

    Summed process by process from their own accounting: machine-wide /proc/stat busy time overstates
    use on this VM (a 5 s single-thread spin loop shows ~7 s busy). A process that starts and ends
    between two samples is missed.
    """

    def __init__(self) -> None:
        self.since = time.time()
        self._cpu: dict[tuple[int, float], tuple[float, float, str]] = {}

    def sample(self, own: set[int]) -> None:
        for proc in psutil.process_iter(["pid", "create_time", "cpu_times", "name"]):
            info = proc.info
            if info["pid"] in own or info["cpu_times"] is None:
                continue
            cpu = info["cpu_times"].user + info["cpu_times"].system
            key = (info["pid"], info["create_time"])
            first = self._cpu.get(key, (0.0 if info["create_time"] >= self.since else cpu,))[0]
            self._cpu[key] = (first, cpu, info["name"] or "?")

    def cpu_s(self) -> float:
        return sum(last - first for first, last, _ in self._cpu.values())

    def top(self, n: int = 3) -> list[dict[str, Any]]:
        """The heaviest other processes, to name the contention in the report."""
        used = sorted(((last - first, pid, name) for (pid, _), (first, last, name) in self._cpu.items()),
                      reverse=True)
        return [{"pid": pid, "name": name, "cpu_s": cpu} for cpu, pid, name in used[:n] if cpu > 0.5]


class Monitor:
    """Peak RSS, own CPU and other processes' CPU while a job runs, sampled from a thread.

    ru_maxrss is exact for this process; the infra-validation probe is a child process, so the
    process tree (this one plus live children) is also sampled with psutil. RUSAGE_CHILDREN is not
    used: on Linux a forked child starts with the parent's RSS, which inflates it.
    """

    def __init__(self, interval_s: float = 0.25, load_every: int = 4) -> None:
        self.interval_s, self.load_every = interval_s, load_every
        self.tree_peak_bytes = 0
        self.others = OtherLoad()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._process = psutil.Process()

    def _tree(self) -> tuple[set[int], int]:
        pids, total = {self._process.pid, os.getppid()}, self._process.memory_info().rss
        for child in self._process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
                pids.add(child.pid)
        return pids, total

    def _sample(self) -> None:
        tick = 0
        while not self._stop.wait(self.interval_s):
            pids, rss = self._tree()
            self.tree_peak_bytes = max(self.tree_peak_bytes, rss)
            if tick % self.load_every == 0:
                self.others.sample(pids)
            tick += 1

    def _own_cpu(self) -> float:
        own = self._process.cpu_times()
        return own.user + own.system + own.children_user + own.children_system

    def __enter__(self) -> Monitor:
        self.others.sample(self._tree()[0])
        self._start = (time.perf_counter(), self._own_cpu())
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.others.sample(self._tree()[0])
        self._end = (time.perf_counter(), self._own_cpu())

    def figures(self) -> dict[str, float]:
        wall, own = (end - start for start, end in zip(self._start, self._end, strict=True))
        return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "tree_peak_rss_mb_sampled": self.tree_peak_bytes / 2**20, "job_cpu_s": own,
                "other_processes_cpu_s": self.others.cpu_s(),
                "other_processes_cores": self.others.cpu_s() / wall, "other_processes_top": self.others.top()}


def step_durations(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict[str, Any]]:
    """Each step's own wall time, from the start and end events the executor records."""
    starts: dict[str, float] = {}
    steps: dict[str, dict[str, Any]] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = entry.timestamp
        elif event.event_type_value in END_EVENTS:
            steps[event.step_key] = {"seconds": entry.timestamp - starts[event.step_key],
                                     "status": END_EVENTS[event.event_type_value]}
        elif event.event_type_value == "STEP_SKIPPED":
            steps[event.step_key] = {"seconds": 0.0, "status": "skipped"}
    return steps


def metadata_value(value: Any) -> Any:
    """A JSON-friendly view of a Dagster metadata value."""
    raw = getattr(value, "value", value)
    return raw if isinstance(raw, str | int | float | bool) or raw is None else str(raw)


def run_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """Check verdicts and the few materialization figures that say what the run decided."""
    checks: dict[str, bool] = {}
    assets: dict[str, dict[str, Any]] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            check = event.event_specific_data
            checks[f"{check.asset_key.to_user_string()}:{check.check_name}"] = bool(check.passed)
        elif event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            wanted = REPORTED_METADATA.get(materialization.asset_key.to_user_string(), ())
            figures = {k: metadata_value(v) for k, v in materialization.metadata.items() if k in wanted}
            if figures:
                assets[materialization.asset_key.to_user_string()] = figures
    return {"checks": checks, "assets": assets}


def load_platform() -> tuple[dg.Definitions, dg.DagsterInstance, float]:
    """Import the package and build the definitions as the CLI does; the import time is part of the figure.

    The child's environment points the default resources (state folder, MLflow store, Dagster home)
    at the throwaway platform, so nothing here names a path.
    """
    started = time.perf_counter()
    import dagster as dg

    from mlops_assets.cli import ensure_dagster_home
    from mlops_assets.definitions import build_definitions

    ensure_dagster_home()
    defs = build_definitions(PROJECT_FILE)
    return defs, dg.DagsterInstance.get(), time.perf_counter() - started


def range_tags() -> dict[str, str]:
    """The partition range `mlops-assets run` ingests by default: every period of the embedded history."""
    from mlops_assets.cli import default_periods
    from mlops_assets.partitions import period_key
    from mlops_assets.project.loading import load_project

    project = load_project(PROJECT_FILE)
    first, _, last = default_periods(project).partition("..")
    granularity = project.spec.granularity
    return {RANGE_START: period_key(first, granularity), RANGE_END: period_key(last or first, granularity)}


def run_stage(stage: str) -> None:
    """Child side: run one job on the platform and print its figures as one JSON line."""
    defs, instance, import_s = load_platform()
    from mlops_assets.settings import executor_name, state_dir

    job_name = JOBS[stage]
    tags = range_tags() if stage == "ingest" else {}
    job = defs.resolve_job_def(job_name)
    with Monitor() as monitor:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        wall = time.perf_counter() - started
    process_wall = time.time() - psutil.Process().create_time()
    figures = {
        "job": job_name, "tags": tags, "run_id": result.run_id, "success": result.success, "job_wall_s": wall,
        "import_and_setup_s": import_s, "executor": executor_name(), "process_wall_s": process_wall,
        "state_dir": str(state_dir()), "steps": step_durations(instance, result.run_id),
        **run_outcomes(result), **monitor.figures(),
        "trials": tuning_trials(defs) if stage == "train" and result.success else [],
    }
    print(json.dumps(figures))


def tuning_trials(defs: dg.Definitions) -> list[dict[str, Any]]:
    """This run's optuna trials (nested MLflow runs of the candidate): how the tuning budget was spent."""
    from mlops_assets.lake import read_record

    candidate = read_record(defs.resources["lake"].get(), "candidate_model")
    run_id, metric = candidate["run_id"], f"valid_{candidate['validation_metric']}"
    client = defs.resources["mlflow_tracking"].client()
    experiment = client.get_run(run_id).info.experiment_id
    nested = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")
    trials = [{"trial": r.info.run_name, "seconds": r.data.metrics.get("seconds"), "metric": metric,
               "valid_score": r.data.metrics.get(metric),
               "best_iteration": r.data.metrics.get("best_iteration")} for r in nested]
    return sorted(trials, key=lambda t: int(t["trial"].rsplit("-", 1)[-1]))


# Variables that would point the throwaway platform at another store, project or profile.
INHERITED_AWAY = ("MLOPS_TASK", "MLOPS_PROJECT", "MLOPS_PROFILE", "MLOPS_MLFLOW_TRACKING_URI",
                  "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def child_env(root: Path) -> dict[str, str]:
    """Point every default (project, state folder, MLflow store, Dagster home) at the temporary platform."""
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_AWAY}
    return env | {"MLOPS_PROJECT": str(PROJECT_FILE), "MLOPS_PROFILE": "embedded",
                  "MLOPS_STATE_DIR": str(root / "state"), "DAGSTER_HOME": str(root / "dagster_home")}


def wait_for_quiet(limit_s: float) -> float:
    """Wait (up to `limit_s`) until other processes leave the 2 cores idle; returns the seconds waited.

    LightGBM's OpenMP threads spin at barriers, so training slows down many times over when another
    process takes a core: a figure measured under someone else's test run would mean little.
    """
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        if psutil.cpu_percent(interval=QUIET_SAMPLE_S) <= QUIET_CPU_PERCENT:
            break
    return time.perf_counter() - started


def spawn_stage(stage: str, root: Path) -> dict[str, Any]:
    """Parent side: a fresh interpreter per job, so peak RSS is the job's own."""
    waited = wait_for_quiet(QUIET_WAIT_LIMIT_S)
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage]
    done = subprocess.run(command, capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env=child_env(root), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage!r} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "quiet_wait_s": waited}


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Sum of step times, orchestration overhead and each step's share of the job's wall time."""
    step_sum = sum(s["seconds"] for s in run["steps"].values())
    ratio = run["job_wall_s"] / step_sum if step_sum else float("nan")
    shares = {k: s["seconds"] / run["job_wall_s"] for k, s in run["steps"].items()}
    return {"step_sum_s": step_sum, "overhead_ratio": ratio, "overhead_s": run["job_wall_s"] - step_sum,
            "overhead_goal_met": ratio <= OVERHEAD_GOAL, "step_share_of_wall": shares}


def tuning_budget() -> dict[str, Any]:
    """The project's tuning block, as the loader reads it from the project file the jobs used."""
    from mlops_assets.project.loading import load_project

    return load_project(PROJECT_FILE).spec.tuning.model_dump()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main_job_estimate(ingest: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """`mlops-assets run` = one interpreter: start-up + imports + ingestion_job + continuous_training_job.

    The ingest child's process wall already holds start-up, imports and the ingestion job, so a
    training job's wall completes the sum (run 1: fresh state; run 2: `make run` again, champion exists).
    """
    seconds = ingest["process_wall_s"] + training["job_wall_s"]
    return {"seconds": seconds, "goal_s": MAIN_JOB_GOAL_S, "goal_met": seconds <= MAIN_JOB_GOAL_S}


def metadata() -> dict[str, Any]:
    return {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "project_file": str(PROJECT_FILE.relative_to(PROJECT_ROOT)), "tuning": tuning_budget(),
            "load_average_before": load_average(),
            "executor_env": os.environ.get("MLOPS_EXECUTOR", "(unset: in_process)"),
            "peak_rss_method": "resource.getrusage(RUSAGE_SELF).ru_maxrss at the end of a fresh child "
                               "process per job; plus psutil sampling (0.25 s) of it and its children",
            "contention_method": "CPU time of every process outside the job's process tree, "
                                 "sampled each second with psutil.process_iter"}


def print_steps(label: str, run: dict[str, Any], summary: dict[str, Any]) -> None:
    print(f"\n{label}: {run['job']} {'succeeded' if run['success'] else 'FAILED'} "
          f"(executor {run['executor']}, run {run['run_id'][:8]})")
    print(f"   job wall {run['job_wall_s']:.1f} s; process wall incl. start-up and imports "
          f"{run['process_wall_s']:.1f} s (imports + platform setup {run['import_and_setup_s']:.1f} s)")
    print(f"   peak RSS {run['peak_rss_mb']:.0f} MB (ru_maxrss of the job process); process tree incl. the "
          f"infra probe child, psutil-sampled: {run['tree_peak_rss_mb_sampled']:.0f} MB")
    print(f"   CPU: job {run['job_cpu_s']:.1f} CPU-s; other processes on the machine meanwhile "
          f"{run['other_processes_cpu_s']:.1f} CPU-s ({run['other_processes_cores']:.2f} cores on average; "
          f"waited {run['quiet_wait_s']:.0f} s for a quiet machine before starting)")
    if run["other_processes_top"]:
        heaviest = ", ".join(f"{p['name']} (pid {p['pid']}) {p['cpu_s']:.1f} CPU-s"
                             for p in run["other_processes_top"])
        print(f"   heaviest other processes: {heaviest}")
    print(f"   {'step (asset or asset check)':<58}{'status':>9}{'s':>9}{'% wall':>8}")
    ordered = sorted(run["steps"].items(), key=lambda kv: -kv[1]["seconds"])
    for key, step in ordered:
        share = 100 * summary["step_share_of_wall"][key]
        print(f"   {key:<58}{step['status']:>9}{step['seconds']:>9.2f}{share:>7.1f}%")
    print(f"   {'sum of steps':<58}{'':>9}{summary['step_sum_s']:>9.2f}"
          f"{100 * summary['step_sum_s'] / run['job_wall_s']:>7.1f}%")
    print(f"   orchestration overhead: job wall / sum of steps = {summary['overhead_ratio']:.3f} "
          f"({summary['overhead_s']:.2f} s; goal <= {OVERHEAD_GOAL}: "
          f"{'met' if summary['overhead_goal_met'] else 'NOT met'})")


def print_outcomes(run: dict[str, Any], tuning: dict[str, Any]) -> None:
    checks = ", ".join(f"{k}={'pass' if v else 'FAIL'}" for k, v in run["checks"].items())
    print(f"   checks: {checks}")
    trials = "; ".join(f"{t['trial']} {t['seconds']:.1f} s {t['metric']} {t['valid_score']:.4f} "
                       f"({t['best_iteration']:.0f} it)" for t in run["trials"])
    spent = sum(t["seconds"] for t in run["trials"])
    print(f"   optuna: {len(run['trials'])} of {tuning['n_trials']} trials in {spent:.1f} s against a "
          f"{tuning['timeout_seconds']} s budget (optuna checks the timeout between trials only)")
    print(f"   trials (validation score): {trials}")
    for asset, figures in run["assets"].items():
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        print(f"   {asset}: {shown}")


def contention_note(stages: dict[str, dict[str, Any]]) -> str | None:
    """A warning when other processes took a noticeable share of the 2 cores during any job."""
    busy = {name: run["other_processes_cores"] for name, run in stages.items()
            if run["other_processes_cores"] > CONTENDED_CORES}
    if not busy:
        return None
    shown = ", ".join(f"{name} {cores:.2f}" for name, cores in busy.items())
    return (f"NOTE: other processes used on average [{shown}] cores during these jobs: LightGBM trials run "
            "several times slower, so the tuning budget buys fewer trials and a trial started before the "
            "budget ran out can overrun it.")


def print_report(meta: dict[str, Any], stages: dict[str, dict[str, Any]],
                 estimate: dict[str, dict[str, Any]]) -> None:
    tuning = meta["tuning"]
    ingest = stages["ingest"]["tags"]
    print(f"Continuous-training benchmark: flights project ({meta['project_file']}), periods "
          f"{ingest.get(RANGE_START)}..{ingest.get(RANGE_END)}, Python {meta['python']}, {meta['cpus']} CPUs")
    print(f"Load average (1, 5, 15 min): before {meta['load_average_before']}, "
          f"after {meta['load_average_after']}")
    print(f"Tuning budget (project.yaml): {tuning['n_trials']} optuna trials or "
          f"{tuning['timeout_seconds']} s, max {tuning['max_rounds']} rounds, early stopping "
          f"{tuning['early_stopping_rounds']}")
    print(f"Executor: {stages['train_1']['executor']} (MLOPS_EXECUTOR {meta['executor_env']}; "
          "in_process is the default)")
    labels = {"ingest": "Ingestion (every period of the embedded history, one range run)",
              "train_1": "Continuous training, run 1 (no champion)",
              "train_2": "Continuous training, run 2 (champion exists, scored too)"}
    for name, label in labels.items():
        print_steps(label, stages[name], stages[name]["summary"])
        if name != "ingest":
            print_outcomes(stages[name], tuning)
    print("\nWhole main job (`mlops-assets run`) = ingest process wall (start-up + imports + ingestion_job) "
          "+ training job wall:")
    for name, when in (("train_1", "fresh state (run 1)"), ("train_2", "run again, champion exists (run 2)")):
        figure = estimate[name]
        print(f"   {when:<36} {figure['seconds']:>6.1f} s; under ~{MAIN_JOB_GOAL_S:.0f} s: "
              f"{'yes' if figure['goal_met'] else 'NO'}")
    note = contention_note(stages)
    if note:
        print(note)


def report(keep: bool) -> None:
    """Ingest, train twice on the same throwaway platform, print the tables and write the JSON."""
    meta = metadata()
    root = Path(tempfile.mkdtemp(prefix="mlops_ct_bench_"))
    try:
        stages = {"ingest": spawn_stage("ingest", root), "train_1": spawn_stage("train", root),
                  "train_2": spawn_stage("train", root)}
    finally:
        meta["load_average_after"] = load_average()
        if keep:
            print(f"kept the platform in {root}; serve it with MLOPS_STATE_DIR={root / 'state'}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for figures in stages.values():
        figures["summary"] = summarize(figures)
    estimate = {name: main_job_estimate(stages["ingest"], stages[name]) for name in ("train_1", "train_2")}
    print_report(meta, stages, estimate)
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "stages": stages, "main_job": estimate}
    RESULTS_PATH.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {RESULTS_PATH.relative_to(PROJECT_ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary platform folder")
    parser.add_argument("--stage", choices=sorted(JOBS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage)
    else:
        report(args.keep)


if __name__ == "__main__":
    main()
