"""The validation rules of one source, read off its declaration in the project file.

`table_spec` turns a `SourceSpec` into a `TableSpec`: plain data that `running` turns into a
GX suite. Only the delivered columns (`schema`) are checked; computed and derived columns
are added after validation and are never part of a delivery.

Rules taken from the declaration:

- the column set is exactly the schema's, in any order; at least one row;
- each column has a dtype of its declared type (text where a number is declared fails);
- `nullable: false` is a hard non-null rule, and so is every column of `keys`; a nullable
  column has a soft null-share bound (`max_null_share`, default 10%, 1.0 for none) and is
  a hard failure when entirely null (a declared column that never carries a value);
- `min`/`max` with `range_severity`; with `range_mostly` < 1 a single outlier only warns
  and the rule is hard once more than the tolerated share of rows is outside;
- `domain` is a closed value set, `unique` a (compound) key, `expectations` polars SQL
  boolean rules that `mostly` of the rows satisfy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from mlops_assets.project.spec import ColumnType, SourceSpec

Severity = Literal["hard", "soft"]

DEFAULT_MAX_NULL_SHARE = 0.10
NUMERIC_TYPES: frozenset[str] = frozenset({"int", "float"})
TIME_TYPES: frozenset[str] = frozenset({"datetime", "date"})


@dataclass(frozen=True)
class Range:
    """Inclusive plausible bounds of a numeric column; `mostly` tolerates rare outliers."""

    column: str
    min_value: float | None
    max_value: float | None
    severity: Severity = "hard"
    mostly: float = 1.0


@dataclass(frozen=True)
class Domain:
    """Closed set of allowed values of a categorical column."""

    column: str
    values: tuple[str | float, ...]
    severity: Severity = "hard"


@dataclass(frozen=True)
class Unique:
    """Columns that together identify one row."""

    columns: tuple[str, ...]
    severity: Severity = "hard"


@dataclass(frozen=True)
class Rule:
    """A declared boolean expression over the row; `problem` says why it cannot be evaluated at all."""

    name: str
    expression: str
    columns: tuple[str, ...]
    severity: Severity = "hard"
    mostly: float = 1.0
    problem: str | None = None

    @property
    def helper(self) -> str:
        """Name of the boolean column the rule is evaluated into before GX checks it."""
        return f"__rule__{self.name}"


@dataclass(frozen=True)
class TableSpec:
    """Declarative rules of one source; turned into a GX suite by `running.build_expectations`."""

    name: str
    types: Mapping[str, ColumnType]
    required: tuple[str, ...] = ()
    max_null_share: Mapping[str, float] = field(default_factory=dict)
    never_empty: tuple[str, ...] = ()
    ranges: tuple[Range, ...] = ()
    domains: tuple[Domain, ...] = ()
    unique: tuple[Unique, ...] = ()
    rules: tuple[Rule, ...] = ()
    time: str | None = None
    time_zone: str = "UTC"

    @property
    def columns(self) -> tuple[str, ...]:
        """The delivered columns, in declared order."""
        return tuple(self.types)


def table_spec(name: str, source: SourceSpec) -> TableSpec:
    """The rules of source `name`, generated from its declared schema and extra expectations."""
    schema = source.schema_
    required = tuple(c for c, col in schema.items() if not col.nullable or c in source.keys)
    nullable = [c for c in schema if c not in required]
    bounds = {c: schema[c].max_null_share for c in nullable}
    return TableSpec(
        name=name,
        types={c: col.type for c, col in schema.items()},
        required=required,
        max_null_share={
            c: DEFAULT_MAX_NULL_SHARE if b is None else b for c, b in bounds.items() if b is None or b < 1
        },
        never_empty=tuple(nullable),
        ranges=tuple(
            r
            for c, col in schema.items()
            for r in _ranges(c, col.min, col.max, col.range_severity, col.range_mostly)
        ),
        domains=tuple(
            Domain(c, _domain(col.domain, col.type)) for c, col in schema.items() if col.domain is not None
        ),
        unique=tuple(Unique(tuple(columns)) for columns in source.unique),
        rules=tuple(_rule(e.name, e.rule, e.severity, e.mostly, list(schema)) for e in source.expectations),
        time=source.time,
        time_zone=source.time_zone,
    )


def _ranges(
    column: str, low: float | None, high: float | None, severity: Severity, mostly: float
) -> list[Range]:
    """The declared bound; with mostly < 1 a soft rule for any outlier and a hard one for too many."""
    if low is None and high is None:
        return []
    if mostly >= 1 or severity == "soft":
        return [Range(column, low, high, severity)]
    return [Range(column, low, high, "soft"), Range(column, low, high, "hard", mostly)]


def _domain(values: list[str], kind: ColumnType) -> tuple[str | float, ...]:
    """Domain values as the column holds them: numbers for a numeric column (it is checked as float64)."""
    if kind not in NUMERIC_TYPES:
        return tuple(values)
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        return tuple(values)


def _rule(name: str, expression: str, severity: Severity, mostly: float, schema: list[str]) -> Rule:
    """Parse the rule once; an unparsable rule or one naming an undeclared column is kept as a problem."""
    try:
        columns = tuple(dict.fromkeys(pl.sql_expr(expression).meta.root_names()))
    except (pl.exceptions.PolarsError, ValueError) as exc:
        problem = f"is not a polars SQL expression ({str(exc).splitlines()[0]})"
        return Rule(name, expression, (), severity, mostly, problem)
    unknown = [c for c in columns if c not in schema]
    problem = None
    if not columns:
        problem = "names no column, so it says nothing about the rows"
    elif unknown:
        problem = f"names {', '.join(map(repr, unknown))}, not a column of the schema ({', '.join(schema)})"
    return Rule(name, expression, columns, severity, mostly, problem)
