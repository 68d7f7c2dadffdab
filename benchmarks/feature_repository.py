"""Benchmark of the feature repository on the full 2013 flights year, every view of the flights project.

1. Training set: `prepare_all` + `view_events` + `build_training_set` (exact windows, ~327k rows),
   best and median of `--repeats` runs, each stage timed on its own too.
2. The windowed aggregations of the training set (`aggregate_at` per windowed view, as
   `offline_features` chains them) against a bare polars reference of the same windows: `rolling`
   with `closed="right"` over the union of events and query rows, grouped by the keys, one pass per
   window; both must give the same values (1e-9 relative, null == null).
3. Online: every view's events pushed into an `OnlineWindows` per windowed view (batches of 1,000,
   then single rows), and requests answered with `OnlineWindows.compute` for every windowed view of
   the request, checked against the training set.
4. Peak RSS of the process.

    .venv/bin/python benchmarks/feature_repository.py [--repeats 3] [--requests 2000] [--json PATH]

Prints the figures and a closing block of `goal ...: met/not met` lines.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from _common import (
    flights_project,
    load_average,
    machine_line,
    peak_rss_mb,
    percentile,
    print_goals,
    raw_sources,
    rss_mb,
    same_value,
    timed,
    view_event_frames,
)
from _polars_windows import polars_reference

from mlops_assets.contract import PREDICTION_TIME
from mlops_assets.features.event_codec import event_id_expr, view_dtypes
from mlops_assets.features.online_store import EVENT_ID
from mlops_assets.features.repository import is_static, view_aggregations, view_keys
from mlops_assets.features.sources import prepare_all
from mlops_assets.features.windows import OnlineWindows, aggregate_at
from mlops_assets.project.loading import LoadedProject
from mlops_assets.project.spec import Project
from mlops_assets.training.training_set import build_training_set, examples_frame

SEED = 2013
BATCH = 1_000
SINGLE_ROWS = 2_000
TRAINING_SET_GOAL_S = 1.0
POLARS_RATIO_GOAL = 1.5
ONLINE_P99_GOAL_US = 1_000.0
PUSH_GOAL_PER_S = 20_000.0
Engine = Callable[..., pl.DataFrame]


def windowed_views(project: Project) -> list[str]:
    return [v for v in project.used_views if not is_static(project, v)]


# ------------------------------------------------------------------------------------ training set


def training_set_stages(project: LoadedProject, raw: dict[str, pl.DataFrame], repeats: int) -> dict[str, Any]:
    """Each stage alone (on the previous stage's output) and the three together, best/median of `repeats`."""
    spec = project.spec
    prepare = timed(lambda: prepare_all(project, raw), repeats)
    events = timed(lambda: view_event_frames(spec, prepare.result), repeats)
    training = timed(lambda: build_training_set(project, prepare.result, events.result), repeats)

    def whole() -> pl.DataFrame:
        prepared = prepare_all(project, raw)
        return build_training_set(project, prepared, view_event_frames(spec, prepared))

    total = timed(whole, repeats)
    assert total.result.equals(training.result)
    return {"prepare_all": prepare, "view_events": events, "build_training_set": training, "total": total}


def all_windows(project: Project, events: dict[str, pl.DataFrame], queries: pl.DataFrame,
                engine: Engine) -> pl.DataFrame:
    """Every windowed view's aggregations onto the queries with one engine, chained as offline_features does."""
    out = queries
    for name in windowed_views(project):
        view = project.feature_views[name]
        out = engine(events[name], view_keys(project, name), view.known_at, view_aggregations(project, name), out,
                     PREDICTION_TIME)
    return out


def differences(ours: pl.DataFrame, reference: pl.DataFrame, names: Sequence[str]) -> tuple[float, int]:
    """Largest relative difference (absolute below 1) and the count of null/non-null disagreements."""
    worst, nulls = 0.0, 0
    for name in names:
        x, y = ours.get_column(name), reference.get_column(name)
        if x.dtype == pl.String or y.dtype == pl.String:
            nulls += int((x.is_null() != y.is_null()).sum()) + int((x.drop_nulls() != y.drop_nulls()).sum())
            continue
        x, y = x.cast(pl.Float64), y.cast(pl.Float64)
        nulls += int((x.is_null() != y.is_null()).sum())
        diff = ((x - y).abs() / y.abs().clip(lower_bound=1.0)).max()
        worst = max(worst, float(diff) if diff is not None else 0.0)
    return worst, nulls


def window_comparison(project: Project, events: dict[str, pl.DataFrame], queries: pl.DataFrame,
                      repeats: int) -> dict[str, Any]:
    ours = timed(lambda: all_windows(project, events, queries, aggregate_at), repeats)
    reference = timed(lambda: all_windows(project, events, queries, polars_reference), repeats)
    names = [a.name for v in windowed_views(project) for a in view_aggregations(project, v)]
    worst, nulls = differences(ours.result, reference.result, names)
    return {"ours": ours, "polars": reference, "aggregations": len(names), "worst": worst, "nulls": nulls}


# ---------------------------------------------------------------------------------------- online


def online_events(project: Project, events: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Each windowed view's events with the event id the online store gives them (as serving loads them)."""
    out = {}
    for name in windowed_views(project):
        dtypes = view_dtypes(project, name)
        out[name] = events[name].with_columns(event_id_expr(project.feature_views[name], dtypes).alias(EVENT_ID))
    return out


def new_windows(project: Project) -> dict[str, OnlineWindows]:
    return {n: OnlineWindows(view_keys(project, n), project.feature_views[n].known_at,  # type: ignore[arg-type]
                             view_aggregations(project, n), EVENT_ID) for n in windowed_views(project)}


def push_all(project: Project, frames: dict[str, pl.DataFrame], batch: int) -> tuple[dict[str, OnlineWindows], float]:
    """Every view's events pushed in batches; returns the windows and the seconds spent in `push`."""
    windows, seconds = new_windows(project), 0.0
    for name, frame in frames.items():
        store = windows[name]
        for offset in range(0, frame.height, batch):
            chunk = frame.slice(offset, batch)
            start = time.perf_counter()
            store.push(chunk)
            seconds += time.perf_counter() - start
    return windows, seconds


def single_row_push(project: Project, frames: dict[str, pl.DataFrame], rows: int) -> float:
    """Seconds to push the last `rows` events of every view one at a time, onto the rest of the year."""
    windows, _ = push_all(project, {n: f.head(f.height - rows) for n, f in frames.items()}, 50_000)
    seconds = 0.0
    for name, frame in frames.items():
        store = windows[name]
        for offset in range(frame.height - rows, frame.height):
            chunk = frame.slice(offset, 1)
            start = time.perf_counter()
            store.push(chunk)
            seconds += time.perf_counter() - start
    return seconds


def request_latency(project: Project, windows: dict[str, OnlineWindows], requests: pl.DataFrame,
                    clock: Callable[[], int] = time.perf_counter_ns) -> tuple[list[float], dict[str, list[float]], int]:
    """Per request: every windowed view computed at its prediction time (µs), per view, and value mismatches.

    Long-lived objects are frozen out of the garbage collector first, as a serving process would after
    loading its stores; `clock=time.thread_time_ns` measures CPU time, blind to preemption.
    """
    gc.collect()
    gc.freeze()
    names = windowed_views(project)
    keys = {n: view_keys(project, n) for n in names}
    totals, per_view, mismatches = [], {n: [] for n in names}, 0
    for row in requests.iter_rows(named=True):
        t, total = row[PREDICTION_TIME], 0.0
        for name in names:
            key = tuple(row[k] for k in keys[name])
            start = clock()
            result = windows[name].compute(key, t)
            elapsed = (clock() - start) / 1_000
            per_view[name].append(elapsed)
            total += elapsed
            mismatches += sum(not same_value(v, row[f]) for f, v in result.values.items())
        totals.append(total)
    gc.unfreeze()
    return totals, per_view, mismatches


def online(project: Project, events: dict[str, pl.DataFrame], training: pl.DataFrame,
           n_requests: int, sources: dict[str, int]) -> dict[str, Any]:
    frames = online_events(project, events)
    view_events_total = sum(f.height for f in frames.values())
    gc.collect()
    before = rss_mb()
    windows, push_s = push_all(project, frames, BATCH)
    gc.collect()
    held_mb = rss_mb() - before
    requests = training.filter(pl.all_horizontal(pl.col(k).is_not_null()
                                                 for n in windowed_views(project) for k in view_keys(project, n)))
    requests = requests.sample(n_requests, seed=SEED)
    totals, per_view, mismatches = request_latency(project, windows, requests)
    cpu, _, _ = request_latency(project, windows, requests, time.thread_time_ns)
    del windows
    gc.collect()
    single_s = single_row_push(project, frames, SINGLE_ROWS)
    return {"view_events": view_events_total, "source_events": sum(sources.values()), "sources": sources,
            "push_s": push_s, "single_rows": SINGLE_ROWS * len(frames), "single_s": single_s,
            "totals": totals, "per_view": per_view, "cpu": cpu, "mismatches": mismatches,
            "requests": requests.height, "held_mb": held_mb}


def source_event_counts(project: Project, prepared: dict[str, pl.DataFrame]) -> dict[str, int]:
    """Rows of each source that at least one windowed view stores (known to it, keys complete)."""
    out = {}
    for source in dict.fromkeys(project.feature_views[v].source for v in windowed_views(project)):
        conditions = []
        for name in windowed_views(project):
            view = project.feature_views[name]
            if view.source == source:
                conditions.append(pl.all_horizontal(pl.col(c).is_not_null() for c in [*view_keys(project, name),
                                                                                        view.known_at]))
        out[source] = prepared[source].filter(pl.any_horizontal(conditions)).height
    return out


# ---------------------------------------------------------------------------------------- report


def print_stages(stages: dict[str, Any], rows: int, columns: int) -> None:
    print(f"\n{'1. training set, exact windows, all views':<64}{'best s':>9}{'median s':>10}{'CPU s':>8}")
    labels = {"prepare_all": "   prepare_all (derive: flight times, plane attributes)",
              "view_events": "   view_events, every view", "build_training_set":
              f"   build_training_set ({rows:,} rows x {columns} columns)",
              "total": "   prepare_all + view_events + build_training_set"}
    for key, label in labels.items():
        timing = stages[key]
        cpu = timing.cpu_s[timing.runs_s.index(timing.best_s)]
        print(f"{label:<64}{timing.best_s:>9.3f}{timing.median_s:>10.3f}{cpu:>8.2f}")
    print("   (CPU s: process CPU time of the best run, all threads; wall far above it = waiting for a core)")


def print_windows(cmp: dict[str, Any], rows: int, views: int) -> None:
    ours, ref = cmp["ours"], cmp["polars"]
    title = f"2. windowed aggregations: {views} views, {cmp['aggregations']} aggregations onto {rows:,} rows"
    print(f"\n{title:<64}{'best s':>9}{'median s':>10}{'CPU s':>8}")
    for label, timing in (("   aggregate_at (the engine build_training_set uses)", ours),
                          ("   bare polars rolling(closed=right) over events + queries", ref)):
        cpu = timing.cpu_s[timing.runs_s.index(timing.best_s)]
        print(f"{label:<64}{timing.best_s:>9.3f}{timing.median_s:>10.3f}{cpu:>8.2f}")
    print(f"   ratio engine / polars: {ours.best_s / ref.best_s:.2f}x best, {ours.median_s / ref.median_s:.2f}x "
          f"median; same values: max relative difference {cmp['worst']:.2g}, null disagreements {cmp['nulls']}")


def print_online(result: dict[str, Any]) -> None:
    rate = result["view_events"] / result["push_s"]
    source_rate = result["source_events"] / result["push_s"]
    single = result["single_rows"] / result["single_s"]
    print(f"\n3. online: OnlineWindows per windowed view, {result['view_events']:,} view events "
          f"({', '.join(f'{s} {n:,}' for s, n in result['sources'].items())} source rows)")
    print(f"   push, batches of {BATCH:,}: {result['push_s']:.2f} s -> {rate:,.0f} view events/s; "
          f"{source_rate:,.0f} source events/s (each into every view of its source)")
    print(f"   push, single rows ({result['single_rows']:,} events onto the rest of the year): "
          f"{single:,.0f} view events/s")
    print(f"   the year's windows in memory: +{result['held_mb']:.0f} MB resident "
          f"({result['held_mb'] * 2**20 / result['view_events']:.0f} bytes per view event)")
    totals, cpu = result["totals"], result["cpu"]
    print(f"   request, compute() for all {len(result['per_view'])} windowed views, {result['requests']:,} random "
          f"training rows: p50 {percentile(totals, 50):.1f} µs, p99 {percentile(totals, 99):.1f} µs, "
          f"max {max(totals):.1f} µs, mean {statistics.fmean(totals):.1f} µs")
    print(f"   same, CPU time of the thread: p50 {percentile(cpu, 50):.1f} µs, p99 {percentile(cpu, 99):.1f} µs")
    for name, times in result["per_view"].items():
        print(f"     {name:<34} p50 {percentile(times, 50):6.1f} µs, p99 {percentile(times, 99):6.1f} µs")
    print(f"   online values vs training set: {result['mismatches']} mismatches")


def figures(stages: dict[str, Any], cmp: dict[str, Any], on: dict[str, Any], load: tuple[str, str]) -> dict[str, Any]:
    """Everything as plain numbers (for --json)."""
    def t(x: Any) -> dict[str, Any]:
        return {"best_s": x.best_s, "median_s": x.median_s, "runs_s": x.runs_s, "cpu_s": x.cpu_s}
    return {"load_average": {"start": load[0], "end": load[1]}, "training_set": {k: t(v) for k, v in stages.items()},
            "windows": {"engine": t(cmp["ours"]), "polars": t(cmp["polars"]), "max_relative_difference": cmp["worst"],
                        "null_disagreements": cmp["nulls"]},
            "online": {"push_view_events_per_s": on["view_events"] / on["push_s"],
                       "push_source_events_per_s": on["source_events"] / on["push_s"],
                       "push_single_view_events_per_s": on["single_rows"] / on["single_s"],
                       "request_p50_us": percentile(on["totals"], 50), "request_p99_us": percentile(on["totals"], 99),
                       "mismatches": on["mismatches"], "windows_resident_mb": on["held_mb"]},
            "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per timed figure (default 3)")
    parser.add_argument("--requests", type=int, default=2_000, help="online requests timed (default 2000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    start_load = load_average()
    print(f"feature repository benchmark, flights 2013, best/median of {args.repeats}; {machine_line()}")
    project = flights_project()
    spec = project.spec
    raw = raw_sources(project)
    rss_before = peak_rss_mb()
    stages = training_set_stages(project, raw, args.repeats)
    training = stages["build_training_set"].result
    print_stages(stages, training.height, training.width)
    rss_training = peak_rss_mb()
    prepared, events = stages["prepare_all"].result, stages["view_events"].result
    queries = examples_frame(project, prepared)
    cmp = window_comparison(spec, events, queries, args.repeats)
    print_windows(cmp, queries.height, len(windowed_views(spec)))
    on = online(spec, events, training, args.requests, source_event_counts(spec, prepared))
    print_online(on)
    peak = peak_rss_mb()
    end_load = load_average()
    print(f"\n4. peak RSS: {rss_before:.0f} MB after reading the data, {rss_training:.0f} MB after the training-set "
          f"runs, {peak:.0f} MB at the end (the whole year's online windows included)")
    print(f"load average (1, 5, 15 min): {start_load} at start, {end_load} at the end")
    if args.json:
        args.json.write_text(json.dumps(figures(stages, cmp, on, (start_load, end_load)), indent=2) + "\n")
    total, ratio = stages["total"].best_s, cmp["ours"].best_s / cmp["polars"].best_s
    print_goals([
        (f"training set (prepare_all + view_events + build_training_set) <= {TRAINING_SET_GOAL_S:.1f} s",
         total <= TRAINING_SET_GOAL_S),
        (f"windowed aggregations <= {POLARS_RATIO_GOAL}x the bare polars reference", ratio <= POLARS_RATIO_GOAL),
        ("engine == polars reference == online (1e-9)", cmp["worst"] <= 1e-9 and cmp["nulls"] == 0
         and on["mismatches"] == 0),
        (f"online request p99 <= {ONLINE_P99_GOAL_US:.0f} µs (all windowed views)",
         percentile(on["totals"], 99) <= ONLINE_P99_GOAL_US),
        (f"push into OnlineWindows >= {PUSH_GOAL_PER_S:,.0f} events/s (batches of {BATCH:,})",
         on["view_events"] / on["push_s"] >= PUSH_GOAL_PER_S),
    ])


if __name__ == "__main__":
    main()
