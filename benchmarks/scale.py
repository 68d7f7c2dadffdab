"""Cost as work grows: every stage of the pipeline on flights-shaped data at 1x, 10x and 100x rows.

Data: replica r of the real 2013 flights (r = 0 is the real data) goes to year ``SAME_CALENDAR_YEARS[r % 10]``
and copy ``r // 10`` of that year. The years have 2013's calendar (same weekdays, same US daylight-saving
dates), so a replica keeps every local date, clock time and weekday, and its UTC times move by a whole
number of days: derive, calendar checks and windows work unchanged. 10x is ten years of history at the
real density; 100x is the same ten years at ten times the density (ten flights per real flight). Copies
1..9 of a year get their own flight numbers (rotated by 1,000 within 1..9999, the declared range; rows
whose rotated number collides with another flight on the declared unique key would be dropped and
counted) and every replica r > 0 gets its own tail numbers (two characters appended, planes copied to
match). Weather is the real weather moved to each year (one copy per year: it is per airport and hour).
Data is written one month per parquet file under ``--root`` (git-ignored), one month at a time.

Stages, each in its own child process (its own peak RSS, ``os.wait4``; a watchdog kills a child above
``--kill-gib`` so a stage cannot take the shared machine down), through the platform's plain functions:
- ingest: ``load_period`` (read, Great Expectations validation, coerce) + ``Lake.write_batch`` per
  source and month, delivered one file per month as the upstream system does; references whole;
- features: ``write_source_views`` per source: the source prepared batch by batch, each view stored
  one known-at month at a time (the feature-view assets' work, without pushed events);
- training_set: ``write_training_set_by_period`` (exact windows, one period of examples at a time,
  written as it goes);
- train: ``train_candidate``, one trial of the default parameters, a fixed budget of ``ROUNDS`` rounds (no
  early stop); the train split is a systematic sample of at most ``TRAIN_ROWS`` rows (every k-th row in
  time order), the validation split of at most ``VALID_ROWS``, streamed from the training set file;
- online: ``OnlineStore.write_view_events`` of every view from the offline store (the online_store asset);
- drift: ``drift_report`` of the last month against a 30k-row reference sample of the train split, both
  streamed from the training set file (the current month is sampled to 60k rows by ``drift_report``).

    nice -n 10 .venv/bin/python benchmarks/scale.py [--factors 1 10 100] [--stages features online]

``--stages`` measures only those stages (the stages they need run first, unrecorded) and replaces only
their figures in ``<root>/x<N>.json``, so a stage can be measured again after a change. Each factor's
figures are kept in ``<root>/x<N>.json``; the summary (exponents, goals, plot,
``benchmarks/results/scale.json``, ``benchmarks/results/scale.png``) uses every factor measured so far.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from _common import ROOT, load_average, machine_line, print_goals

FACTORS = (1, 10, 100)
SAME_CALENDAR_YEARS = (2013, 2019, 2030, 2041, 2047, 2058, 2069, 2075, 2086, 2097)
FLIGHT_STRIDE = 1_000
STAGES = ("ingest", "features", "training_set", "train", "online", "drift")
NEEDS = {"ingest": (), "features": ("ingest",), "training_set": ("features",), "train": ("training_set",),
         "online": ("features",), "drift": ("training_set",)}
ROUNDS = 100
TRAIN_ROWS, VALID_ROWS = 2_000_000, 1_000_000
REFERENCE_ROWS = 30_000
TIME_EXPONENT_GOAL = 1.1
RSS_GOAL_GIB = 8.0
RESULTS = ROOT / "benchmarks" / "results"
UNIQUE = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ------------------------------------------------------------------------------------ data


def suffix(replica: int) -> str:
    """Two base-36 characters: up to 1,296 replicas, tail numbers stay within 8 characters."""
    return DIGITS[replica // 36] + DIGITS[replica % 36]


def shifted(frame: pl.DataFrame, year: int) -> pl.DataFrame:
    """The rows moved to a year with 2013's calendar: same local clock, UTC moved by whole days."""
    days = (date(year, 1, 1) - date(2013, 1, 1)).days
    return frame.with_columns(pl.lit(year, pl.Int64).alias("year"),
                              (pl.col("time_hour") + pl.duration(days=days)).alias("time_hour"))


def flights_replica(month: pl.DataFrame, replica: int) -> pl.DataFrame:
    """Replica r of one real month: its year, its flight numbers (copy > 0), its tail numbers (r > 0)."""
    copy = replica // len(SAME_CALENDAR_YEARS)
    out = shifted(month, SAME_CALENDAR_YEARS[replica % len(SAME_CALENDAR_YEARS)])
    if copy:
        out = out.with_columns(((pl.col("flight") - 1 + copy * FLIGHT_STRIDE) % 9999 + 1).alias("flight"))
    if replica:
        out = out.with_columns((pl.col("tailnum") + suffix(replica)).alias("tailnum"))
    return out


def generate(factor: int, root: Path) -> dict[str, Any]:
    """Write the factor's sources under root, a month per file; returns row counts."""
    data = ROOT / "data"
    shutil.rmtree(root, ignore_errors=True)
    for folder in ("flights", "weather"):
        (root / folder).mkdir(parents=True)
    flights, weather = pl.read_parquet(data / "flights.parquet"), pl.read_parquet(data / "weather.parquet")
    years = sorted({SAME_CALENDAR_YEARS[r % len(SAME_CALENDAR_YEARS)] for r in range(factor)})
    rows, dropped = 0, 0
    for year in years:
        replicas = [r for r in range(factor) if SAME_CALENDAR_YEARS[r % len(SAME_CALENDAR_YEARS)] == year]
        for month in range(1, 13):
            real = flights.filter(pl.col("month") == month)
            part = pl.concat([flights_replica(real, r) for r in replicas])
            unique = part.unique(UNIQUE, keep="first", maintain_order=True)
            dropped += part.height - unique.height
            rows += unique.height
            unique.write_parquet(root / "flights" / f"{year}-{month:02d}.parquet")
            shifted(weather.filter(pl.col("month") == month), year).write_parquet(
                root / "weather" / f"{year}-{month:02d}.parquet")
    planes = pl.read_parquet(data / "planes.parquet")
    pl.concat([planes.with_columns(pl.col("tailnum") + (suffix(r) if r else "")) for r in range(factor)]).write_parquet(
        root / "planes.parquet")
    shutil.copyfile(data / "airports.parquet", root / "airports.parquet")
    write_project(root)
    return {"flights": rows, "dropped_collisions": dropped, "weather": weather.height * len(years),
            "planes": planes.height * factor, "years": years}


def write_project(root: Path) -> None:
    """The flights project file with its sources pointed at the generated data (nothing else changed)."""
    text = (ROOT / "projects" / "flights" / "project.yaml").read_text()
    for name, path in (("flights", "flights/2013-01.parquet"), ("weather", "weather/2013-01.parquet"),
                       ("planes", "planes.parquet"), ("airports", "airports.parquet")):
        text = text.replace(f"../../data/{name}.parquet", str(root / path))
    (root / "project.yaml").write_text(text)
    shutil.copyfile(ROOT / "projects" / "flights" / "flights.py", root / "flights.py")


# ------------------------------------------------------------------------------------ stages (children)


def _lake(root: Path) -> Any:
    from mlops_assets.lake import Lake

    return Lake(root / "lake", root)


def _project(root: Path) -> Any:
    from mlops_assets.project.loading import load_project

    return load_project(root / "project.yaml")


def stage_ingest(root: Path) -> dict[str, Any]:
    from mlops_assets.ingestion.batches import load_period, load_reference
    from mlops_assets.ingestion.deliveries import Delivery
    from mlops_assets.partitions import period_bounds

    project, store = _project(root), _lake(root)
    shutil.rmtree(store.root, ignore_errors=True)
    batches, failed, rows, slowest = 0, [], 0, 0.0
    for name in project.spec.reference_sources:
        batch = load_reference(project, name)
        failed += [] if batch.report.passed else [name]
        store.write_batch(name, batch.frame)
    for name in project.spec.periodic_sources:
        zone = project.spec.sources[name].time_zone
        for path in sorted((root / name).glob("*.parquet")):
            started, label = time.perf_counter(), path.stem
            delivery = Delivery(0, name, label, path.name, str(path), path.stat().st_size, "-", ".parquet", "", "scale",
                                "landed", "", "", "", 0, "", path)
            batch = load_period(project, name, label, *period_bounds(f"{label}-01", "month", zone), delivery)
            if not batch.report.passed:
                failed.append(f"{name} {label}: {[f.description for f in batch.report.hard_failures][:2]}")
            store.write_batch(name, batch.frame, label)
            batches, rows = batches + 1, rows + batch.frame.height
            slowest = max(slowest, time.perf_counter() - started)
    return {"batches": batches, "rows": rows, "failed": failed, "slowest_batch_s": slowest}


def stage_features(root: Path) -> dict[str, Any]:
    from mlops_assets.features.assets import write_source_views

    project, store = _project(root), _lake(root)
    spec, events = project.spec, {}
    for source in dict.fromkeys(v.source for v in spec.feature_views.values()):
        views = [n for n, v in spec.feature_views.items() if v.source == source]
        events.update(write_source_views(store, project, source, views))
    return {"view_events": events}


def stage_training_set(root: Path) -> dict[str, Any]:
    from mlops_assets.training.training_set import write_training_set_by_period

    _, content, rows = write_training_set_by_period(_project(root), _lake(root))
    return {"rows": rows, "content_hash": content}


def _training_file(root: Path) -> Path:
    pointer = json.loads((root / "lake" / "training_sets" / "current.json").read_text())
    return Path(pointer["path"])


def every_kth(lazy: pl.LazyFrame, role: str, rows: int, cap: int) -> tuple[pl.LazyFrame, int]:
    """A systematic sample of one split (every k-th row of the file; it is in time order, so every period
    keeps its share), filtered while the file streams by."""
    from mlops_assets.contract import SPLIT

    step = max(1, math.ceil(rows / cap))
    keep = pl.col(SPLIT) == role
    if step > 1:
        keep = keep & (pl.col("__row") % step == 0)
    return lazy.with_row_index("__row").filter(keep).drop("__row"), step


def stage_train(root: Path) -> dict[str, Any]:
    from mlops_assets.contract import SPLIT
    from mlops_assets.features.repository import model_features
    from mlops_assets.project.spec import TuningSpec
    from mlops_assets.training.tuning import train_candidate

    spec = _project(root).spec
    spec = spec.model_copy(update={"tuning": TuningSpec(n_trials=1, timeout_seconds=3600, max_rounds=ROUNDS,
                                                        early_stopping_rounds=ROUNDS)})
    features = model_features(spec)
    lazy = pl.scan_parquet(_training_file(root)).select(*features, spec.label.name, SPLIT)
    counts = dict(lazy.group_by(SPLIT).len().collect().iter_rows())
    parts, steps = {}, {}
    for role, cap in (("train", TRAIN_ROWS), ("validation", VALID_ROWS)):
        sample, steps[role] = every_kth(lazy, role, counts[role], cap)
        parts[role] = sample.collect(engine="streaming")
    trained = train_candidate(parts["train"], parts["validation"], spec, features)
    return {"train_rows": parts["train"].height, "train_split_rows": counts["train"], "train_step": steps["train"],
            "validation_rows": parts["validation"].height, "rounds": trained.best_iteration or ROUNDS,
            "validation_auc": trained.validation_score}


def stage_online(root: Path) -> dict[str, Any]:
    from mlops_assets.features.online_store import OnlineStore

    project, store = _project(root), _lake(root)
    path = root / "online.sqlite"
    for stale in root.glob("online.sqlite*"):
        stale.unlink()
    db = OnlineStore(path)
    counts = {name: db.write_view_events(project.spec, name, store.read_view(name), None)
              for name in project.spec.feature_views}
    return {"rows": counts, "db_mb": path.stat().st_size / 2**20}


def stage_drift(root: Path) -> dict[str, Any]:
    from mlops_assets.contract import PERIOD, SPLIT
    from mlops_assets.features.repository import model_features
    from mlops_assets.monitoring.drift import drift_report

    spec = _project(root).spec
    features = model_features(spec)
    lazy = pl.scan_parquet(_training_file(root))
    last = lazy.select(pl.col(PERIOD).max()).collect().item()
    rows = lazy.filter(pl.col(SPLIT) == "train").select(pl.len()).collect().item()
    reference, _ = every_kth(lazy.select(*features, SPLIT), "train", rows, REFERENCE_ROWS)
    current = lazy.filter(pl.col(PERIOD) == last).select(features).collect(engine="streaming")
    summary, html = drift_report(reference.collect(engine="streaming").drop(SPLIT), current, features,
                                 categorical=tuple(spec.categorical))
    return {"month": last, "current_rows": current.height, "reference_rows": summary.reference_rows,
            "share_drifted": summary.share_drifted, "report_s": summary.seconds, "html_kb": len(html) / 1024}


CHILDREN = {"generate": None, "ingest": stage_ingest, "features": stage_features,
            "training_set": stage_training_set, "train": stage_train, "online": stage_online, "drift": stage_drift}


def child(stage: str, factor: int, root: Path, out: Path) -> None:
    """Run one stage in this (fresh) process and write what it reports as JSON."""
    result = generate(factor, root) if stage == "generate" else CHILDREN[stage](root)
    out.write_text(json.dumps(result, default=str))


# ------------------------------------------------------------------------------------ parent


def vm_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def run_stage(stage: str, factor: int, root: Path, kill_gib: float) -> dict[str, Any]:
    """The stage in a child process: wall time, peak RSS (the child's ru_maxrss), what it reported."""
    out = root.parent / f".x{factor}-{stage}.json"
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", stage, "--factors", str(factor),
                             "--root", str(root.parent), "--out", str(out)], cwd=ROOT)
    killed = threading.Event()

    def watch() -> None:
        while proc.poll() is None:
            if vm_rss_kib(proc.pid) > kill_gib * 2**20:
                killed.set()
                proc.kill()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    wall = time.perf_counter() - started
    result = json.loads(out.read_text()) if out.exists() and proc.returncode == 0 else {}
    out.unlink(missing_ok=True)
    return {"seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "ok": proc.returncode == 0, "killed_over_gib": kill_gib if killed.is_set() else None,
            "returncode": proc.returncode, "result": result, "load_average": load_average(),
            "measured_at": datetime.now().isoformat(timespec="seconds")}


def stages_to_run(stages: list[str]) -> list[str]:
    """The stages asked for and every stage they need (their inputs), in pipeline order."""
    wanted: set[str] = set()
    todo = list(stages)
    while todo:
        stage = todo.pop()
        if stage not in wanted:
            wanted.add(stage)
            todo.extend(NEEDS[stage])
    return [s for s in STAGES if s in wanted]


def measure(factor: int, base: Path, kill_gib: float, keep: bool, stages: list[str]) -> dict[str, Any]:
    """Generate the factor's data and run the stages; the figures of `stages` replace those kept in
    x<N>.json (other stages keep theirs; a stage run only as another's input is not recorded)."""
    root = base / f"x{factor}"
    print(f"\n== {factor}x ({datetime.now().strftime('%H:%M:%S')}, load average {load_average()})", flush=True)
    kept = base / f"x{factor}.json"
    partial = set(stages) != set(STAGES) and kept.exists()
    figures: dict[str, Any] = json.loads(kept.read_text()) if partial else {"stages": {}}
    figures.update({"factor": factor, "load_average_start": load_average()})
    if partial:
        figures.setdefault("reruns", []).append({"stages": stages, "at": datetime.now().isoformat(timespec="seconds"),
                                                 "load_average_start": load_average()})
    gen = run_stage("generate", factor, root, kill_gib)
    figures["data"] = gen["result"]
    figures["generate"] = {k: gen[k] for k in ("seconds", "peak_rss_mb")}
    print(f"   generate: {gen['result'].get('flights', 0):,} flights ({gen['result'].get('dropped_collisions', 0):,} "
          f"collisions dropped), {gen['seconds']:.1f} s, peak RSS {gen['peak_rss_mb']:,.0f} MB", flush=True)
    for stage in stages_to_run(stages):
        run = run_stage(stage, factor, root, kill_gib)
        if stage in stages:
            figures["stages"][stage] = run
        state = "ok" if run["ok"] else (f"KILLED above {kill_gib} GiB" if run["killed_over_gib"] else "FAILED")
        role = "" if stage in stages else "  (input of another stage, not recorded)"
        print(f"   {stage:<13} {run['seconds']:9.1f} s {run['peak_rss_mb']:9,.0f} MB  {state}  "
              f"load {run['load_average']}  {json.dumps(run['result'])[:240]}{role}", flush=True)
    figures["load_average_end"] = load_average()
    if partial:
        figures["reruns"][-1]["load_average_end"] = figures["load_average_end"]
    kept.write_text(json.dumps(figures, indent=2))
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def exponent(rows: list[float], values: list[float]) -> float | None:
    """b of value = a * rows**b, least squares on log-log over the points given."""
    if len(rows) < 2 or any(v <= 0 for v in values):
        return None
    return float(np.polyfit(np.log(rows), np.log(values), 1)[0])


def summarise(all_figures: list[dict[str, Any]]) -> dict[str, Any]:
    done = sorted(all_figures, key=lambda f: f["factor"])
    rows = [float(f["data"]["flights"]) for f in done]
    out: dict[str, Any] = {"factors": [f["factor"] for f in done], "flights_rows": rows, "stages": {}}
    for stage in STAGES:
        if any(stage not in f["stages"] for f in done):  # measured with --stages at some factor only
            continue
        runs = [f["stages"][stage] for f in done]
        ok = all(r["ok"] for r in runs)
        seconds, rss = [r["seconds"] for r in runs], [r["peak_rss_mb"] for r in runs]
        out["stages"][stage] = {"seconds": seconds, "peak_rss_mb": rss, "ok": [r["ok"] for r in runs],
                                "cpu_s": [r["cpu_s"] for r in runs],
                                "time_exponent": exponent(rows, seconds) if ok else None,
                                "rss_exponent": exponent(rows, rss) if ok else None,
                                "time_exponent_last_step": exponent(rows[-2:], seconds[-2:]) if ok else None}
    return out


def print_table(summary: dict[str, Any]) -> None:
    factors = summary["factors"]
    head = "".join(f"{f'{f}x s':>10}{f'{f}x RSS MB':>13}" for f in factors)
    print(f"\n{'stage':<14}{head}{'b time':>8}{'b RSS':>7}{'b time, last step':>19}")
    print(f"{'flights rows':<14}" + "".join(f"{r:>23,.0f}" for r in summary["flights_rows"]))
    for stage, s in summary["stages"].items():
        cells = "".join(f"{t:>10.1f}{m:>13,.0f}" if ok else f"{t:>10.1f}{'failed':>13}"
                        for t, m, ok in zip(s["seconds"], s["peak_rss_mb"], s["ok"], strict=True))
        bt, bm, bl = s["time_exponent"], s["rss_exponent"], s["time_exponent_last_step"]
        print(f"{stage:<14}{cells}{'-' if bt is None else f'{bt:.2f}':>8}{'-' if bm is None else f'{bm:.2f}':>7}"
              f"{'-' if bl is None else f'{bl:.2f}':>19}")
    print("b: exponent of time (or peak RSS) = a * rows**b, least squares on log-log over the factors; "
          "last step: between the two largest factors only")


def plot(summary: dict[str, Any], path: Path) -> None:
    """Wall time and peak RSS against rows, log-log, one line per stage (object API, Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    rows = summary["flights_rows"]
    axes = figure.subplots(1, 2)
    for stage, s in summary["stages"].items():
        bt, bm = s["time_exponent"], s["rss_exponent"]
        axes[0].plot(rows, s["seconds"], marker="o", label=f"{stage} (b={bt:.2f})" if bt is not None else stage)
        axes[1].plot(rows, [m / 1024 for m in s["peak_rss_mb"]], marker="o",
                     label=f"{stage} (b={bm:.2f})" if bm is not None else stage)
    if len(rows) > 1 and "ingest" in summary["stages"]:
        first = summary["stages"]["ingest"]["seconds"][0]
        axes[0].plot(rows, [first * r / rows[0] for r in rows], "k:", label="linear (from ingest 1x)")
    axes[1].axhline(RSS_GOAL_GIB, color="red", linestyle="--", label=f"goal {RSS_GOAL_GIB:g} GiB")
    for ax, title, unit in ((axes[0], "wall time per stage", "seconds"), (axes[1], "peak RSS per stage", "GiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("flights rows")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle("benchmarks/scale.py: flights replicated 1x, 10x, 100x (2-core shared machine)")
    figure.tight_layout()
    figure.savefig(path)


def step_exponents(summary: dict[str, Any], stage: str) -> list[float | None]:
    """b between each two neighbouring factors: a fit over three points can pass while one step does not."""
    rows, seconds = summary["flights_rows"], summary["stages"][stage]["seconds"]
    return [exponent(rows[i:i + 2], seconds[i:i + 2]) for i in range(len(rows) - 1)]


def goals(summary: dict[str, Any]) -> list[tuple[str, bool]]:
    out = []
    biggest = summary["factors"][-1]
    for stage, s in summary["stages"].items():
        bt = s["time_exponent"]
        out.append((f"{stage}: time grows at most linearly (fitted b <= {TIME_EXPONENT_GOAL})",
                    bt is not None and bt <= TIME_EXPONENT_GOAL))
        steps = step_exponents(summary, stage)
        shown = ", ".join("-" if b is None else f"{b:.2f}" for b in steps)
        out.append((f"{stage}: every step grows at most linearly (step b: {shown})",
                    all(b is not None and b <= TIME_EXPONENT_GOAL for b in steps)))
        out.append((f"{stage}: {biggest}x completes with peak RSS <= {RSS_GOAL_GIB:g} GiB",
                    s["ok"][-1] and s["peak_rss_mb"][-1] <= RSS_GOAL_GIB * 1024))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", type=int, nargs="+", default=list(FACTORS), help="replication factors to run")
    parser.add_argument("--root", type=Path, default=ROOT / ".mlops_state" / "scale", help="generated data and lake")
    parser.add_argument("--kill-gib", type=float, default=14.0, help="kill a stage whose RSS passes this (GiB)")
    parser.add_argument("--keep", action="store_true", help="keep each factor's data and lake afterwards")
    parser.add_argument("--summary-only", action="store_true", help="only summarise the factors measured so far")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="stages to measure (the stages they need run too, unrecorded); the others keep "
                             "their kept figures")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = args.root.resolve()
    if args.child:
        child(args.child, args.factors[0], root / f"x{args.factors[0]}", args.out)
        return
    root.mkdir(parents=True, exist_ok=True)
    print(f"scale benchmark; {machine_line()}; the machine is shared, load average with every stage")
    if not args.summary_only:
        for factor in args.factors:
            measure(factor, root, args.kill_gib, args.keep, args.stages)
    measured = [json.loads(p.read_text()) for p in sorted(root.glob("x*.json"))]
    summary = summarise(measured)
    summary["load_average"] = {f"{f['factor']}x": [f["load_average_start"], f["load_average_end"]] for f in measured}
    summary["data"] = {f"{f['factor']}x": f["data"] for f in measured}
    summary["details"] = {f"{f['factor']}x": {s: r["result"] for s, r in f["stages"].items()} for f in measured}
    print_table(summary)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    plot(summary, RESULTS / "scale.png")
    print(f"\nwrote {RESULTS / 'scale.json'} and {RESULTS / 'scale.png'}")
    print_goals(goals(summary))


if __name__ == "__main__":
    main()
