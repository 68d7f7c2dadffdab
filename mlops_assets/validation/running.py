"""The GX side: one in-memory context per process, a suite per (source, period), a two-pass run.

GX 1.x cannot host several contexts in one process cheaply, and building one per batch would
dominate the runtime, so `_context()` is shared; batch definitions are registered once per
source and suites built once per (source, declaration, period).
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

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
from great_expectations.expectations.expectation import Expectation

from mlops_assets.validation.frames import DTYPES, PERIOD_HELPER
from mlops_assets.validation.reporting import fmt
from mlops_assets.validation.specs import Range, Severity, TableSpec, Unique

SAMPLE_ROWS = 5
RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS}
DATASOURCE = "deliveries"
ANY_VALUE = 1e-12  # `mostly` that fails only when no value at all is present

Period = tuple[datetime, datetime]

_LOCK = threading.Lock()
_CONTEXT: EphemeralDataContext | None = None
_BATCH_DEFINITIONS: dict[str, BatchDefinition] = {}
_SUITES: dict[tuple[str, str, Period | None], gx.ExpectationSuite] = {}


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
            _CONTEXT.data_sources.add_pandas(DATASOURCE)
        return _CONTEXT


def _batch_definition(name: str) -> BatchDefinition:
    """Whole-dataframe batch definition of source `name`, registered once per process."""
    context = _context()
    with _LOCK:
        if name not in _BATCH_DEFINITIONS:
            asset = context.data_sources.get(DATASOURCE).add_dataframe_asset(name=name)
            _BATCH_DEFINITIONS[name] = asset.add_batch_definition_whole_dataframe(f"{name}-whole")
        return _BATCH_DEFINITIONS[name]


def suite_for(spec: TableSpec, fingerprint: str, period: Period | None) -> gx.ExpectationSuite:
    """The suite of a source declaration (plus the period rule when a period is claimed), built once."""
    key = (spec.name, fingerprint, period)
    with _LOCK:
        if key not in _SUITES:
            suffix = "" if period is None else f" {period_label(period)}"
            _SUITES[key] = gx.ExpectationSuite(
                name=f"{spec.name}{suffix}", expectations=build_expectations(spec, period)
            )
        return _SUITES[key]


def run(
    name: str, frame: pd.DataFrame, suite: gx.ExpectationSuite
) -> tuple[int, list[ExpectationValidationResult]]:
    """Verdicts in a cheap pass, then details only for the expectations that failed.

    SUMMARY results cost about twice a BOOLEAN_ONLY run, mostly spent on checks that pass,
    and real batches rarely fail. Returns the number evaluated and the detailed failures.
    """
    batch = _batch_definition(name).get_batch(batch_parameters={"dataframe": frame})
    verdicts = batch.validate(suite, result_format="BOOLEAN_ONLY").results
    failed = [result.expectation_config for result in verdicts if not result.success]
    if not failed:
        return len(verdicts), []
    details = gx.ExpectationSuite(name=f"{suite.name}-failed", expectations=failed)
    return len(verdicts), list(batch.validate(details, result_format=RESULT_FORMAT).results)


def period_label(period: Period) -> str:
    """[2013-03-01, 2013-04-01): dates when both bounds are midnights, ISO datetimes otherwise."""
    midnight = all(m.hour == m.minute == m.second == m.microsecond == 0 for m in period)
    start, end = (m.date().isoformat() if midnight else m.isoformat() for m in period)
    return f"[{start}, {end})"


def meta(severity: Severity, label: str, verb: str = "", kind: str = "value", **extra: Any) -> dict[str, Any]:
    """Expectation meta read back by the report: severity, phrasing, and what the rule depends on."""
    return {"severity": severity, "label": label, "verb": verb, "kind": kind, **extra}


def build_expectations(spec: TableSpec, period: Period | None) -> list[Expectation]:
    """All expectations of a spec, in reading order."""
    expectations = _structure(spec, period) + _nulls(spec) + _values(spec)
    if period is not None and spec.time is not None:
        label = f"batch claims {period_label(period)} but has {spec.time} outside it"
        expectations.append(
            gx.expectations.ExpectColumnValuesToBeInSet(
                column=PERIOD_HELPER,
                value_set=[True],
                meta=meta("hard", label, "outside the period", column=spec.time, columns=[spec.time]),
            )
        )
    return expectations


def _structure(spec: TableSpec, period: Period | None) -> list[Expectation]:
    """Exact column set (helpers included, they are always there), at least one row, declared dtypes."""
    helpers = [rule.helper for rule in spec.rules] + [PERIOD_HELPER] * (period is not None)
    expectations: list[Expectation] = [
        gx.expectations.ExpectTableColumnsToMatchSet(
            column_set=[*spec.columns, *helpers],
            exact_match=True,
            meta=meta("hard", "column set", kind="columns"),
        ),
        gx.expectations.ExpectTableRowCountToBeBetween(
            min_value=1, meta=meta("hard", "row count > 0", kind="rows")
        ),
    ]
    expectations += [
        gx.expectations.ExpectColumnTypeToBe(
            column=column,
            type_=DTYPES[kind],
            meta=meta("hard", f"{column} is {kind}", kind="type", declared=kind),
        )
        for column, kind in spec.types.items()
    ]
    return expectations


def _nulls(spec: TableSpec) -> list[Expectation]:
    """Required columns complete (hard); others warn above their bound and fail when entirely null."""
    expectations: list[Expectation] = [
        gx.expectations.ExpectColumnValuesToNotBeNull(
            column=column, meta=meta("hard", f"{column} non-null", "null", kind="null")
        )
        for column in spec.required
    ]
    for column, bound in spec.max_null_share.items():
        expectations.append(
            gx.expectations.ExpectColumnValuesToNotBeNull(
                column=column,
                mostly=round(1 - bound, 6),
                meta=meta("soft", f"{column} null share at most {bound:.0%}", "null", kind="null_share"),
            )
        )
    expectations += [
        gx.expectations.ExpectColumnValuesToNotBeNull(  # shares the null-share rule's metric: nearly free
            column=column,
            mostly=ANY_VALUE,
            meta=meta("hard", f"column {column} is entirely null", kind="empty"),
        )
        for column in spec.never_empty
    ]
    return expectations


def _values(spec: TableSpec) -> list[Expectation]:
    """Plausible ranges, closed domains, uniqueness and the declared row rules."""
    expectations = [_range(rule) for rule in spec.ranges]
    expectations += [
        gx.expectations.ExpectColumnValuesToBeInSet(
            column=domain.column,
            value_set=list(domain.values),
            meta=meta(
                domain.severity,
                f"{domain.column} in {{{', '.join(map(str, domain.values))}}}",
                "outside the set",
            ),
        )
        for domain in spec.domains
    ]
    expectations += [_unique(rule) for rule in spec.unique]
    for rule in spec.rules:
        label = f"rule {rule.name} ({rule.expression})"
        if rule.mostly < 1:
            label += f" for at least {rule.mostly:.0%} of rows"
        expectations.append(
            gx.expectations.ExpectColumnValuesToBeInSet(
                column=rule.helper,
                value_set=[True],
                mostly=rule.mostly,
                meta=meta(
                    rule.severity,
                    label,
                    "break it",
                    column=rule.columns[0] if len(rule.columns) == 1 else None,
                    columns=list(rule.columns),
                ),
            )
        )
    return expectations


def _range(rule: Range) -> Expectation:
    low = "-inf" if rule.min_value is None else fmt(rule.min_value)
    high = "inf" if rule.max_value is None else fmt(rule.max_value)
    label = f"{rule.column} within [{low}, {high}]"
    if rule.mostly < 1:
        label += f" for at least {rule.mostly:.0%} of rows"
    return gx.expectations.ExpectColumnValuesToBeBetween(
        column=rule.column,
        min_value=rule.min_value,
        max_value=rule.max_value,
        mostly=rule.mostly,
        meta=meta(rule.severity, label, "outside"),
    )


def _unique(rule: Unique) -> Expectation:
    """Single-column or compound uniqueness."""
    if len(rule.columns) == 1:
        (column,) = rule.columns
        return gx.expectations.ExpectColumnValuesToBeUnique(
            column=column, meta=meta(rule.severity, f"{column} unique", "duplicated")
        )
    return gx.expectations.ExpectCompoundColumnsToBeUnique(
        column_list=list(rule.columns),
        meta=meta(rule.severity, f"({', '.join(rule.columns)}) unique", "duplicated"),
    )
