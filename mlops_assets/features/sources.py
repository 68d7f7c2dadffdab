"""From validated batches to prepared sources: computed columns, then the project's derive function.

Runs after validation (so a declared column is known to be there and typed) and before any
feature, label or request is computed; training, batch scoring and replay all start here.
"""

from __future__ import annotations

import polars as pl

from mlops_assets.project.loading import LoadedProject
from mlops_assets.project.spec import ColumnType

DTYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(), "float": pl.Float64(), "str": pl.String(), "bool": pl.Boolean(),
    "date": pl.Date(), "datetime": pl.Datetime("us", "UTC"),
}


def cast_to(expr: pl.Expr, kind: ColumnType) -> pl.Expr:
    return expr.cast(DTYPES[kind])


def prepare_source(project: LoadedProject, name: str, frame: pl.DataFrame,
                   references: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Computed columns (polars SQL), then `derive` with its reference inputs; checks what it added."""
    source = project.spec.sources[name]
    if source.computed:
        frame = frame.with_columns(cast_to(pl.sql_expr(c.expr), c.type).alias(n) for n, c in source.computed.items())
    if source.derive is None:
        return frame
    derive = source.derive
    inputs = [references[i] for i in derive.inputs]
    out = project.function(derive.function)(frame, *inputs)
    missing = sorted(set(derive.adds) - set(out.columns))
    if missing:
        raise ValueError(f"{project.path}: sources.{name}.derive: {derive.function} did not add {missing}")
    if out.height != frame.height:
        raise ValueError(f"{project.path}: sources.{name}.derive: {derive.function} changed the row count "
                         f"({frame.height} -> {out.height}); a derive function adds columns only")
    return out.with_columns(cast_to(pl.col(c), t) for c, t in derive.adds.items())


def prepare_all(project: LoadedProject, raw: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Every source prepared; reference sources first, since derive functions read them."""
    spec = project.spec
    prepared: dict[str, pl.DataFrame] = {}
    for name in [*spec.reference_sources, *spec.periodic_sources]:
        if name in raw:
            prepared[name] = prepare_source(project, name, raw[name], prepared)
    return prepared
