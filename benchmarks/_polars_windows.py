"""A bare polars implementation of the exact windows, the reference the window benchmarks compare with.

Shared by benchmarks/windows.py and benchmarks/feature_repository.py, so both measure against the same
(corrected) reference.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout without an install
    sys.path.insert(0, str(ROOT))

from mlops_assets.features.windows import Aggregation  # noqa: E402


def polars_reference(events: pl.DataFrame, keys: Sequence[str], known_at: str,
                     aggregations: Sequence[Aggregation], queries: pl.DataFrame, query_time: str) -> pl.DataFrame:
    """The same values with bare polars: `rolling(closed="right")` over events + query rows per window.

    Each aggregation gets a column that is null outside the events it counts (query rows included),
    so plain `sum/mean/min/max/last` aggregations, which polars runs with rolling kernels, apply.
    Results are joined back by (keys, position within the key): `rolling(group_by=...)` keeps the
    order within a group but not the order of the groups (seen with the ~4,000 tail numbers).
    """
    ev = events.select(*keys, pl.col(known_at).alias("__t"), *(_masked_input(a) for a in aggregations))
    qs = queries.select(*keys, pl.col(query_time).cast(ev.schema["__t"]).alias("__t")).with_row_index("__row")
    qs = qs.cast({k: ev.schema[k] for k in keys})
    union = pl.concat([ev.drop_nulls(["__t", *keys]), qs.drop_nulls(["__t", *keys])], how="diagonal")
    union = union.sort(*keys, "__t", maintain_order=True)
    position = pl.int_range(pl.len()).over(keys).alias("__i")  # rolling keeps the order within a group only
    rows = union.select(*keys, position, "__row").drop_nulls("__row")
    out = queries.with_row_index("__row").select("__row")
    for window in sorted({a.window for a in aggregations}):
        exprs = [_rolling_expr(a) for a in aggregations if a.window == window]
        stats = union.rolling("__t", period=window, closed="right", group_by=list(keys)).agg(exprs)
        stats = rows.join(stats.with_columns(position), on=[*keys, "__i"], how="left").drop(*keys, "__i", "__t")
        out = out.join(stats, on="__row", how="left", maintain_order="left")
    counts = [a.name for a in aggregations if a.function == "count"]
    out = out.with_columns(pl.col(counts).fill_null(0.0))
    return queries.hstack(out.select(a.name for a in aggregations))


def _masked_input(a: Aggregation) -> pl.Expr:
    """The aggregation's input where it counts, null elsewhere (count: 1.0; share: the where flag)."""
    flag = pl.lit(True) if a.column is None else pl.col(a.column).is_not_null()
    if a.where is not None and a.function != "share":
        flag = flag & pl.sql_expr(a.where).fill_null(False)
    if a.function == "count":
        value = pl.lit(1.0)
    elif a.function == "share":
        value = pl.sql_expr(a.where).fill_null(False).cast(pl.Float64)
    else:
        value = pl.col(a.column) if a.function == "last" else pl.col(a.column).cast(pl.Float64)
    return pl.when(flag).then(value).alias(a.name)


def _rolling_expr(a: Aggregation) -> pl.Expr:
    column = pl.col(a.name)
    if a.function == "count":
        return column.sum().cast(pl.Float64)
    if a.function == "share":
        return column.mean()
    if a.function == "last":
        return column.drop_nulls().last()
    if a.function == "sum":
        return pl.when(column.count() > 0).then(column.sum())
    return getattr(column, a.function)()
