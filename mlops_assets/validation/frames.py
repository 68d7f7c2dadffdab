"""The frame GX sees: normalised dtypes plus one boolean column per row rule.

GX only vectorises `between` for numpy int/float columns, so numerics become float64;
datetimes become naive UTC so the period and range checks compare like with like. Rules
and the period claim are evaluated here (polars SQL, pandas) into helper columns that GX
then expects to be true, which keeps their failures in the same report with sample rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from numbers import Number
from zoneinfo import ZoneInfo

import pandas as pd
import polars as pl

from mlops_assets.validation.specs import NUMERIC_TYPES, TIME_TYPES, Rule, TableSpec

PERIOD_HELPER = "__period__"
DTYPES: dict[str, str] = {  # the dtype a well-typed column has after `normalise`, checked by GX
    "int": "float64",
    "float": "float64",
    "str": "object",
    "bool": "boolean",
    "datetime": "datetime64",
    "date": "datetime64",
}


@dataclass(frozen=True)
class RuleProblem:
    """A rule that could not be evaluated on this batch; `because` names the broken columns it needs."""

    rule: Rule
    reason: str
    because: tuple[str, ...] = ()


def as_pandas(df: pl.DataFrame | pd.DataFrame) -> pd.DataFrame:
    """The batch as given, with a positional index (sample rows show the delivered values)."""
    frame = df.to_pandas() if isinstance(df, pl.DataFrame) else df
    return frame.reset_index(drop=True)


def normalise(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """float64 numerics and naive-UTC datetimes; a column of the wrong kind is left alone to fail."""
    normal = frame.copy(deep=False)
    for column, kind in spec.types.items():
        if column in normal.columns:
            normal[column] = _normal_column(normal[column], kind, spec.time_zone)
    return normal


def _normal_column(series: pd.Series, kind: str, time_zone: str) -> pd.Series:
    """One column in the dtype GX checks (`DTYPES`); an all-null column takes the declared one."""
    empty = bool(series.isna().all())
    if kind in NUMERIC_TYPES:
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        return series.astype("float64") if numeric or empty or _all(series, Number) else series
    if kind == "str" and (isinstance(series.dtype, pd.StringDtype | pd.CategoricalDtype) or empty):
        return series.astype(object)
    if kind == "bool" and (pd.api.types.is_bool_dtype(series) or empty or _all(series, bool)):
        return series.astype("boolean")
    if kind in TIME_TYPES:
        return _normal_time(series, kind, time_zone, empty)
    return series


def _all(series: pd.Series, kind: type) -> bool:
    """Whether an object column holds only values of one Python type (besides nulls; a bool is no number)."""
    if series.dtype != object:
        return False
    return all(isinstance(v, kind) and (kind is bool or not isinstance(v, bool)) for v in series.dropna())


def _normal_time(series: pd.Series, kind: str, time_zone: str, empty: bool) -> pd.Series:
    """Naive UTC datetime64; Python date/datetime objects are converted, text is not."""
    if empty:
        return pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns]")
    if series.dtype == object:
        if not _all(series, date):
            return series
        series = pd.to_datetime(
            series, utc=any(getattr(v, "tzinfo", None) is not None for v in series.dropna())
        )
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC").dt.tz_localize(None) if kind == "datetime" else series
    if pd.api.types.is_datetime64_dtype(series) and kind == "datetime" and time_zone != "UTC":
        local = series.dt.tz_localize(time_zone, ambiguous="NaT", nonexistent="NaT")
        return local.dt.tz_convert("UTC").dt.tz_localize(None)
    return series


def dtype_fits(series: pd.Series, kind: str) -> bool:
    """Python-side twin of the GX type rule, used to tell a broken input from a broken rule."""
    if kind in TIME_TYPES:
        return pd.api.types.is_datetime64_dtype(series) and not isinstance(series.dtype, pd.DatetimeTZDtype)
    return str(series.dtype) == DTYPES[kind]


def add_helpers(
    normal: pd.DataFrame, spec: TableSpec, period: tuple[datetime, datetime] | None
) -> tuple[pd.DataFrame, list[RuleProblem]]:
    """Evaluate every rule (and the period claim) into helper columns; collect rules that cannot run."""
    broken = {c for c in spec.columns if c not in normal.columns or not dtype_fits(normal[c], spec.types[c])}
    helpers: dict[str, pd.Series] = {}
    problems: list[RuleProblem] = []
    for rule in spec.rules:
        values, problem = _evaluate(rule, normal, spec, broken)
        helpers[rule.helper] = values
        if problem is not None:
            problems.append(problem)
    if period is not None:
        helpers[PERIOD_HELPER] = _in_period(normal, spec, period, broken)
    return normal.assign(**helpers), problems


def _nothing(frame: pd.DataFrame) -> pd.Series:
    return pd.Series([None] * len(frame), index=frame.index, dtype=object)


def _evaluate(
    rule: Rule, normal: pd.DataFrame, spec: TableSpec, broken: set[str]
) -> tuple[pd.Series, RuleProblem | None]:
    """True/False/None per row; a rule that cannot run yields all None and a problem."""
    if rule.problem is not None:
        return _nothing(normal), RuleProblem(rule, rule.problem)
    needs = tuple(c for c in rule.columns if c in broken)
    if needs:
        return _nothing(normal), RuleProblem(rule, "its columns are missing or mistyped", needs)
    try:
        frame = pl.from_pandas(normal[list(rule.columns)]).with_columns(
            pl.col(c).cast(pl.Date) for c in rule.columns if spec.types[c] == "date"
        )
        result = frame.select(pl.sql_expr(rule.expression).alias("ok")).to_series()
    except (pl.exceptions.PolarsError, ValueError, TypeError) as exc:
        return _nothing(normal), RuleProblem(rule, str(exc).splitlines()[0])
    if result.dtype != pl.Boolean or len(result) != len(normal):
        return _nothing(normal), RuleProblem(
            rule, f"gives {len(result)} {result.dtype} values, not a boolean per row"
        )
    return pd.Series(result.to_list(), index=normal.index, dtype=object), None


def _in_period(
    normal: pd.DataFrame, spec: TableSpec, period: tuple[datetime, datetime], broken: set[str]
) -> pd.Series:
    """Whether each row's time lies in [start, end); all None when the time column is broken.

    Datetimes are compared in UTC; a date is the day on the source's calendar (`time_zone`).
    """
    time = spec.time
    if time is None or time in broken:
        return _nothing(normal)
    zone = spec.time_zone if spec.types[time] == "date" else "UTC"
    start, end = (pd.Timestamp(naive_in(moment, zone)) for moment in period)
    values = normal[time]
    inside = (values >= start) & (values < end)
    return inside.astype(object).where(values.notna(), None)


def naive_in(moment: datetime, zone: str) -> datetime:
    """A period bound as a naive wall-clock time in `zone` (a naive bound is taken to be UTC)."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return aware.astimezone(ZoneInfo(zone)).replace(tzinfo=None)
