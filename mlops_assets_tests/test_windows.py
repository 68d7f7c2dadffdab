"""Windowed aggregations: offline and online equal a literal reference, windows are (t - w, t]."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from mlops_assets.features.windows import Aggregation, OnlineWindows, ViewsReader, aggregate_at, epoch_us

T0 = datetime(2013, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN = timedelta(minutes=1)
US = timedelta(microseconds=1)
KEYS = ("k",)

# The reference's own reading of each `where` used below (SQL: a comparison with null is not true).
WHERES: dict[str, Callable[[dict], bool]] = {
    "v > 15": lambda e: e["v"] is not None and e["v"] > 15,
    "s = 'x'": lambda e: e["s"] == "x",
    "n IS NULL": lambda e: e["n"] is None,
    "v <= 10 AND n >= 2": lambda e: e["v"] is not None and e["n"] is not None and e["v"] <= 10 and e["n"] >= 2,
}

AGGREGATIONS = (
    Aggregation("events_1h", "count", None, 60 * MIN),
    Aggregation("v_count_1h", "count", "v", 60 * MIN),
    Aggregation("hot_3h", "count", None, 180 * MIN, "v > 15"),
    Aggregation("v_sum_1h", "sum", "v", 60 * MIN),
    Aggregation("n_sum_x_3h", "sum", "n", 180 * MIN, "s = 'x'"),
    Aggregation("v_mean_3h", "mean", "v", 180 * MIN),
    Aggregation("n_mean_30m", "mean", "n", 30 * MIN),
    Aggregation("v_min_1h", "min", "v", 60 * MIN),
    Aggregation("v_max_nulln_3h", "max", "v", 180 * MIN, "n IS NULL"),
    Aggregation("v_mean_mixed_1h", "mean", "v", 60 * MIN, "v <= 10 AND n >= 2"),
    Aggregation("hot_share_1h", "share", "v", 60 * MIN, "v > 15"),
    Aggregation("x_share_3h", "share", "s", 180 * MIN, "s = 'x'"),
    Aggregation("v_last_1h", "last", "v", 60 * MIN),
    Aggregation("s_last_3h", "last", "s", 180 * MIN),
    Aggregation("n_last_hot_30m", "last", "n", 30 * MIN, "v > 15"),
    Aggregation("id_last_1h", "last", "id", 60 * MIN),
    Aggregation("known_min_1h", "min", "known_us", 60 * MIN),
    Aggregation("known_max_1h", "max", "known_us", 60 * MIN),
)


# ------------------------------------------------------------------------------------ reference


def _window_events(events: list[dict], keys: tuple[str, ...], key: tuple, t: datetime | None,
                   window: timedelta) -> list[dict]:
    """Events of `key` known in (t - window, t], in input order, by a plain scan."""
    if t is None or any(part is None for part in key):
        return []
    return [e for e in events
            if tuple(e[k] for k in keys) == key and e["ts"] is not None and t - window < e["ts"] <= t]


def reference(events: list[dict], keys: tuple[str, ...], aggregation: Aggregation, key: tuple,
              t: datetime | None) -> object:
    """The semantics of one aggregation, implemented literally."""
    a = aggregation
    window = _window_events(events, keys, key, t, a.window)
    if a.function == "share":
        with_value = [e for e in window if e[a.column] is not None]
        hits = [e for e in with_value if WHERES[a.where](e)]
        return len(hits) / len(with_value) if with_value else None
    if a.where is not None:
        window = [e for e in window if WHERES[a.where](e)]
    if a.function == "count":
        return float(len(window) if a.column is None else sum(e[a.column] is not None for e in window))
    present = [(e["ts"], i, e[a.column]) for i, e in enumerate(window) if e[a.column] is not None]
    if not present:
        return None
    values = [v for _, _, v in present]
    if a.function == "last":
        return max(present, key=lambda p: (p[0], p[1]))[2]
    if a.function == "sum":
        return math.fsum(values)
    if a.function == "mean":
        return math.fsum(values) / len(values)
    return float(min(values) if a.function == "min" else max(values))


def assert_same(actual: object, expected: object, where: str) -> None:
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{where}: {actual!r} != {expected!r}"
    elif isinstance(expected, float):
        assert isinstance(actual, float), f"{where}: {actual!r} is not a float"
        assert math.isnan(expected) == math.isnan(actual), f"{where}: {actual!r} != {expected!r}"
        assert math.isnan(expected) or math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9), \
            f"{where}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


# ---------------------------------------------------------------------------------------- data


def event_frame(rows: list[dict]) -> pl.DataFrame:
    schema = {"id": pl.Int64, "k": pl.String, "k2": pl.String, "ts": pl.Datetime("us", "UTC"),
              "v": pl.Float64, "n": pl.Int64, "s": pl.String}
    frame = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    return frame.with_columns(known_us=pl.col("ts").dt.epoch("us"))


def as_dicts(frame: pl.DataFrame) -> list[dict]:
    return frame.to_dicts()


def random_events(rng: random.Random, n: int, keys: list[str | None]) -> list[dict]:
    """Times on a 5-minute grid (many ties, many events exactly at t - w), values often null."""
    rows = []
    for i in range(n):
        v = None if rng.random() < 0.15 else round(rng.uniform(-20, 40), 2)
        rows.append({
            "id": i, "k": rng.choice(keys), "k2": rng.choice(["p", "q", None]),
            "ts": None if rng.random() < 0.02 else T0 + 5 * MIN * rng.randrange(0, 72),
            "v": v, "n": None if rng.random() < 0.15 else rng.randrange(0, 6),
            "s": rng.choice(["x", "y", None]),
        })
    return rows


def random_queries(rng: random.Random, events: list[dict], n: int) -> pl.DataFrame:
    """Query times on the grid, exactly one window after an event, a microsecond around, or null."""
    times: list[datetime | None] = []
    known = [e["ts"] for e in events if e["ts"] is not None] or [T0]
    for _ in range(n):
        base = rng.choice(known)
        shift = rng.choice([0, 30, 60, 180]) * MIN + rng.choice([-US, 0 * US, US])
        times.append(None if rng.random() < 0.03 else base + shift if rng.random() < 0.7 else
                     T0 + MIN * rng.randrange(-60, 500))
    return pl.DataFrame({
        "k": [rng.choice(["a", "b", "c", "zz", None]) for _ in range(n)],
        "k2": [rng.choice(["p", "q", None]) for _ in range(n)],
        "t": times,
    }, schema={"k": pl.String, "k2": pl.String, "t": pl.Datetime("us", "UTC")})


def online_store(frame: pl.DataFrame, keys: tuple[str, ...], aggregations: tuple[Aggregation, ...],
                 batch: int = 7) -> OnlineWindows:
    """Pushed in batches, packed halfway: keys pushed after that are read per key by the batch path."""
    store = OnlineWindows(keys, "ts", aggregations, event_id="id")
    offsets = list(range(0, frame.height, batch))
    for offset in offsets:
        store.push(frame.slice(offset, batch))
        if offset == offsets[len(offsets) // 2]:
            store.pack()
    return store


def check_all(events: pl.DataFrame, queries: pl.DataFrame, keys: tuple[str, ...],
              aggregations: tuple[Aggregation, ...], store: OnlineWindows | None = None) -> None:
    """Offline, online and reference agree on every query and aggregation."""
    offline = aggregate_at(events, keys, "ts", aggregations, queries, "t")
    assert offline.height == queries.height and offline.select(queries.columns).equals(queries)
    store = store or online_store(events, keys, aggregations)
    rows = as_dicts(events)
    for i, q in enumerate(offline.iter_rows(named=True)):
        key = tuple(q[k] for k in keys)
        online = store.compute(key, q["t"]).values if q["t"] is not None else None
        for a in aggregations:
            expected = reference(rows, keys, a, key, q["t"])
            assert_same(q[a.name], expected, f"offline {a.name} row {i} {key} {q['t']}")
            if online is not None:
                assert_same(online[a.name], expected, f"online {a.name} row {i} {key} {q['t']}")
    assert_batch_equals_single(store, [(tuple(q[k] for k in keys), q["t"]) for q in queries.iter_rows(named=True)
                                       if q["t"] is not None])


def assert_batch_equals_single(store: OnlineWindows, queries: list[tuple[tuple, datetime]]) -> None:
    """The batch path (serving's) gives, to the bit, what `compute` gives per query (NaN where it gives NaN)."""
    with_events = [(k, t) for k, t in queries if store.compute(k, t).latest_known_at is not None]
    reader = ViewsReader([store, store])  # one view twice: the second's columns start after the first's
    for _ in ("keys pushed since the pack read per key", "all packed"):
        for batch_queries in (queries, with_events):  # the second: every query has events (the direct path)
            batch = store.compute_many([k for k, _ in batch_queries], [t for _, t in batch_queries])
            for (key, t), got in zip(batch_queries, batch, strict=True):
                one = store.compute(key, t)
                assert (got.latest_known_at, got.complete) == (one.latest_known_at, one.complete), f"{key} {t}"
                assert repr(got.values) == repr(one.values), f"batch {key} {t}: {got.values} != {one.values}"
            keys, t_us = [k for k, _ in batch_queries], [epoch_us(t) for _, t in batch_queries]
            expected, read = store.compute_columns(keys, t_us, math.nan), reader.read([keys, keys], t_us)
            for view in (0, 1):  # serving's read of several views in one call: the same, to the bit
                assert repr(read.columns(view)) == repr(expected), f"view {view}"
        store.pack()  # the reader notices the new packing


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_offline_and_online_equal_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    events = event_frame(random_events(rng, 160, ["a", "b", "c", None]))
    check_all(events, random_queries(rng, as_dicts(events), 120), KEYS, AGGREGATIONS)


def test_two_key_view_with_null_parts() -> None:
    rng = random.Random(7)
    events = event_frame(random_events(rng, 150, ["a", "b"]))
    aggregations = AGGREGATIONS[:6] + AGGREGATIONS[12:14]
    check_all(events, random_queries(rng, as_dicts(events), 100), ("k", "k2"), aggregations)


def test_boundaries_are_half_open() -> None:
    """An event known exactly at t counts; one known exactly at t - window does not."""
    events = event_frame([{"id": 1, "k": "a", "ts": T0, "v": 1.0},
                          {"id": 2, "k": "a", "ts": T0 + 60 * MIN, "v": 2.0}])
    queries = pl.DataFrame({"k": ["a"] * 4, "t": [T0 + 60 * MIN, T0 + 60 * MIN - US, T0 - US, T0 + 120 * MIN]})
    count = (Aggregation("n", "count", None, 60 * MIN), Aggregation("last", "last", "v", 60 * MIN))
    out = aggregate_at(events, KEYS, "ts", count, queries, "t")
    assert out["n"].to_list() == [1.0, 1.0, 0.0, 0.0]
    assert out["last"].to_list() == [2.0, 1.0, None, None]
    store = online_store(events, KEYS, count)
    assert [store.compute(("a",), t).values["n"] for t in queries["t"]] == [1.0, 1.0, 0.0, 0.0]


def test_output_dtypes_and_order() -> None:
    rng = random.Random(11)
    events = event_frame(random_events(rng, 60, ["a", "b"]))
    queries = random_queries(rng, as_dicts(events), 40).with_row_index("row")
    out = aggregate_at(events, KEYS, "ts", AGGREGATIONS, queries, "t")
    assert out["row"].to_list() == list(range(40))
    dtypes = {a.name: out.schema[a.name] for a in AGGREGATIONS}
    assert dtypes["s_last_3h"] == pl.String and dtypes["id_last_1h"] == pl.Int64
    assert dtypes["n_last_hot_30m"] == pl.Int64 and dtypes["v_last_1h"] == pl.Float64
    assert all(dtypes[a.name] == pl.Float64 for a in AGGREGATIONS if a.function != "last")
    assert out.select(a.name for a in AGGREGATIONS if a.function == "count").null_count().sum_horizontal()[0] == 0


def test_out_of_order_and_single_row_pushes() -> None:
    """Pushes in any order equal offline on the events in arrival order (ties broken by arrival)."""
    rng = random.Random(5)
    events = event_frame(random_events(rng, 120, ["a", "b"]))
    order = list(range(events.height))
    rng.shuffle(order)
    arrived = events[order]
    store = OnlineWindows(KEYS, "ts", AGGREGATIONS, event_id="id")
    for offset, size in ((0, 1), (1, 1), (2, 30), (32, 1), (33, 87)):
        store.push(arrived.slice(offset, size))
    check_all(arrived, random_queries(rng, as_dicts(events), 80), KEYS, AGGREGATIONS, store)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 40),
                              st.one_of(st.none(), st.integers(-30, 50))), max_size=40),
    queries=st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.integers(-10, 60)), min_size=1, max_size=12),
    window_minutes=st.sampled_from([1, 5, 7, 30]),
)
def test_property_windows_count_exactly_the_past(events: list, queries: list, window_minutes: int) -> None:
    """Nothing counted is known after t or at/before t - w; everything in (t - w, t] is counted."""
    window = window_minutes * MIN
    frame = event_frame([{"id": i, "k": k, "ts": T0 + m * MIN, "v": v} for i, (k, m, v) in enumerate(events)])
    aggregations = (
        Aggregation("n", "count", None, window), Aggregation("v_mean", "mean", "v", window),
        Aggregation("first_known", "min", "known_us", window), Aggregation("last_known", "max", "known_us", window),
        Aggregation("v_last", "last", "v", window), Aggregation("hot", "share", "v", window, "v > 15"),
    )
    q = pl.DataFrame({"k": [k for k, _ in queries], "t": [T0 + m * MIN for _, m in queries]},
                     schema={"k": pl.String, "t": pl.Datetime("us", "UTC")})
    offline = aggregate_at(frame, KEYS, "ts", aggregations, q, "t")
    store = online_store(frame, KEYS, aggregations, batch=5)
    rows = as_dicts(frame)
    for row in offline.iter_rows(named=True):
        t_us = (row["t"] - EPOCH) // US
        if row["last_known"] is not None:
            assert row["last_known"] <= t_us and row["first_known"] > t_us - window // US
        assert row["n"] == reference(rows, KEYS, aggregations[0], (row["k"],), row["t"])
        result = store.compute((row["k"],), row["t"])
        assert result.latest_known_at is None or result.latest_known_at <= row["t"]
        for a in aggregations:
            assert_same(result.values[a.name], row[a.name], f"online {a.name}")


def test_dst_transitions_online_equals_offline() -> None:
    """New York DST changes (2013-03-10, 2013-11-03): windows are in UTC, online == offline."""
    local = [datetime(2013, 3, 10, 0) + 10 * MIN * i for i in range(30)]
    local += [datetime(2013, 11, 3, 0) + 10 * MIN * i for i in range(30)]
    rng = random.Random(3)
    events = pl.DataFrame({"id": range(len(local)), "k": [rng.choice(["a", "b"]) for _ in local], "ts": local,
                           "v": [float(i % 7) for i in range(len(local))]})
    events = events.with_columns(
        pl.col("ts").dt.replace_time_zone("America/New_York", ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC"),
    ).drop_nulls("ts")
    events = event_frame([{**r, "n": None, "s": None, "k2": None} for r in events.to_dicts()])
    known = events["ts"].to_list()
    times = known + [t + 45 * MIN for t in known] + [t + 24 * 60 * MIN for t in known]
    queries = pl.DataFrame({"k": [rng.choice(["a", "b"]) for _ in times], "t": times})
    check_all(events, queries, KEYS, AGGREGATIONS + (Aggregation("day", "mean", "v", 24 * 60 * MIN),))
    # 01:50 EST and 03:00 EDT on 2013-03-10 are 10 minutes apart (70 on the wall clock): a 15-minute
    # window at 03:00 EDT holds both.
    spring = datetime(2013, 3, 10, 7, 0, tzinfo=UTC)
    store = online_store(events.with_columns(k=pl.lit("a")), KEYS, (Aggregation("n", "count", None, 15 * MIN),))
    assert store.compute(("a",), spring).values["n"] == 2.0


def test_known_at_in_another_time_zone_gives_the_same_values() -> None:
    rng = random.Random(9)
    events = event_frame(random_events(rng, 80, ["a", "b"]))
    queries = random_queries(rng, as_dicts(events), 50)
    utc = aggregate_at(events, KEYS, "ts", AGGREGATIONS, queries, "t")
    shifted = events.with_columns(pl.col("ts").dt.convert_time_zone("America/New_York"))
    local = aggregate_at(shifted, KEYS, "ts", AGGREGATIONS, queries.with_columns(
        pl.col("t").dt.convert_time_zone("Asia/Tokyo")), "t")
    as_utc = pl.selectors.datetime()  # a `last` of a time column keeps its zone; the instants must agree
    assert_frame_equal(utc.drop("t").with_columns(as_utc.dt.convert_time_zone("UTC")),
                       local.drop("t").with_columns(as_utc.dt.convert_time_zone("UTC")), check_exact=False, abs_tol=1e-9)


def test_idempotent_pushes_horizon_freshness_and_empty_windows() -> None:
    aggregations = (Aggregation("n", "count", None, 3 * 60 * MIN), Aggregation("m", "mean", "v", 60 * MIN))
    store = OnlineWindows(KEYS, "ts", aggregations, event_id="id", horizon=T0)
    first = event_frame([{"id": 1, "k": "a", "ts": T0 + 60 * MIN, "v": 4.0}])
    assert store.push(first) == 1
    assert store.push(first) == 0
    assert store.push(pl.concat([first, first.with_columns(id=pl.lit(2, pl.Int64))])) == 1
    assert store.compute(("a",), T0 + 90 * MIN).values == {"n": 2.0, "m": 4.0}
    assert store.compute(("a",), T0 + 90 * MIN).complete is False
    assert store.compute(("a",), T0 + 180 * MIN).complete is True
    early = store.compute(("a",), T0 + 30 * MIN)
    assert early.latest_known_at is None and early.values == {"n": 0.0, "m": None}
    late = store.compute(("a",), T0 + 5 * 60 * MIN)
    assert late.latest_known_at == T0 + 60 * MIN and late.values == {"n": 0.0, "m": None}
    assert store.compute(("nobody",), T0 + 5 * 60 * MIN).values == {"n": 0.0, "m": None}
    assert store.horizon == T0


def test_trim_forgets_old_events_and_moves_the_horizon() -> None:
    aggregations = (Aggregation("n", "count", None, 60 * MIN),)
    events = event_frame([{"id": i, "k": "a", "ts": T0 + 10 * MIN * i, "v": 1.0} for i in range(12)])
    store = online_store(events, KEYS, aggregations)
    before = store.compute(("a",), T0 + 110 * MIN)
    assert store.trim(T0 + 50 * MIN) == 5
    assert store.horizon == T0 + 50 * MIN and len(store) == 7
    after = store.compute(("a",), T0 + 110 * MIN)
    assert after.values == before.values and after.complete
    assert not store.compute(("a",), T0 + 100 * MIN).complete


def test_views_read_together_say_per_view_whether_their_history_covers_the_window() -> None:
    """A view with a horizon (history held from T0, windows up to 3 h) read in one call beside one without:
    each query's `complete` is that view's own, as `compute` says it, and the view without a horizon is
    complete everywhere; a backdated query's values are the empty window there."""
    aggregations = (Aggregation("n", "count", None, 3 * 60 * MIN), Aggregation("m", "mean", "v", 60 * MIN))
    events = event_frame([{"id": i, "k": "a", "ts": T0 + 20 * MIN * i, "v": float(i)} for i in range(30)])
    held = OnlineWindows(KEYS, "ts", aggregations, event_id="id", horizon=T0)
    held.push(events)
    held.pack()
    unbounded = online_store(events, KEYS, aggregations)
    times = [T0 + m * MIN for m in (30, 179, 180, 181, 400)]
    read = ViewsReader([held, unbounded, held]).read([[("a",)] * len(times)] * 3, [epoch_us(t) for t in times])
    expected = [held.compute(("a",), t).complete for t in times]
    assert expected == [False, False, True, True, True]
    assert read.complete.tolist() == [expected, [True] * len(times), expected]
    for view, store in enumerate((held, unbounded, held)):
        assert repr(read.columns(view).values) == repr(store.compute_columns([("a",)] * len(times),
                                                                              [epoch_us(t) for t in times], math.nan).values)


def test_compute_many_matches_compute() -> None:
    rng = random.Random(4)
    events = event_frame(random_events(rng, 50, ["a", "b"]))
    store = online_store(events, KEYS, AGGREGATIONS)
    keys = [("a",), ("b",), ("zz",), ("a",)]
    times = [T0 + 30 * MIN, T0 + 200 * MIN, T0, T0 + 400 * MIN]
    assert store.compute_many(keys, times) == [store.compute(k, t) for k, t in zip(keys, times, strict=True)]


def test_non_finite_values_stay_inside_their_windows() -> None:
    """A NaN or an infinity affects the windows that contain it, never the later ones."""
    values = [1.0, math.nan, 2.0, math.inf, 3.0, -math.inf, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    events = event_frame([{"id": i, "k": "a", "ts": T0 + 10 * MIN * i, "v": v} for i, v in enumerate(values)])
    aggregations = (Aggregation("s", "sum", "v", 15 * MIN), Aggregation("s2", "sum", "v", 35 * MIN),
                    Aggregation("m", "max", "v", 15 * MIN), Aggregation("mean", "mean", "v", 25 * MIN))
    queries = pl.DataFrame({"k": ["a"] * len(values), "t": events["ts"]})
    out = aggregate_at(events, KEYS, "ts", aggregations, queries, "t")
    s = out["s"].to_list()
    assert s[0] == 1.0 and math.isnan(s[1]) and math.isnan(s[2]) and s[3] == math.inf and s[4] == math.inf
    assert s[5] == -math.inf and s[6] == -math.inf and s[7] == 9.0 and s[11] == 17.0
    assert math.isnan(out["s2"][5]) and out["s2"][7] == -math.inf and out["s2"][11] == 30.0
    store = online_store(events, KEYS, aggregations)
    for row in out.iter_rows(named=True):
        online = store.compute(("a",), row["t"]).values
        for name in ("s", "s2", "m", "mean"):
            assert_same(online[name], row[name], name)
    assert_batch_equals_single(store, [(("a",), t) for t in out["t"]])


def test_many_groups_and_long_time_spans_use_the_safe_code_paths() -> None:
    """Times spread over centuries with many keys overflow the direct (group, time) code."""
    rng = random.Random(8)
    start = datetime(1900, 1, 1, tzinfo=UTC)
    rows = [{"id": i, "k": f"k{rng.randrange(700)}", "ts": start + timedelta(days=rng.randrange(73_000)),
             "v": float(rng.randrange(10))} for i in range(1500)]
    events = event_frame(rows)
    queries = pl.DataFrame({"k": [r["k"] for r in rows[:200]], "t": [r["ts"] + timedelta(days=3) for r in rows[:200]]})
    aggregations = (Aggregation("n", "count", None, timedelta(days=30)),
                    Aggregation("mx", "max", "v", timedelta(days=3650)),
                    Aggregation("last", "last", "v", timedelta(days=30)))
    check_all(events, queries, KEYS, aggregations)


def test_null_key_or_time_queries_and_empty_events() -> None:
    empty = event_frame([])
    queries = pl.DataFrame({"k": ["a", None], "t": [T0, None]}, schema={"k": pl.String, "t": pl.Datetime("us", "UTC")})
    out = aggregate_at(empty, KEYS, "ts", AGGREGATIONS, queries, "t")
    assert out["events_1h"].to_list() == [0.0, 0.0] and out["v_mean_3h"].to_list() == [None, None]
    assert out["s_last_3h"].to_list() == [None, None]
    store = OnlineWindows(KEYS, "ts", AGGREGATIONS)
    assert store.push(empty) == 0 and store.compute((None,), T0).values["events_1h"] == 0.0


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Aggregation("bad_fn", "median", "v", MIN), "aggregation 'bad_fn': unknown function 'median'"),
    (lambda: Aggregation("no_where", "share", "v", MIN), "aggregation 'no_where': function 'share' needs a where"),
    (lambda: Aggregation("no_col", "mean", None, MIN), "aggregation 'no_col': function 'mean' needs an input"),
    (lambda: Aggregation("zero", "count", None, timedelta(0)), "aggregation 'zero': window must be a positive"),
    (lambda: Aggregation("syntax", "count", None, MIN, "v >"), "aggregation 'syntax': cannot parse where"),
])
def test_invalid_aggregations_fail_with_one_line(make: Callable[[], Aggregation], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        make()
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_where_naming_an_unknown_column_fails_offline_and_online() -> None:
    events = event_frame(random_events(random.Random(1), 5, ["a"]))
    queries = pl.DataFrame({"k": ["a"], "t": [T0]})
    bad = (Aggregation("typo", "count", None, MIN, "dep_delay > 15"),)
    with pytest.raises(ValueError, match=r"^aggregation 'typo': where 'dep_delay > 15' names column\(s\) not in "
                                         r"the events: dep_delay$"):
        aggregate_at(events, KEYS, "ts", bad, queries, "t")
    with pytest.raises(ValueError, match=r"^aggregation 'typo': .*pushed events: dep_delay$"):
        OnlineWindows(KEYS, "ts", bad).push(events)
    with pytest.raises(ValueError, match=r"^aggregation 'words': function 'sum' needs a numeric column"):
        aggregate_at(events, KEYS, "ts", (Aggregation("words", "sum", "s", MIN),), queries, "t")
    with pytest.raises(ValueError, match="duplicated aggregation names: twice"):
        OnlineWindows(KEYS, "ts", (Aggregation("twice", "count", None, MIN),) * 2)


def test_more_groups_than_a_radix_pass_takes() -> None:
    """With 2**16 or more keys the order falls back to one argsort; each key still sees only its events."""
    n = 2**16 + 10
    events = event_frame([{"id": i, "k": f"k{i % (n - 5)}", "ts": T0 + MIN * (i % 97), "v": float(i % 13)}
                          for i in range(n)])
    picked = ["k0", "k1", "k7", f"k{n - 6}"]
    queries = pl.DataFrame({"k": picked * 3, "t": [T0 + MIN * m for m in (0, 50, 120) for _ in picked]})
    aggregations = AGGREGATIONS[:2] + (AGGREGATIONS[7], AGGREGATIONS[12])
    everything = aggregate_at(events, KEYS, "ts", aggregations, queries, "t")
    only_picked = aggregate_at(events.filter(pl.col("k").is_in(picked)), KEYS, "ts", aggregations, queries, "t")
    assert everything.equals(only_picked)


def test_packed_events_are_held_once_and_a_later_push_copies_its_key_out() -> None:
    """After `pack` each key's history is a view of the packed arrays; a push into a key moves that key
    into buffers of its own, leaving the packed arrays (other keys read them) as they were. Text event ids
    of two views of one source are one string each, not one per view."""
    rng = random.Random(9)
    events = event_frame(random_events(rng, 80, ["a", "b", "c"])).with_columns(pl.col("id").cast(pl.String))
    store, twin = (OnlineWindows(KEYS, "ts", AGGREGATIONS, event_id="id") for _ in range(2))
    store.push(events)
    twin.push(events.clone())
    store.pack()
    packed = store._packed
    assert all(np.shares_memory(h.ts, packed.ts) and np.shares_memory(h.sums, packed.sums)
               for h in store._histories.values())
    frozen = packed.ts.copy(), packed.sums.copy()
    late = event_frame([{"id": 10_000, "k": "a", "k2": "p", "ts": T0 + 45 * MIN, "v": 2.5, "n": 1, "s": "x"}])
    late = late.with_columns(pl.col("id").cast(pl.String))
    store.push(late)
    assert not np.shares_memory(store._histories[("a",)].ts, packed.ts)
    assert np.array_equal(packed.ts, frozen[0]) and np.array_equal(packed.sums, frozen[1])
    check_all(pl.concat([events, late]), random_queries(rng, as_dicts(events), 60), KEYS, AGGREGATIONS, store)
    assert {id(i) for i in twin._seen} <= {id(i) for i in store._seen}


def test_long_histories_read_in_two_levels_equal_the_reference() -> None:
    """A key with hundreds of events is searched among its marks (every 64th time) first, then within one
    block: query times (and so window bounds) on, just before and just after the events around each mark."""
    rng = random.Random(12)
    rows = random_events(rng, 900, ["a"])
    for i, row in enumerate(rows):  # distinct times a minute apart: every event is a boundary of its own
        row["ts"], row["k"] = T0 + MIN * i, "a" if i < 700 else "b"
    events = event_frame(rows)
    store = online_store(events, KEYS, AGGREGATIONS, batch=100)
    store.pack()
    times = [T0 + MIN * i + d for i in range(900) if i % 64 in (62, 63, 0, 1) for d in (-US, 0 * US, US)]
    queries = pl.DataFrame({"k": [rng.choice(["a", "b"]) for _ in times], "t": times},
                           schema={"k": pl.String, "t": pl.Datetime("us", "UTC")})
    check_all(events, queries, KEYS, AGGREGATIONS, store)
    assert max(np.diff(store._packed.starts)) == 700
