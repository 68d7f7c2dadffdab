"""Benchmark of the windowed-aggregation engine (`mlops_assets.features.windows`) on flights-like data.

Generates a synthetic year of flights (330k events on 3 origins, 16 carriers, 200 routes) and one
query per flight two hours before its scheduled departure, then measures:
- `aggregate_at` for 4 views / 36 aggregations against a bare polars reference (`rolling` with
  `closed="right"` over the union of events and query rows, grouped by the keys), and checks
  that both give the same values;
- `OnlineWindows`: push throughput (batches of 1,000 and single rows, every event into all 4
  views) and compute latency per request (all 4 views), checked against the offline values.

    .venv/bin/python benchmarks/windows.py [--events N] [--repeats R] [--requests Q]

Imports polars/numpy and the engine only (no Dagster); a run takes about half a minute.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _polars_windows import polars_reference  # noqa: E402

from mlops_assets.features.windows import Aggregation, OnlineWindows, aggregate_at  # noqa: E402

SEED = 2013
OFFLINE_GOAL_S = 1.0
POLARS_RATIO_GOAL = 1.5
ONLINE_P99_GOAL_US = 1_000.0
PUSH_GOAL_PER_S = 20_000.0
BATCH = 1_000
H, D = timedelta(hours=1), timedelta(days=1)


@dataclass(frozen=True)
class View:
    """A windowed feature view: keys, known-at column and its aggregations."""

    name: str
    keys: tuple[str, ...]
    known_at: str
    aggregations: tuple[Aggregation, ...]


def _delay_aggs(prefix: str, column: str, windows: Sequence[tuple[str, timedelta]]) -> list[Aggregation]:
    out: list[Aggregation] = []
    for label, w in windows:
        out += [
            Aggregation(f"{prefix}_{column}_count_{label}", "count", column, w),
            Aggregation(f"{prefix}_{column}_mean_{label}", "mean", column, w),
            Aggregation(f"{prefix}_{column}_delayed_share_{label}", "share", column, w, f"{column} > 15"),
        ]
    return out


def views() -> list[View]:
    """4 views, 36 aggregations, windows 1h..28d, every function used at least once."""
    arrivals = [("7d", 7 * D), ("28d", 28 * D)]
    departures = View("origin_departures", ("origin",), "departed_at", tuple([
        *_delay_aggs("origin", "dep_delay", [("1h", H), ("3h", 3 * H)]),
        Aggregation("origin_departures_3h", "count", None, 3 * H),
        Aggregation("origin_dep_delay_max_3h", "max", "dep_delay", 3 * H),
        Aggregation("origin_dep_delay_min_3h", "min", "dep_delay", 3 * H),
        Aggregation("origin_dep_delay_last_3h", "last", "dep_delay", 3 * H),
    ]))
    origin = View("origin_arrivals", ("origin",), "arrival_observed_at", tuple([
        *_delay_aggs("origin", "arr_delay", arrivals),
        Aggregation("origin_arr_delay_sum_long_7d", "sum", "arr_delay", 7 * D, "arr_delay > 60"),
        Aggregation("origin_arr_delay_max_28d", "max", "arr_delay", 28 * D),
        Aggregation("origin_arrivals_1d", "count", None, D),
    ]))
    carrier = View("carrier_arrivals", ("carrier",), "arrival_observed_at", tuple([
        *_delay_aggs("carrier", "arr_delay", arrivals),
        Aggregation("carrier_arr_delay_min_7d", "min", "arr_delay", 7 * D),
        Aggregation("carrier_arr_delay_max_7d", "max", "arr_delay", 7 * D),
    ]))
    route = View("route_arrivals", ("origin", "dest"), "arrival_observed_at", tuple([
        *_delay_aggs("route", "arr_delay", arrivals),
        Aggregation("route_arr_delay_last_28d", "last", "arr_delay", 28 * D),
        Aggregation("route_arrivals_1d", "count", None, D),
        Aggregation("route_air_time_mean_28d", "mean", "air_time", 28 * D),
    ]))
    return [departures, origin, carrier, route]


def flights(n: int, seed: int = SEED) -> pl.DataFrame:
    """Flights-like events: heavy-tailed delays, ~2.5% cancelled (no departure or arrival)."""
    rng = np.random.default_rng(seed)
    start = datetime(2013, 1, 1, 5, tzinfo=UTC)
    sched = np.sort(rng.integers(0, 365 * 86_400, n)) * 1_000_000
    route = rng.integers(0, 200, n)
    dep = np.round(rng.exponential(25.0, n) - 12.0 + 60.0 * (rng.random(n) < 0.05)).astype(np.int64)
    cancelled = rng.random(n) < 0.025
    air = (60 + 5 * (route % 60) + rng.integers(-10, 10, n)).astype(np.int64)
    arr = dep + rng.integers(-20, 15, n)
    frame = pl.DataFrame({
        "flight_id": np.arange(n), "origin": np.array(["EWR", "JFK", "LGA"])[route % 3],
        "dest": np.array([f"D{i:03d}" for i in range(200)])[route],
        "carrier": np.array([f"C{i:02d}" for i in range(16)])[rng.integers(0, 16, n)],
        "scheduled_departure": pl.Series(sched).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        + (start - datetime(1970, 1, 1, tzinfo=UTC)),
        "dep_delay": pl.Series(dep).set(pl.Series(cancelled), None),
        "arr_delay": pl.Series(arr).set(pl.Series(cancelled | (rng.random(n) < 0.003)), None),
        "air_time": pl.Series(air).set(pl.Series(cancelled), None),
    })
    departed = pl.col("scheduled_departure") + pl.duration(minutes=pl.col("dep_delay"))
    arrived = pl.col("departed_at") + pl.duration(minutes=pl.col("air_time") + 60)
    return frame.with_columns(departed_at=departed).with_columns(
        arrival_observed_at=pl.when(pl.col("arr_delay").is_not_null()).then(arrived),
        prediction_time=pl.col("scheduled_departure") - 2 * H,
    )


def best_of(repeats: int, fn: Callable[[], pl.DataFrame]) -> tuple[float, pl.DataFrame]:
    times, out = [], pl.DataFrame()
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def offline(events: pl.DataFrame, queries: pl.DataFrame,
            engine: Callable[..., pl.DataFrame]) -> pl.DataFrame:
    """All views onto the queries with one engine."""
    out = queries
    for v in views():
        out = engine(events, v.keys, v.known_at, v.aggregations, out, "prediction_time")
    return out


def max_difference(a: pl.DataFrame, b: pl.DataFrame, names: Sequence[str]) -> tuple[float, int]:
    """Largest absolute difference and the number of null mismatches over the named columns."""
    worst, mismatched = 0.0, 0
    for name in names:
        x, y = a.get_column(name).cast(pl.Float64), b.get_column(name).cast(pl.Float64)
        mismatched += int((x.is_null() != y.is_null()).sum())
        diff = (x - y).abs().max()
        worst = max(worst, float(diff) if diff is not None else 0.0)
    return worst, mismatched


def build_online(events: pl.DataFrame, batch: int) -> tuple[dict[str, OnlineWindows], float]:
    """Push every event into all views in batches; returns the stores and events/s."""
    stores = {v.name: OnlineWindows(v.keys, v.known_at, v.aggregations, event_id="flight_id") for v in views()}
    start = time.perf_counter()
    for offset in range(0, events.height, batch):
        chunk = events.slice(offset, batch)
        for store in stores.values():
            store.push(chunk)
    return stores, events.height / (time.perf_counter() - start)


def single_row_rate(events: pl.DataFrame, rows: int) -> float:
    stores, _ = build_online(events.head(events.height - rows), 50_000)
    start = time.perf_counter()
    for offset in range(events.height - rows, events.height):
        chunk = events.slice(offset, 1)
        for store in stores.values():
            store.push(chunk)
    return rows / (time.perf_counter() - start)


def online_latency(stores: dict[str, OnlineWindows], queries: pl.DataFrame, expected: pl.DataFrame,
                   clock: Callable[[], int] = time.perf_counter_ns) -> tuple[list[float], dict[str, list[float]], float]:
    """Per-request time (all views, µs), per-view times and the largest difference to offline.

    Long-lived objects are frozen out of the garbage collector first, as a serving process would
    after loading its stores; `clock=time.thread_time_ns` measures CPU time, blind to preemption.
    """
    gc.collect()
    gc.freeze()
    totals: list[float] = []
    per_view: dict[str, list[float]] = {v.name: [] for v in views()}
    worst, all_views = 0.0, views()
    for row, exp in zip(queries.iter_rows(named=True), expected.iter_rows(named=True), strict=True):
        total = 0.0
        for v in all_views:
            key, start = tuple(row[k] for k in v.keys), clock()
            result = stores[v.name].compute(key, row["prediction_time"])
            elapsed = (clock() - start) / 1_000
            per_view[v.name].append(elapsed)
            total += elapsed
            worst = max(worst, _worst(result.values, exp))
        totals.append(total)
    return totals, per_view, worst


def _worst(values: dict[str, object], expected: dict[str, object]) -> float:
    worst = 0.0
    for name, value in values.items():
        other = expected[name]
        if (value is None) != (other is None):
            return math.inf
        if value is not None:
            worst = max(worst, abs(float(value) - float(other)))
    return worst


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def report_offline(events: pl.DataFrame, queries: pl.DataFrame, repeats: int) -> tuple[pl.DataFrame, dict]:
    """Time both offline engines and check that they agree; returns our output and the figures."""
    ours_s, ours = best_of(repeats, lambda: offline(events, queries, aggregate_at))
    ref_s, ref = best_of(max(1, repeats - 1), lambda: offline(events, queries, polars_reference))
    diff, nulls = max_difference(ours, ref, [a.name for v in views() for a in v.aggregations])
    print(f"offline aggregate_at:        {ours_s:8.3f} s")
    print(f"offline polars rolling ref:  {ref_s:8.3f} s   (aggregate_at / polars = {ours_s / ref_s:.3f})")
    print(f"offline agreement:           max |diff| {diff:.3g}, null mismatches {nulls}")
    return ours, {"ours_s": ours_s, "ref_s": ref_s, "agree": diff <= 1e-9 and nulls == 0}


def report_online(events: pl.DataFrame, queries: pl.DataFrame, offline_out: pl.DataFrame, requests: int) -> dict:
    """Push rates, per-request latency over all views and agreement with the offline values."""
    stores, push_rate = build_online(events, BATCH)
    single_rate = single_row_rate(events, 2_000)
    sample = queries.sample(requests, seed=SEED)
    expected = offline_out.join(sample.select("flight_id"), on="flight_id", how="semi", maintain_order="left")
    sample = sample.join(expected.select("flight_id"), on="flight_id", maintain_order="right")
    totals, per_view, worst = online_latency(stores, sample, expected)
    cpu, _, _ = online_latency(stores, sample, expected, time.thread_time_ns)
    print(f"online push (batches of {BATCH}, into all 4 views): {push_rate:12,.0f} events/s")
    print(f"online push (single rows, into all 4 views):     {single_rate:12,.0f} events/s")
    print(f"online compute per request (4 views): p50 {pct(totals, 50):7.1f} µs, p99 {pct(totals, 99):7.1f} µs, "
          f"mean {statistics.fmean(totals):7.1f} µs")
    print(f"  same, CPU time of the thread:        p50 {pct(cpu, 50):7.1f} µs, p99 {pct(cpu, 99):7.1f} µs")
    for name, times in per_view.items():
        print(f"  {name:<20s} p50 {pct(times, 50):6.1f} µs, p99 {pct(times, 99):6.1f} µs")
    print(f"online vs offline:           max |diff| {worst:.3g} over {len(totals):,} requests")
    return {"p99_us": pct(totals, 99), "push_rate": push_rate, "agree": worst <= 1e-9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=330_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    events = flights(args.events)
    queries = events.select("flight_id", "origin", "dest", "carrier", "prediction_time")
    n_aggs = sum(len(v.aggregations) for v in views())
    print(f"python {platform.python_version()}, polars {pl.__version__}, numpy {np.__version__}; "
          f"{events.height:,} events, {queries.height:,} queries, {len(views())} views, {n_aggs} aggregations; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    ours, off = report_offline(events, queries, args.repeats)
    on = report_online(events, queries, ours, args.requests)
    goals = [
        (f"offline <= {OFFLINE_GOAL_S:.1f} s", off["ours_s"] <= OFFLINE_GOAL_S),
        (f"offline <= {POLARS_RATIO_GOAL}x polars reference", off["ours_s"] <= POLARS_RATIO_GOAL * off["ref_s"]),
        (f"online p99 <= {ONLINE_P99_GOAL_US:.0f} µs (all views)", on["p99_us"] <= ONLINE_P99_GOAL_US),
        (f"push >= {PUSH_GOAL_PER_S:,.0f} events/s", on["push_rate"] >= PUSH_GOAL_PER_S),
        ("offline == polars reference == online", off["agree"] and on["agree"]),
    ]
    for label, met in goals:
        print(f"goal {label}: {'met' if met else 'NOT MET'}")


if __name__ == "__main__":
    main()
