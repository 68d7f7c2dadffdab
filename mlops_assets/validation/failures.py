"""Failed GX results turned into report entries: one line per cause, with the offending rows.

A check that depends on a broken column (missing, or not of its declared type) is a
consequence of that failure: it is counted there instead of being listed again. Likewise
an empty table does not also report every column as entirely null.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd
from great_expectations.core.expectation_validation_result import ExpectationValidationResult

from mlops_assets.validation.frames import RuleProblem
from mlops_assets.validation.reporting import FailedExpectation, fmt
from mlops_assets.validation.running import SAMPLE_ROWS
from mlops_assets.validation.specs import NUMERIC_TYPES, TIME_TYPES

Result = ExpectationValidationResult
DEPENDENT_KINDS = frozenset({"value"})  # checks of the values, meaningless on a mistyped column


def collect_failures(
    results: list[Result], frame: pd.DataFrame, problems: list[RuleProblem]
) -> list[FailedExpectation]:
    """Report entries for the failed results and the rules that could not run, hard first.

    `frame` is the batch as given (positional index), so sample rows show the delivered values.
    """
    broken = _broken_columns(results)
    failed_kinds = {_kind(r) for r in results if not r.success}
    empty = {c for r in results if _kind(r) == "empty" and not r.success for c in _columns(r)}
    consequential = {id(r) for r in results if _is_consequence(r, broken, empty, "rows" in failed_kinds)}
    skipped = Counter(c for r in results if id(r) in consequential for c in _columns(r) if c in broken)
    skipped.update(c for p in problems for c in p.because if c in broken)
    failures = [_rule_problem(p) for p in problems if not p.because]
    for result in results:
        if not result.success and id(result) not in consequential:
            failures.extend(_describe(result, frame, skipped))
    return sorted(failures, key=lambda f: (f.severity != "hard", f.column or "", f.expectation))


def _is_consequence(result: Result, broken: set[str], empty: set[str], no_rows: bool) -> bool:
    """Whether a failure only repeats a structural one (broken column, empty table or column)."""
    if result.success:
        return False
    kind, columns = _kind(result), set(_columns(result))
    if (_error(result) is not None or kind in DEPENDENT_KINDS) and columns & broken:
        return True
    return (kind == "empty" and no_rows) or (kind == "null_share" and bool(columns & empty))


def _broken_columns(results: list[Result]) -> set[str]:
    """Columns that are missing or not of their declared type."""
    broken: set[str] = set()
    for result in results:
        if result.success or _error(result) is not None:
            continue
        if _kind(result) == "columns":
            broken.update(_mismatched(result).get("missing", []))
        elif _kind(result) == "type":
            broken.update(_columns(result))
    return broken


def _rule_problem(problem: RuleProblem) -> FailedExpectation:
    rule = problem.rule
    return FailedExpectation(
        expectation="row_rule_is_evaluable",
        column=None,
        severity="hard",
        description=f"rule {rule.name} ({rule.expression}) cannot be evaluated: {problem.reason}",
        unexpected_count=None,
    )


def _describe(result: Result, frame: pd.DataFrame, skipped: Counter[str]) -> list[FailedExpectation]:
    """Dispatch on the kind of expectation that failed."""
    kind = _kind(result)
    error = _error(result)
    if error is not None:
        return [_failure(result, f"{_label(result)}: could not be evaluated ({error})", None)]
    if kind == "columns":
        return _column_set_failures(result, skipped)
    if kind == "type":
        return [_type_failure(result, frame, skipped)]
    if kind in ("rows", "empty"):
        observed = result.result.get("observed_value")
        detail = f": observed {observed} rows" if kind == "rows" else ""
        return [_failure(result, f"{_label(result)}{detail}", None)]
    return [_map_failure(result, frame)]


def _column_set_failures(result: Result, skipped: Counter[str]) -> list[FailedExpectation]:
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


def _type_failure(result: Result, frame: pd.DataFrame, skipped: Counter[str]) -> FailedExpectation:
    """Name the column, its declared type, what it holds instead, and point at offending values."""
    column = _columns(result)[0]
    declared = str(result.expectation_config.meta.get("declared"))
    series = frame[column]
    wrong = _wrong_values(series, declared)
    count = int(wrong.sum())
    description = f"{column} is declared {declared} but "
    if series.dtype == object and bool(series.dropna().map(type).eq(str).all()) and series.notna().any():
        description += "the whole column is text"
    else:
        description += f"has dtype {series.dtype}"
    if count:
        noun = {"int": "numbers", "float": "numbers", "date": "dates", "datetime": "datetimes"}.get(
            declared, declared
        )
        description += f": {count} of {len(series)} values are not {noun}"
        description += _examples(series[wrong].head(SAMPLE_ROWS).tolist())
    else:
        wrong = series.notna()
        if declared in NUMERIC_TYPES | TIME_TYPES and series.dtype == object:
            description += f" (its values are {declared} values stored as text)"
    positions = list(series.index[wrong][:SAMPLE_ROWS])
    return _failure(
        result,
        description + _skipped(skipped, column),
        count or None,
        column,
        _sample_rows(frame, positions, [column]),
    )


def _wrong_values(series: pd.Series, declared: str) -> pd.Series:
    """Values that could not be read as the declared type at all (only for text/object columns)."""
    present = series.notna()
    if series.dtype != object:
        return present & False
    if declared in NUMERIC_TYPES:
        return present & pd.to_numeric(series, errors="coerce").isna()
    if declared in TIME_TYPES:
        parsed = pd.to_datetime(series.astype(str), errors="coerce", utc=True, format="mixed")
        return present & parsed.isna()
    expected = {"str": str, "bool": bool}.get(declared, object)
    return present & ~series.map(lambda v: isinstance(v, expected))


def _map_failure(result: Result, frame: pd.DataFrame) -> FailedExpectation:
    """Row-level failure: '<rule>: k of n rows (p%) <verb> (e.g. ...)' plus sample rows."""
    details, config = result.result, result.expectation_config
    unexpected = int(details.get("unexpected_count") or 0)
    total = int(details.get("element_count") or 0) - int(details.get("missing_count") or 0)
    verb = config.meta.get("verb", "unexpected")
    positions = [int(i) for i in details.get("partial_unexpected_index_list") or []][:SAMPLE_ROWS]
    columns = _columns(result)
    shown = config.meta.get("column", columns[0] if len(columns) == 1 else None)
    if "columns" in config.meta:
        values = frame[shown].iloc[positions].tolist() if shown in frame.columns else []
    else:
        values = details.get("partial_unexpected_list") or []
    examples = "" if verb in ("null", "duplicated", "break it") else _examples(values)
    description = (
        f"{_label(result)}: {unexpected} of {total} rows ({_percent(unexpected, total)}) {verb}{examples}"
    )
    return _failure(result, description, unexpected, shown, _sample_rows(frame, positions, columns))


def _failure(
    result: Result,
    description: str,
    unexpected_count: int | None,
    column: str | None = None,
    sample_rows: list[dict] | None = None,
) -> FailedExpectation:
    """Build a report entry; severity comes from the declaration via expectation meta."""
    config = result.expectation_config
    if column is None and "column" not in config.meta and len(_columns(result)) == 1:
        column = _columns(result)[0]
    return FailedExpectation(
        expectation=config.type,
        column=column,
        severity=str(config.meta.get("severity", "hard")),
        description=description,
        unexpected_count=unexpected_count,
        sample_rows=sample_rows or [],
    )


def _kind(result: Result) -> str:
    return str(result.expectation_config.meta.get("kind", "value"))


def _columns(result: Result) -> list[str]:
    """Columns an expectation depends on: the declared ones for a helper, else its own (none: table-level)."""
    config = result.expectation_config
    if "columns" in config.meta:
        return list(config.meta["columns"])
    if "column" in config.kwargs:
        return [config.kwargs["column"]]
    return list(config.kwargs.get("column_list") or [])


def _label(result: Result) -> str:
    """Human-readable rule text stored in meta at build time."""
    return str(result.expectation_config.meta.get("label", result.expectation_config.type))


def _mismatched(result: Result) -> dict[str, list[str]]:
    """Missing/unexpected columns reported by the column-set expectation."""
    return (result.result.get("details") or {}).get("mismatched") or {}


def _error(result: Result) -> str | None:
    """Message of the exception GX caught while evaluating, if any."""
    info = result.exception_info or {}
    if "raised_exception" in info:
        return info["exception_message"] if info["raised_exception"] else None
    messages = [v["exception_message"] for v in info.values() if v.get("raised_exception")]
    return "; ".join(dict.fromkeys(messages)) or None


def _skipped(skipped: Counter[str], column: str) -> str:
    """Suffix telling how many dependent checks were not evaluated on a broken column."""
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
    scalars = [v for v in values if v is not None and not isinstance(v, dict | list)]
    unique = list(dict.fromkeys(fmt(v) for v in scalars))
    return f" (e.g. {', '.join(unique)})" if unique else ""


def _percent(part: int, total: int) -> str:
    """Share as text; tiny non-zero shares are not rounded to 0."""
    if total <= 0:
        return "n/a"
    share = 100 * part / total
    return "<0.01%" if 0 < share < 0.01 else f"{share:.2f}%"
