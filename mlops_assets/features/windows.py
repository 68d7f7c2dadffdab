"""Exact trailing-window aggregations of event histories, computed the same way offline and online.

For a query with key k at time t an aggregation sees the events of k known in (t - window, t]: an
event known exactly at t counts, one known exactly at t - window does not. Timestamps are compared
as int64 epoch microseconds (UTC), so daylight-saving changes of local time cannot move a window.

Both paths reduce every aggregation to the same per-event *channels*: polars evaluates the raw
inputs and each distinct `where` once per frame (vectorised `pl.sql_expr`), numpy derives 0/1 flags
(input non-null and `where` true), finite input values (NaN/+inf/-inf are counted in flags of their
own, so one NaN cannot poison the prefix sums of every later window), min/max values with a
neutral sentinel where the flag is off, and raw values for `last`. Per key, events are ordered by
(known_at, input order offline / arrival order online), and:
- count/sum/mean/share are differences of prefix sums at two searchsorted positions;
- min/max come from a sparse table offline (two lookups per query) and a scan of the window online;
- last is the last flagged position before the upper bound.

Empty windows give count 0.0 and null for every other function (sum included: "no data" is not
0). Sums are exact for integer-valued inputs below 2**53; other floats carry rounding of the order
of machine epsilon times the running prefix sum, far below 1e-9 relative at realistic magnitudes.
NaN propagates through sum, mean, min and max, as in numpy.

Speed (`benchmarks/windows.py`, 2-core machine shared with other jobs, 330k flights-like events
and queries, 4 views, 36 aggregations, windows 1h..28d): `aggregate_at` takes ~0.5 s for all views;
a bare polars implementation (`rolling(closed="right")` over the union of events and query rows,
grouped by the keys, one pass per window) takes ~1.2-1.7 s and gives identical values, so this
engine is ~3x faster (sorting once and answering every window by searchsorted beats materialising
rolling groups per window). `OnlineWindows.compute` takes ~16 µs p50 / ~45 µs p99 per view and key.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from itertools import chain, repeat
from typing import Literal, NoReturn, get_args

import numpy as np
import polars as pl

Function = Literal["count", "sum", "mean", "min", "max", "share", "last"]
FUNCTIONS: tuple[str, ...] = get_args(Function)
NUMERIC_FUNCTIONS = frozenset({"sum", "mean", "min", "max"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
_T = "__known_at_us"
_ID = "__event_id"
_GROUP = "__group"
NO_EVENT = int(np.iinfo(np.int64).min)  # a latest event time meaning: none (window_kernels.NO_EVENT)


@dataclass(frozen=True)
class Aggregation:
    """One windowed aggregate of a feature view, validated on creation so a typo fails at import."""

    name: str
    function: Function
    column: str | None
    window: timedelta
    where: str | None = None

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            self._fail(f"unknown function {self.function!r} (expected one of {', '.join(FUNCTIONS)})")
        if self.column is None and self.function != "count":
            self._fail(f"function {self.function!r} needs an input column")
        if self.function == "share" and not self.where:
            self._fail("function 'share' needs a where condition (the share of events satisfying it)")
        if not isinstance(self.window, timedelta) or self.window <= timedelta(0):
            self._fail(f"window must be a positive timedelta, got {self.window!r}")
        if self.where is not None:
            try:
                pl.sql_expr(self.where)
            except pl.exceptions.PolarsError as err:
                self._fail(f"cannot parse where {self.where!r}: {str(err).splitlines()[0]}")

    @property
    def window_us(self) -> int:
        return self.window // MICROSECOND

    def _fail(self, reason: str) -> NoReturn:
        raise ValueError(f"aggregation {self.name!r}: {reason}")


@dataclass(frozen=True)
class WindowResult:
    """Online values of one view for one key and time, with what the caller needs to trust them."""

    values: dict[str, object]
    latest_known_at: datetime | None
    complete: bool


@dataclass(frozen=True)
class WindowColumns:
    """`compute` of a batch: per aggregation one value per query, and per query the latest event's
    known_at (epoch µs; None: no event in the longest window) and whether the history is complete."""

    values: dict[str, list[object]]
    latest_known_at_us: list[int | None]
    complete: list[bool]


@dataclass(frozen=True)
class _Compiled:
    """An aggregation resolved to channel indices (-1 = unused) and its window's index."""

    name: str
    function: str
    window: int
    flag: int
    value: int = -1
    nonfinite: tuple[int, int, int] = (-1, -1, -1)
    extreme: int = -1
    last: int = -1


Spec = tuple[str, str | None, str | None]  # (kind, column, where)


@dataclass
class _Plan:
    """The inputs and channels a set of aggregations needs, shared by the offline and online paths."""

    aggregations: tuple[Aggregation, ...]
    float_columns: frozenset[str] | None = None  # None: any input may hold NaN/inf (online)
    windows_us: list[int] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)
    channels: list[Spec] = field(default_factory=list)
    extremes: list[Spec] = field(default_factory=list)
    lasts: list[str] = field(default_factory=list)
    compiled: list[_Compiled] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.aggregations:
            raise ValueError("at least one aggregation is needed")
        names = [a.name for a in self.aggregations]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"duplicated aggregation names: {', '.join(duplicated)}")
        self.windows_us = sorted({a.window_us for a in self.aggregations})
        self.columns = sorted({a.column for a in self.aggregations if a.column is not None})
        self.wheres = sorted({a.where for a in self.aggregations if a.where is not None})
        self.compiled = [self._compile(a) for a in self.aggregations]

    @property
    def max_window_us(self) -> int:
        return self.windows_us[-1]

    @cached_property
    def arithmetic(self) -> _Arithmetic:
        return _Arithmetic.of(self)

    @cached_property
    def outputs(self) -> tuple[list[str], list[tuple[int, int]]]:
        """The aggregation names in order, and (position, last-input index) of each `last` aggregation."""
        return [c.name for c in self.compiled], [(j, c.last) for j, c in enumerate(self.compiled) if c.function == "last"]

    @cached_property
    def kernel(self) -> tuple[np.ndarray, ...]:
        """The aggregations as `read_packed` takes them: function code, window, flag, value, nonfinite, extreme."""
        from mlops_assets.features.window_kernels import CODES  # numba: imported by serving's reads only

        c = self.compiled
        return (np.array([CODES[a.function] for a in c], dtype=np.int64), np.array([a.window for a in c], dtype=np.int64),
                np.array([a.flag for a in c], dtype=np.int64), np.array([a.value for a in c], dtype=np.int64),
                np.array([a.nonfinite for a in c], dtype=np.int64).reshape(len(c), 3),
                np.array([a.extreme for a in c], dtype=np.int64))

    def input_name(self, column: str) -> str:
        return f"__in{self.columns.index(column)}"

    def where_name(self, where: str) -> str:
        return f"__w{self.wheres.index(where)}"

    def _index(self, specs: list, spec: object) -> int:
        if spec not in specs:
            specs.append(spec)
        return specs.index(spec)

    def _compile(self, a: Aggregation) -> _Compiled:
        base = _Compiled(a.name, a.function, self.windows_us.index(a.window_us),
                         self._index(self.channels, ("flag", a.column, a.where)))
        if a.function == "share":
            return replace(base, flag=self._index(self.channels, ("flag", a.column, None)), value=base.flag)
        if a.function in ("min", "max"):
            return replace(base, extreme=self._index(self.extremes, (a.function, a.column, a.where)))
        if a.function == "last":
            return replace(base, last=self._index(self.lasts, a.column))
        if a.function in ("sum", "mean"):
            base = replace(base, value=self._index(self.channels, ("finite", a.column, a.where)))
            if self.float_columns is None or a.column in self.float_columns:
                kinds = ("nan", "+inf", "-inf")
                nonfinite = tuple(self._index(self.channels, (k, a.column, a.where)) for k in kinds)
                base = replace(base, nonfinite=nonfinite)
        return base

    def empty_values(self) -> dict[str, object]:
        return {c.name: (0.0 if c.function == "count" else None) for c in self.compiled}


def _check_events(plan: _Plan, schema: pl.Schema, keys: Sequence[str], known_at: str, what: str) -> None:
    """Fail early, with the aggregation's name, on columns the events do not have or cannot feed."""
    missing = [c for c in (*keys, known_at) if c not in schema]
    if missing:
        raise ValueError(f"{what} lack the key/time columns: {', '.join(missing)}")
    if not isinstance(schema[known_at], pl.Datetime | pl.Date):
        raise ValueError(f"{what} column {known_at!r} must be a datetime, got {schema[known_at]}")
    for a in plan.aggregations:
        if a.column is not None and a.column not in schema:
            a._fail(f"input column {a.column!r} is not in the {what}")
        dtype = schema.get(a.column or "")
        if a.function in NUMERIC_FUNCTIONS and not (dtype.is_numeric() or dtype == pl.Boolean):
            a._fail(f"function {a.function!r} needs a numeric column, {a.column!r} is {dtype}")
        if a.where is not None:
            _check_where(a, a.where, schema, what)


def _check_where(a: Aggregation, where: str, schema: pl.Schema, what: str) -> None:
    expr = pl.sql_expr(where)
    unknown = [c for c in expr.meta.root_names() if c not in schema]
    if unknown:
        a._fail(f"where {where!r} names column(s) not in the {what}: {', '.join(unknown)}")
    try:
        dtype = pl.LazyFrame(schema=schema).select(expr).collect_schema().dtypes()[0]
    except pl.exceptions.PolarsError as err:
        a._fail(f"where {where!r} cannot be evaluated: {str(err).splitlines()[0]}")
    if dtype not in (pl.Boolean, pl.Null):
        a._fail(f"where {where!r} must be a boolean condition, it gives {dtype}")


def _input_exprs(plan: _Plan, keys: Sequence[str], known_at: str, extra: Sequence[pl.Expr] = ()) -> list[pl.Expr]:
    """Keys, epoch-µs time, raw inputs and each distinct `where` once: all polars has to evaluate."""
    return [
        *(pl.col(k) for k in keys), pl.col(known_at).dt.epoch("us").alias(_T), *extra,
        *(pl.col(c).alias(plan.input_name(c)) for c in plan.columns),
        *(pl.sql_expr(w).fill_null(False).alias(plan.where_name(w)) for w in plan.wheres),
    ]


def _inputs(frame: pl.DataFrame, exprs: list[pl.Expr], keys: Sequence[str]) -> pl.DataFrame:
    """The input expressions evaluated; rows with a null time or key can never count and are dropped."""
    raw = frame.select(exprs)
    if not any(raw.get_column(c).has_nulls() for c in (*keys, _T)):
        return raw
    return raw.drop_nulls([*keys, _T])


class _Channels:
    """Numpy channels of an inputs frame: (channels, n) flags/values and (extremes, n) min/max inputs."""

    def __init__(self, plan: _Plan, raw: pl.DataFrame) -> None:
        self.plan, self.raw = plan, raw
        self._valid: dict[str | None, np.ndarray] = {None: np.ones(raw.height, dtype=bool)}
        self._values: dict[str, np.ndarray] = {}
        self._wheres = {w: raw.get_column(plan.where_name(w)).to_numpy() for w in plan.wheres}
        self.t = raw.get_column(_T).to_numpy()
        self.chan = np.empty((len(plan.channels), raw.height))
        for i, spec in enumerate(plan.channels):
            self.chan[i] = self._channel(spec)
        self.ext = np.empty((len(plan.extremes), raw.height))
        for i, (kind, column, where) in enumerate(plan.extremes):
            sentinel = math.inf if kind == "min" else -math.inf
            self.ext[i] = np.where(self._flag(column, where), self._value(column), sentinel)

    def _value(self, column: str) -> np.ndarray:
        if column not in self._values:
            series = self.raw.get_column(self.plan.input_name(column)).cast(pl.Float64)
            self._values[column] = series.to_numpy()
        return self._values[column]

    def _flag(self, column: str | None, where: str | None) -> np.ndarray:
        if column not in self._valid:
            series = self.raw.get_column(self.plan.input_name(column))
            self._valid[column] = series.is_not_null().to_numpy() if series.has_nulls() else self._valid[None]
        valid = self._valid[column]
        return valid if where is None else valid & self._wheres[where]

    def _channel(self, spec: Spec) -> np.ndarray:
        kind, column, where = spec
        flag = self._flag(column, where)
        if kind == "flag":
            return flag
        value = self._value(column)
        if kind == "finite":
            return np.where(flag & np.isfinite(value), value, 0.0)
        if kind == "nan":
            return flag & np.isnan(value)
        return flag & (value == (math.inf if kind == "+inf" else -math.inf))


def epoch_us(t: datetime) -> int:
    """Exact integer microseconds since the epoch; a naive datetime is taken as UTC, like polars."""
    return ((t if t.tzinfo is not None else t.replace(tzinfo=UTC)) - EPOCH) // MICROSECOND


def from_epoch_us(us: int) -> datetime:
    """The UTC datetime of epoch microseconds (the inverse of `epoch_us`)."""
    return EPOCH + timedelta(microseconds=us)


# ---------------------------------------------------------------------------------------- offline


def aggregate_at(events: pl.DataFrame, keys: Sequence[str], known_at: str, aggregations: Sequence[Aggregation],
                 queries: pl.DataFrame, query_time: str) -> pl.DataFrame:
    """Return `queries` with one column per aggregation appended, same row count and order as `queries`.

    Rows of `queries` with a null key or a null `query_time` get count 0.0 and nulls elsewhere.
    """
    keys = tuple(keys)
    plan = _Plan(tuple(aggregations), frozenset(c for c, t in events.schema.items() if t.is_float()))
    _check_events(plan, events.schema, keys, known_at, "events")
    _check_queries(plan, queries.schema, keys, query_time)
    channels = _Channels(plan, _inputs(events, _input_exprs(plan, keys, known_at), keys))
    query_keys = queries.select(keys).cast({k: channels.raw.schema[k] for k in keys})
    gid_events, gid_queries, n_groups = _group_ids(channels.raw.select(keys), query_keys)
    t_queries = queries.get_column(query_time).dt.epoch("us")
    ok = (gid_queries >= 0) & t_queries.is_not_null().to_numpy()
    windows = _OfflineWindows(channels, (gid_events, n_groups), (gid_queries, t_queries.fill_null(0).to_numpy(), ok))
    return queries.with_columns([windows.column(c) for c in plan.compiled])


def _check_queries(plan: _Plan, schema: pl.Schema, keys: Sequence[str], query_time: str) -> None:
    missing = [c for c in (*keys, query_time) if c not in schema]
    if missing:
        raise ValueError(f"queries lack the key/time columns: {', '.join(missing)}")
    if not isinstance(schema[query_time], pl.Datetime | pl.Date):
        raise ValueError(f"query time column {query_time!r} must be a datetime, got {schema[query_time]}")
    clashes = [c.name for c in plan.compiled if c.name in schema]
    if clashes:
        raise ValueError(f"aggregation names already are query columns: {', '.join(clashes)}")


def _group_ids(event_keys: pl.DataFrame, query_keys: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, int]:
    """Dense group ids of the event keys; query keys absent from the events (or null) get -1."""
    groups = event_keys.unique(maintain_order=True).with_row_index(_GROUP)  # stable order: reproducible sums
    on = list(event_keys.columns)

    def ids(frame: pl.DataFrame) -> np.ndarray:
        joined = frame.join(groups, on=on, how="left", maintain_order="left")
        return joined.get_column(_GROUP).cast(pl.Int64).fill_null(-1).to_numpy()

    return ids(event_keys), ids(query_keys), groups.height


Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _encoder(t_events: np.ndarray, n_groups: int, t_queries: np.ndarray, max_window: int) -> Encoder:
    """Map (group, time) to one int64 ordered like the pair; rank-compress times if it would overflow."""
    base = min(int(t_events.min()), int(t_queries.min()) - max_window)
    span = max(int(t_events.max()), int(t_queries.max())) - base + 1
    if n_groups * span < 2**62:
        return lambda g, t: g * span + (t - base)
    distinct = np.unique(t_events)
    width = len(distinct) + 1
    return lambda g, t: g * width + np.searchsorted(distinct, t, side="right")


def _group_time_order(gid: np.ndarray, t: np.ndarray, encode: Encoder) -> np.ndarray:
    """Stable order by (group, time): time first (often sorted already), then a radix pass on groups."""
    if len(gid) == 0 or gid.max() >= 2**16:
        return np.argsort(encode(gid, t), kind="stable")
    by_time = np.arange(len(t)) if bool((t[1:] >= t[:-1]).all()) else np.argsort(t, kind="stable")
    return by_time[np.argsort(gid[by_time].astype(np.uint16), kind="stable")]


class _OfflineWindows:
    """Events and queries both sorted by (group, time), so every searchsorted and gather walks forward.

    `bounds[0]` holds, per sorted query, the number of events at or before (its group, t); row 1 + w
    the same at t - window w. `column` puts results back in query order.
    """

    def __init__(self, channels: _Channels, events: tuple[np.ndarray, int],
                 queries: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.channels, self.plan = channels, channels.plan
        (gid_e, n_groups), (gid_q, t_q, ok) = events, queries
        self.n, valid = len(channels.t), np.flatnonzero(ok)
        self._sums: dict[int, np.ndarray] = {}
        self._hi: dict[int, np.ndarray] = {}
        self._window_sums: dict[tuple[int, int], np.ndarray] = {}
        self._tables: dict[int, np.ndarray] = {}
        self.bounds = np.zeros((1 + len(self.plan.windows_us), len(ok)), dtype=np.int64)
        self.order, self.unsort = np.arange(self.n), np.arange(len(ok))
        if self.n and len(valid):
            encode = _encoder(channels.t, n_groups, t_q[valid], self.plan.max_window_us)
            self._search(encode, gid_e, gid_q[valid], t_q[valid], valid)

    def _search(self, encode: Encoder, gid_e: np.ndarray, gid_q: np.ndarray, t_q: np.ndarray,
                valid: np.ndarray) -> None:
        t_e = self.channels.t
        self.order = _group_time_order(gid_e, t_e, encode)
        codes = encode(gid_e[self.order], t_e[self.order])
        by_code = _group_time_order(gid_q, t_q, encode)
        gid_q, t_q = gid_q[by_code], t_q[by_code]
        for row, offset in enumerate([0, *self.plan.windows_us]):
            self.bounds[row, :len(valid)] = np.searchsorted(codes, encode(gid_q, t_q - offset), side="right")
        if len(valid) < len(self.unsort):
            invalid = np.setdiff1d(np.arange(len(self.unsort)), valid, assume_unique=True)
            by_code = np.concatenate([valid[by_code], invalid])
        self.unsort[by_code] = np.arange(len(self.unsort))

    def window_sum(self, channel: int, window: int) -> np.ndarray:
        """Per sorted query, the sum of a channel over its window: two gathers from the prefix sums."""
        if channel not in self._sums:
            sums = np.zeros(self.n + 1)
            np.cumsum(self.channels.chan[channel][self.order], out=sums[1:])
            self._sums[channel], self._hi[channel] = sums, sums[self.bounds[0]]
        if (channel, window) not in self._window_sums:
            lows = self._sums[channel][self.bounds[1 + window]]
            self._window_sums[channel, window] = np.subtract(self._hi[channel], lows, out=lows)
        return self._window_sums[channel, window]

    def column(self, c: _Compiled) -> pl.Series:
        count = self.window_sum(c.flag, c.window)
        if c.function == "count":
            return pl.Series(c.name, count[self.unsort], dtype=pl.Float64)
        ok = count > 0
        if c.function == "last":
            return self._last(c, ok)
        if c.function in ("min", "max"):
            values = self._range_extreme(c, ok)
        else:
            values = self.window_sum(c.value, c.window)
            if c.nonfinite[0] >= 0:
                values = self._with_nonfinite(values, c)
            if c.function != "sum":
                values = np.divide(values, count, out=np.zeros_like(values), where=ok)
        return _masked(c.name, values[self.unsort], ok[self.unsort])

    def _with_nonfinite(self, finite: np.ndarray, c: _Compiled) -> np.ndarray:
        """IEEE sum semantics without NaN/inf in the prefix sums: NaN, +inf, -inf, inf - inf = NaN."""
        if all(self.channels.chan[ch].sum() == 0 for ch in c.nonfinite):
            return finite
        nan, pos, neg = (self.window_sum(ch, c.window) > 0 for ch in c.nonfinite)
        return np.select([nan | (pos & neg), pos, neg], [math.nan, math.inf, -math.inf], finite)

    def _range_extreme(self, c: _Compiled, ok: np.ndarray) -> np.ndarray:
        """Min/max over the window with a sparse table: level k holds the extreme of 2**k events."""
        out = np.zeros(len(ok))
        if not ok.any():
            return out
        op = np.minimum if c.function == "min" else np.maximum
        lo, hi = self.bounds[1 + c.window][ok], self.bounds[0][ok]
        level = np.frexp(hi - lo)[1].astype(np.int64) - 1
        table, n = self._table(c.extreme, op, int(level.max())), self.n
        out[ok] = op(table[level * n + lo], table[level * n + hi - (1 << level)])
        return out

    def _table(self, extreme: int, op: np.ufunc, levels: int) -> np.ndarray:
        """The extreme channel's sparse table (events in (group, time) order), cached and grown on demand."""
        table = self._tables.get(extreme)
        if table is None or len(table) < (levels + 1) * self.n:
            table = self._tables[extreme] = sparse_table(self.channels.ext[extreme][self.order], op, levels)
        return table

    def _last(self, c: _Compiled, ok: np.ndarray) -> pl.Series:
        """Latest flagged event before the upper bound; it is in the window iff the count is positive."""
        flagged = np.where(self.channels.chan[c.flag][self.order] > 0, np.arange(self.n), -1)
        latest = np.maximum.accumulate(flagged) if self.n else flagged
        rows = np.zeros(len(ok), dtype=np.int64)
        rows[ok] = self.order[latest[self.bounds[0][ok] - 1]]
        rows, ok = rows[self.unsort], ok[self.unsort]
        index = pl.Series(rows) if ok.all() else pl.Series(rows).set(pl.Series(~ok), None)
        source = self.channels.raw.get_column(self.plan.input_name(self.plan.lasts[c.last]))
        return source.gather(index).alias(c.name)


def sparse_table(values: np.ndarray, op: np.ufunc, levels: int) -> np.ndarray:
    """Flattened (levels + 1) x n table: level k holds `op` over the 2**k values from each position, so the
    extreme of any range is two lookups (offline queries and the packed online batch path share it)."""
    n = len(values)
    table = np.empty((levels + 1) * n)
    table[:n] = values
    for k in range(1, levels + 1):
        half, row, prev, valid = 1 << (k - 1), k * n, (k - 1) * n, n - (1 << k) + 1
        op(table[prev:prev + valid], table[prev + half:prev + half + valid], out=table[row:row + valid])
        table[row + valid:row + n] = table[prev + valid:prev + n]
    return table


def _masked(name: str, values: np.ndarray, ok: np.ndarray) -> pl.Series:
    """A Float64 column with nulls where `ok` is false (NaN stays a value, never a null marker)."""
    series = pl.Series(name, values, dtype=pl.Float64)
    return series if ok.all() else series.set(pl.Series(~ok), None)


# ----------------------------------------------------------------------------------------- online


class _History:
    """One key's events in (known_at, arrival) order, in growable buffers, with their prefix sums."""

    __slots__ = ("n", "ts", "chan", "sums", "ext", "last", "clean")

    def __init__(self, n_chan: int, n_ext: int, n_last: int, capacity: int = 16) -> None:
        self.n, self.clean = 0, 0
        self.ts = np.empty(capacity, dtype=np.int64)
        self.chan = np.empty((n_chan, capacity))
        self.sums = np.zeros((n_chan, capacity + 1))
        self.ext = np.empty((n_ext, capacity))
        self.last = np.empty((n_last, capacity), dtype=object)

    def insert(self, ts: np.ndarray, chan: np.ndarray, ext: np.ndarray, last: np.ndarray) -> None:
        """Add a batch sorted by time; an earlier event is merged in place after equal times."""
        n, m = self.n, len(ts)
        self._reserve(n + m)
        p = int(self.ts[:n].searchsorted(ts[0], side="right")) if n else 0
        if p == n:
            self.ts[n:n + m], self.chan[:, n:n + m] = ts, chan
            self.ext[:, n:n + m], self.last[:, n:n + m] = ext, last
        else:
            merged = np.concatenate([self.ts[p:n], ts])
            order = np.argsort(merged, kind="stable")
            self.ts[p:n + m] = merged[order]
            for buffer, new in ((self.chan, chan), (self.ext, ext), (self.last, last)):
                buffer[:, p:n + m] = np.concatenate([buffer[:, p:n], new], axis=1)[:, order]
        self.n, self.clean = n + m, min(self.clean, p)

    def _reserve(self, size: int) -> None:
        capacity = len(self.ts)
        if size <= capacity:
            return
        while capacity < size:
            capacity *= 2
        self.ts = _grown(self.ts, capacity)
        self.chan, self.ext, self.last = (_grown(b, capacity) for b in (self.chan, self.ext, self.last))
        self.sums = _grown(self.sums, capacity + 1)

    def refresh(self) -> None:
        """Extend the prefix sums over rows added or moved since the last refresh: O(new rows) for
        in-order events, O(rows after the insertion point) for late ones."""
        d, n = self.clean, self.n
        if d < n:
            np.cumsum(self.chan[:, d:n], axis=1, out=self.sums[:, d + 1:n + 1])
            self.sums[:, d + 1:n + 1] += self.sums[:, d:d + 1]
            self.clean = n

    def drop_before(self, t_us: int) -> int:
        """Forget events known before t_us (kept: known at or after it); returns how many went."""
        p = int(self.ts[:self.n].searchsorted(t_us, side="left"))
        if p:
            keep, size = slice(p, self.n), self.n - p
            self.ts[:size] = self.ts[keep].copy()
            for buffer in (self.chan, self.ext, self.last):
                buffer[:, :size] = buffer[:, keep].copy()
            self.n, self.clean = size, 0
            self.refresh()
        return p


def _grown(buffer: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((*buffer.shape[:-1], capacity), dtype=buffer.dtype)
    out[..., :buffer.shape[-1]] = buffer
    return out


Reader = Callable[[list[list[float]], _History, list[int]], object]


class OnlineWindows:
    """Per-view in-memory event history per key; computes the same values as aggregate_at for any t.

    Channels are evaluated once per pushed batch; a read of one key is one searchsorted for all window
    bounds, one gather of the prefix sums of all channels and, for min/max, a numpy scan of the window;
    a batch of a packed view is one compiled loop (`window_kernels.read_packed`) doing the same.
    Events with equal known_at are ordered by arrival, as `aggregate_at` orders them by input row.
    Event ids are remembered for the object's lifetime (a replay after `trim` is still ignored).
    Not thread-safe: serialise `push`, `trim` and `compute` on one object (e.g. a lock per view).
    """

    def __init__(self, keys: Sequence[str], known_at: str, aggregations: Sequence[Aggregation],
                 event_id: str | None = None, horizon: datetime | None = None) -> None:
        self._keys, self._known_at, self._event_id = tuple(keys), known_at, event_id
        self._plan = _Plan(tuple(aggregations))
        self._offsets = np.array([0, *self._plan.windows_us], dtype=np.int64)
        self._readers = [(c.name, _reader(c)) for c in self._plan.compiled]
        self._horizon_us = None if horizon is None else epoch_us(horizon)
        self._histories: dict[tuple, _History] = {}
        self._seen: set[object] = set()
        extra = [] if event_id is None else [pl.col(event_id).alias(_ID)]
        self._exprs = _input_exprs(self._plan, self._keys, known_at, extra)
        self._checked: tuple | None = None
        self._empty = self._plan.empty_values()
        self._packed: _Packed | None = None
        self._dirty: set[tuple] = set()

    @property
    def horizon(self) -> datetime | None:
        """The earliest time from which history is complete; None = complete since the beginning."""
        return None if self._horizon_us is None else from_epoch_us(self._horizon_us)

    def __len__(self) -> int:
        return sum(h.n for h in self._histories.values())

    def push(self, events: pl.DataFrame) -> int:
        """Add events; an event id already held is ignored. Returns the number of events stored.

        Rows with a null key or known_at can never be counted and are not stored.
        """
        self._check(events)
        raw = _inputs(events, self._exprs, self._keys)
        if self._event_id is not None:
            raw = self._new_only(raw)
        if raw.height == 0:
            return 0
        ch, plan = _Channels(self._plan, raw), self._plan
        last = np.empty((len(plan.lasts), raw.height), dtype=object)
        for i, column in enumerate(plan.lasts):
            last[i] = raw.get_column(plan.input_name(column)).to_list()
        for key, rows in _rows_by_key(raw, self._keys, ch.t).items():
            history = self._histories.get(key)
            if history is None:
                history = self._histories[key] = _History(len(plan.channels), len(plan.extremes), len(plan.lasts))
            history.insert(ch.t[rows], ch.chan[:, rows], ch.ext[:, rows], last[:, rows])
            history.refresh()
            self._dirty.add(key)
        return raw.height

    def _check(self, events: pl.DataFrame) -> None:
        """Validate a frame's schema once; later frames with the same columns and dtypes skip it."""
        signature = (tuple(events.columns), tuple(events.dtypes))
        if signature == self._checked:
            return
        _check_events(self._plan, events.schema, self._keys, self._known_at, "pushed events")
        if self._event_id is not None and self._event_id not in events.columns:
            raise ValueError(f"pushed events lack the event id column {self._event_id!r}")
        self._checked = signature

    def _new_only(self, raw: pl.DataFrame) -> pl.DataFrame:
        """Drop events whose id is held already (or repeated earlier in the same batch)."""
        ids = raw.get_column(_ID)
        if ids.null_count():
            raise ValueError(f"event id column {self._event_id!r} has nulls; ids make pushes idempotent")
        seen, keep, intern = self._seen, [], sys.intern if ids.dtype == pl.String else None
        for row, event_id in enumerate(ids.to_list()):
            if event_id not in seen:
                seen.add(intern(event_id) if intern else event_id)
                keep.append(row)
        return raw if len(keep) == raw.height else raw[keep]

    def trim(self, before: datetime) -> int:
        """Forget events known before `before` and move the horizon there; returns how many went."""
        t_us = epoch_us(before)
        dropped = sum(h.drop_before(t_us) for h in self._histories.values())
        self._packed = None
        self._horizon_us = t_us if self._horizon_us is None else max(self._horizon_us, t_us)
        return dropped

    def compute(self, key: tuple, t: datetime) -> WindowResult:
        """Values of every aggregation for key at time t, equal to aggregate_at on the same events."""
        t_us = epoch_us(t)
        complete = self._horizon_us is None or t_us - self._plan.max_window_us >= self._horizon_us
        history = self._histories.get(key if isinstance(key, tuple) else (key,))
        if history is None or history.n == 0:
            return WindowResult(dict(self._empty), None, complete)
        history.refresh()
        bounds = history.ts[:history.n].searchsorted(t_us - self._offsets, side="right")
        hi = int(bounds[0])
        if hi == 0:
            return WindowResult(dict(self._empty), None, complete)
        at = history.sums[:, bounds]
        sums, lows = (at[:, :1] - at[:, 1:]).tolist(), bounds.tolist()
        values = {name: read(sums, history, lows) for name, read in self._readers}
        return WindowResult(values, from_epoch_us(int(history.ts[hi - 1])), complete)

    def compute_many(self, keys: list[tuple], times: list[datetime]) -> list[WindowResult]:
        """`compute` of each (key, t), evaluated as one batch (`compute_columns`)."""
        if len(keys) != len(times):
            raise ValueError(f"compute_many got {len(keys)} keys but {len(times)} times")
        batch = self.compute_columns(keys, [epoch_us(t) for t in times])
        names = list(batch.values)
        return [WindowResult(dict(zip(names, row, strict=True)), None if us is None else from_epoch_us(us), done)
                for row, us, done in zip(zip(*batch.values.values(), strict=True), batch.latest_known_at_us,
                                         batch.complete, strict=True)]

    def pack(self) -> None:
        """Lay every key's history side by side (`_Packed`): later batches read it with a few numpy calls
        per view. Serving packs on load; keys pushed since are read per key until the next repack."""
        self._packed = _Packed(self._histories, self._plan)
        self._packed.adopt(self._histories)
        self._dirty = set()
        self._packed.warm()

    def compute_columns(self, keys: Sequence[tuple], t_us: Sequence[int], null: object = None) -> WindowColumns:
        """`compute` for a batch of (key, epoch-µs time) at once, the same values to the bit. Keys unchanged
        since the last `pack` are answered from the packed histories in one vectorised pass; keys pushed
        since, per key (one searchsorted and gather each), with every aggregation then vectorised too.
        Repacks when more than REPACK_SHARE of the keys (at least REPACK_MIN) changed. `null` is what an
        aggregation without a value reads as: None, or NaN where the reader treats both alike (serving: the
        model reads NaN, the log writes null), which spares converting the numbers to objects."""
        plan = self._plan
        if not all(map(isinstance, keys, repeat(tuple))):
            keys = [key if isinstance(key, tuple) else (key,) for key in keys]
        self._packed_now()
        horizon = self._horizon_us
        complete = [True] * len(keys) if horizon is None else [t - plan.max_window_us >= horizon for t in t_us]
        dirty = self._dirty
        changed = [i for i, key in enumerate(keys) if key in dirty] if dirty else []
        assert self._packed is not None
        values, latest = self._packed.read(plan, keys, t_us, self._offsets, set(changed), null)
        if changed:
            self._fill_changed(keys, t_us, changed, values, latest, null)
        return WindowColumns(values, latest, complete)

    def _packed_now(self) -> _Packed:
        """The packed histories, repacked first when more than REPACK_SHARE of the keys (at least
        REPACK_MIN) changed since the last packing."""
        if self._packed is None or len(self._dirty) > max(REPACK_MIN, REPACK_SHARE * len(self._histories)):
            self.pack()
        assert self._packed is not None
        return self._packed

    def _fill_changed(self, keys: Sequence[tuple], t_us: Sequence[int], changed: list[int],
                      values: dict[str, list[object]], latest: list[int | None] | np.ndarray, null: object) -> None:
        """The queries at `changed` (keys pushed since the pack) read per key into `values` and `latest`."""
        plan = self._plan
        found, found_latest, columns = self._read_per_key(plan, [keys[i] for i in changed],
                                                          [t_us[i] for i in changed], self._offsets)
        for c in plan.compiled:
            column = values[c.name]
            for q, value in zip(found, columns[c.name], strict=True):
                column[changed[q]] = null if value is None else value
        for q, us in zip(found, found_latest, strict=True):
            latest[changed[q]] = us

    def _read_per_key(self, plan: _Plan, keys: list[tuple], t_us: list[int],
                      offsets: np.ndarray) -> tuple[list[int], list[int], dict[str, list[object]]]:
        """(queries with an event in the longest window, their latest known_at, each aggregation's values)."""
        hits: list[tuple[int, _History, np.ndarray]] = []
        for i, (key, t) in enumerate(zip(keys, t_us, strict=True)):
            history = self._histories.get(key)
            if history is None or history.n == 0:
                continue
            history.refresh()
            bounds = history.ts[:history.n].searchsorted(t - offsets, side="right")
            if bounds[0]:
                hits.append((i, history, bounds))
        if not hits:
            return [], [], {}
        at = np.stack([history.sums[:, bounds] for _, history, bounds in hits])
        sums = at[:, :, :1] - at[:, :, 1:]
        latest = [int(history.ts[bounds[0] - 1]) for _, history, bounds in hits]
        return ([i for i, _, _ in hits], latest,
                _read_all(plan, sums, lambda c, ok: _scan_per_key(c, ok, hits)))


REPACK_MIN, REPACK_SHARE = 64, 0.02
SMALL_READ = 256  # queries x aggregations up to which `_Packed.read` converts with lists
SMALL_LAST = 16  # queries up to which a `last` column is read with a list, not a numpy gather


class _Packed:
    """A view's histories as segments of single arrays (key order fixed at packing): each key's events and
    its own prefix sums (n + 1 entries) are copied as they are, so sums read here equal the per-key ones.
    A batch is read by one compiled loop (`read_packed`: a binary search inside each query's segment)."""

    def __init__(self, histories: dict[tuple, _History], plan: _Plan) -> None:
        held = [(key, h) for key, h in histories.items() if h.n]
        for _, h in held:
            h.refresh()
        self.segment = {key: i for i, (key, _) in enumerate(held)}
        sizes = np.array([h.n for _, h in held], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.sum_starts = self.starts[:-1] + np.arange(len(held), dtype=np.int64)
        n_chan, n_ext, n_last = len(plan.channels), len(plan.extremes), len(plan.lasts)
        from mlops_assets.features import window_kernels  # numba, ~0.3-1 s: imported where views are read

        self.kernels = window_kernels
        self.ts = np.concatenate([h.ts[:h.n] for _, h in held]) if held else np.empty(0, dtype=np.int64)
        self.marks, self.mark_starts = _marks(self.ts, self.starts, window_kernels.MARK_EVERY)
        self.chan = np.concatenate([h.chan[:, :h.n] for _, h in held], axis=1) if held else np.empty((n_chan, 0))
        # (positions, channels): a query's channels share a cache line or two (the gather is cache-bound)
        self.sums = (np.ascontiguousarray(np.concatenate([h.sums[:, :h.n + 1] for _, h in held], axis=1).T)
                     if held else np.empty((0, n_chan)))
        self.ext = np.concatenate([h.ext[:, :h.n] for _, h in held], axis=1) if held else np.empty((n_ext, 0))
        self.last = (np.concatenate([h.last[:, :h.n] for _, h in held], axis=1) if held
                     else np.empty((n_last, 0), dtype=object))

    def warm(self) -> None:
        """Compile the read (or load it from numba's cache) now, off the request path."""
        self.kernels.warm()

    def read(self, plan: _Plan, keys: list[tuple], t_us: Sequence[int], offsets: np.ndarray,
             skip: set[int], null: object = None) -> tuple[dict[str, list[object]], list[int | None]]:
        """Every aggregation for each query (compiled: `read_packed`), the empty window for a key not held at
        packing or a query in `skip`; and each query's latest event time (None: no event by t). A value that
        is not one reads as `null`."""
        n, (names, lasts) = len(keys), plan.outputs
        seg = self.segments(keys, skip)
        out, valid, picks, latest = self.kernels.read_packed(seg, np.asarray(t_us, dtype=np.int64), offsets,
                                                             self.starts, self.sum_starts, self.ts, self.marks,
                                                             self.mark_starts, self.sums,
                                                             self.chan, self.ext, *plan.kernel)
        if isinstance(null, float) and math.isnan(null):  # the kernel leaves NaN wherever there is no value
            columns = out.T.tolist()
        elif n * len(names) <= SMALL_READ:  # a few queries: plain lists beat a dozen numpy calls
            columns = [[v if ok else None for v, ok in zip(col, oks, strict=True)]
                       for col, oks in zip(out.T.tolist(), valid.T.tolist(), strict=True)]
        else:
            values = out.astype(object)
            values[~valid] = None
            columns = values.T.tolist()
        for j, last in lasts:  # the latest value itself (a category, say): None when there is none
            columns[j] = self.last_values(last, picks[:, j])
        no_event = self.kernels.NO_EVENT
        when = [None if us == no_event else us for us in latest.tolist()]
        return dict(zip(names, columns, strict=True)), when

    def segments(self, keys: Sequence[tuple], skip: Collection[int]) -> np.ndarray:
        """Each key's segment (-1: not held at packing, or a query in `skip`)."""
        n = len(keys)
        seg = np.fromiter(map(self.segment.get, keys, repeat(-1, n)), dtype=np.int64, count=n)
        if skip:
            seg[list(skip)] = -1
        return seg

    def last_values(self, last: int, picks: np.ndarray) -> list[object]:
        """The `last` input's value at each picked event row (-1: None)."""
        if len(picks) <= SMALL_LAST or not self.last.shape[1]:
            return [None if i < 0 else self.last[last, i] for i in picks.tolist()]
        values = self.last[last].take(np.maximum(picks, 0))
        values[picks < 0] = None
        return values.tolist()

    def adopt(self, histories: dict[tuple, _History]) -> None:
        """Point each packed key's history at its segment (numpy views, no copy), so a view's events are held
        once, not twice. A view has no spare capacity: the key's next insert copies it into buffers of its
        own (`_reserve`), so pushes never write the packed arrays; `trim` does, in place, and drops them."""
        for key, segment in self.segment.items():
            history, lo, hi = histories[key], int(self.starts[segment]), int(self.starts[segment + 1])
            top = int(self.sum_starts[segment])
            history.ts, history.chan, history.ext = self.ts[lo:hi], self.chan[:, lo:hi], self.ext[:, lo:hi]
            history.last, history.sums = self.last[:, lo:hi], self.sums[top:top + hi - lo + 1].T


@dataclass(frozen=True)
class ViewsRead:
    """`compute_columns` of several views for one batch of times: per view its values by aggregation (NaN
    where an aggregation has no value), and as (views, queries) arrays each query's latest event time
    (`NO_EVENT`: none by t) and whether the view's history is complete at t."""

    values: list[dict[str, list[object]]]
    latest_us: np.ndarray
    complete: np.ndarray

    def columns(self, view: int) -> WindowColumns:
        """View `view` as `compute_columns` gives it."""
        return WindowColumns(self.values[view], [None if us == NO_EVENT else us for us in self.latest_us[view].tolist()],
                             self.complete[view].tolist())


class ViewsReader:
    """Several views read by one compiled call (`window_kernels.read_views`) where `compute_columns` makes
    one per view: the same values to the bit, with null as NaN. It holds references to the views' packed
    arrays (no copies); a view repacked since the last read (too many pushed keys, a trim) is noticed and
    the references are collected again. Not thread-safe, like the views it reads."""

    def __init__(self, views: Sequence[OnlineWindows]) -> None:
        self.views = list(views)
        self._packs: list[_Packed] = []
        self._args: object = None
        self._bases = np.zeros(len(self.views) + 1, dtype=np.int64)
        self._outputs: list[tuple[list[str], list[tuple[int, int]], int]] = []  # per view: names, lasts, base
        self._max_window = np.array([view._plan.max_window_us for view in self.views], dtype=np.int64)

    def _current(self) -> list[_Packed]:
        packs = [view._packed_now() for view in self.views]
        if len(packs) != len(self._packs) or any(a is not b for a, b in zip(packs, self._packs, strict=True)):
            kernels = packs[0].kernels if packs else None
            if kernels is not None:
                self._args = kernels.typed_list([
                    tuple(np.ascontiguousarray(a) for a in (view._offsets, p.starts, p.sum_starts, p.ts, p.marks,
                                                             p.mark_starts, p.sums, p.chan, p.ext, *view._plan.kernel))
                    for view, p in zip(self.views, packs, strict=True)])
            widths = [len(view._plan.compiled) for view in self.views]
            self._bases = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
            self._outputs = [(*view._plan.outputs, int(base)) for view, base in zip(self.views, self._bases[:-1], strict=True)]
            self._packs = packs
        return packs

    def read(self, keys: Sequence[Sequence[tuple]], t_us: Sequence[int]) -> ViewsRead:
        """Each view's values for its keys (`keys[v]`, one per query) at the queries' epoch-µs times."""
        packs, n = self._current(), len(t_us)
        times = np.asarray(t_us, dtype=np.int64)
        if not packs:
            return ViewsRead([], np.empty((0, n), dtype=np.int64), np.empty((0, n), dtype=bool))
        found = chain.from_iterable(map(pack.segment.get, listed, repeat(-1, n)) for pack, listed in zip(packs, keys, strict=True))
        segs = np.fromiter(found, dtype=np.int64, count=len(packs) * n).reshape(len(packs), n)  # -1: not packed
        changed = [[i for i, key in enumerate(listed) if key in view._dirty] if view._dirty else []
                   for view, listed in zip(self.views, keys, strict=True)]
        for v, pushed in enumerate(changed):
            if pushed:
                segs[v, pushed] = -1  # keys pushed since the pack are read per key
        out, _, picks, latest = packs[0].kernels.read_views(segs, times, self._args, self._bases)
        columns = out.T.tolist()  # the kernel leaves NaN wherever there is no value
        values = []
        for v, (pack, (names, lasts, base)) in enumerate(zip(packs, self._outputs, strict=True)):
            mine = columns[base:base + len(names)]
            for j, last in lasts:
                mine[j] = pack.last_values(last, picks[:, base + j])
            values.append(dict(zip(names, mine, strict=True)))
            if changed[v]:
                self.views[v]._fill_changed(keys[v], t_us, changed[v], values[v], latest[v], math.nan)
        horizons = [view._horizon_us for view in self.views]
        if all(h is None for h in horizons):
            complete = np.ones((len(packs), n), dtype=bool)
        else:
            held = np.array([NO_EVENT if h is None else h for h in horizons], dtype=np.int64)  # None: always
            complete = times[None, :] - self._max_window[:, None] >= held[:, None]
        return ViewsRead(values, latest, complete)


def _marks(ts: np.ndarray, starts: np.ndarray, every: int) -> tuple[np.ndarray, np.ndarray]:
    """Every `every`-th event time of each segment, from its first, and where each segment's marks start:
    the first level of the kernel's two-level search (`every` is the kernel's own MARK_EVERY)."""
    sizes = np.diff(starts)
    counts = (sizes + every - 1) // every
    mark_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    segment = np.repeat(np.arange(len(sizes)), counts)
    step = np.arange(int(mark_starts[-1]), dtype=np.int64) - mark_starts[:-1][segment]
    return ts[starts[:-1][segment] + step * every], mark_starts


def _rows_by_key(raw: pl.DataFrame, keys: Sequence[str], ts: np.ndarray) -> dict[tuple, np.ndarray]:
    """Row indices of each key, in (time, input) order."""
    tuples = list(zip(*(raw.get_column(k).to_list() for k in keys), strict=True))
    if len(tuples) == 1:
        return {tuples[0]: np.zeros(1, dtype=np.int64)}
    groups: dict[tuple, list[int]] = {}
    for row in np.argsort(ts, kind="stable").tolist():
        groups.setdefault(tuples[row], []).append(row)
    return {key: np.array(rows, dtype=np.int64) for key, rows in groups.items()}


def _reader(c: _Compiled) -> Reader:
    """The scalar twin of `_OfflineWindows.column` for one aggregation, from window sums and bounds."""
    w, flag, value = c.window, c.flag, c.value
    if c.function == "count":
        return lambda sums, h, b: sums[flag][w]
    if c.function == "share":
        return lambda sums, h, b: sums[value][w] / sums[flag][w] if sums[flag][w] > 0 else None
    if c.function in ("sum", "mean"):
        return _sum_reader(c)
    if c.function == "last":
        return _last_reader(c)
    extreme, lo = c.extreme, 1 + w
    if c.function == "min":
        return lambda sums, h, b: float(h.ext[extreme, b[lo]:b[0]].min()) if sums[flag][w] > 0 else None
    return lambda sums, h, b: float(h.ext[extreme, b[lo]:b[0]].max()) if sums[flag][w] > 0 else None


Scan = Callable[[_Compiled, list[bool]], list[object]]
ARITHMETIC = ("count", "sum", "mean", "share")


@dataclass(frozen=True)
class _Arithmetic:
    """The count/sum/mean/share aggregations of a plan as index arrays into `sums[q, channel, window]`, so
    a batch evaluates all of them in a few numpy calls (per aggregation it would be ten small ones)."""

    compiled: list[_Compiled]
    flags: np.ndarray
    values: np.ndarray
    windows: np.ndarray
    is_count: np.ndarray
    is_sum: np.ndarray
    nonfinite: list[int]  # positions in `compiled` of sums/means over inputs that may hold NaN/inf

    @classmethod
    def of(cls, plan: _Plan) -> _Arithmetic:
        compiled = [c for c in plan.compiled if c.function in ARITHMETIC]
        return cls(compiled, np.array([c.flag for c in compiled], dtype=np.int64),
                   np.array([c.flag if c.function == "count" else c.value for c in compiled], dtype=np.int64),
                   np.array([c.window for c in compiled], dtype=np.int64),
                   np.array([c.function == "count" for c in compiled]), np.array([c.function == "sum" for c in compiled]),
                   [j for j, c in enumerate(compiled) if c.function in ("sum", "mean") and c.nonfinite[0] >= 0])


def _read_all(plan: _Plan, sums: np.ndarray, scan: Scan) -> dict[str, list[object]]:
    """Every aggregation of a batch, the vector twin of `_reader` (same IEEE arithmetic, so identical values):
    `sums[q, channel, window]` are query q's window sums; min, max and last read the events through `scan`."""
    arithmetic = plan.arithmetic
    out: dict[str, list[object]] = {}
    if arithmetic.compiled:
        counts = sums[:, arithmetic.flags, arithmetic.windows]  # (queries, aggregations)
        totals = sums[:, arithmetic.values, arithmetic.windows]
        if arithmetic.nonfinite:
            _put_back_nonfinite(arithmetic, sums, totals)
        ok = counts > 0
        ratios = np.divide(totals, counts, out=np.zeros_like(totals), where=ok)
        result = np.where(arithmetic.is_count, counts, np.where(arithmetic.is_sum, totals, ratios))
        columns, every = result.T.tolist(), ok.all(axis=0).tolist()
        masks = ok.T.tolist() if not all(every) else []
        for j, c in enumerate(arithmetic.compiled):
            if c.function == "count" or every[j]:
                out[c.name] = columns[j]
            else:
                out[c.name] = [value if good else None for value, good in zip(columns[j], masks[j], strict=True)]
    for c in plan.compiled:
        if c.function not in ARITHMETIC:
            out[c.name] = scan(c, (sums[:, c.flag, c.window] > 0).tolist())
    return {c.name: out[c.name] for c in plan.compiled}


def _put_back_nonfinite(arithmetic: _Arithmetic, sums: np.ndarray, totals: np.ndarray) -> None:
    """IEEE sum semantics for the aggregations whose inputs held NaN/inf in the window (rare: checked first)."""
    for j in arithmetic.nonfinite:
        c = arithmetic.compiled[j]
        nan, pos, neg = (sums[:, ch, c.window] > 0 for ch in c.nonfinite)
        if (nan | pos | neg).any():
            totals[:, j] = np.select([nan | (pos & neg), pos, neg], [math.nan, math.inf, -math.inf], totals[:, j])


def _scan_per_key(c: _Compiled, ok: list[bool], hits: list[tuple[int, _History, np.ndarray]]) -> list[object]:
    """min/max/last of each query's window in its own history."""
    if c.function == "last":
        return [_last_value(c, history, int(bounds[0])) if good else None
                for good, (_, history, bounds) in zip(ok, hits, strict=True)]
    extreme, lo = c.extreme, 1 + c.window
    pick = np.min if c.function == "min" else np.max
    return [float(pick(history.ext[extreme, bounds[lo]:bounds[0]])) if good else None
            for good, (_, history, bounds) in zip(ok, hits, strict=True)]


def _sum_reader(c: _Compiled) -> Reader:
    w, flag, value, nonfinite, mean = c.window, c.flag, c.value, c.nonfinite, c.function == "mean"

    def read(sums: list[list[float]], history: _History, bounds: list[int]) -> object:
        count = sums[flag][w]
        if count <= 0:
            return None
        total = sums[value][w]
        if nonfinite[0] >= 0:
            total = _ieee_total(total, *(sums[ch][w] > 0 for ch in nonfinite))
        return total / count if mean else total

    return read


def _last_reader(c: _Compiled) -> Reader:
    w, flag = c.window, c.flag

    def read(sums: list[list[float]], history: _History, bounds: list[int]) -> object:
        return _last_value(c, history, bounds[0]) if sums[flag][w] > 0 else None

    return read


def _last_value(c: _Compiled, history: _History, upper: int) -> object:
    """The latest flagged event before `upper`: where the flag's prefix sum last rose."""
    prefix = history.sums[c.flag, :history.n + 1]
    return history.last[c.last, int(prefix.searchsorted(prefix[upper], side="left")) - 1]


def _ieee_total(finite: float, nan: bool, pos: bool, neg: bool) -> float:
    """What a plain float sum gives once the non-finite inputs are put back."""
    if nan or (pos and neg):
        return math.nan
    if pos:
        return math.inf
    return -math.inf if neg else finite
