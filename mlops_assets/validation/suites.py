"""Validate one delivered batch of a project source against the rules its declaration implies.

The rules are generated from the source's `schema`, `unique` and `expectations` (see
`specs`), turned into a GX suite once per (source, period) and run in two passes. A *hard*
failure means the batch must not be used; a *soft* failure is a warning that lets it through.
"""

from __future__ import annotations

import threading
from datetime import datetime

import pandas as pd
import polars as pl

from mlops_assets.project.spec import SourceSpec
from mlops_assets.validation import running
from mlops_assets.validation.failures import collect_failures
from mlops_assets.validation.frames import add_helpers, as_pandas, normalise
from mlops_assets.validation.reporting import FailedExpectation, ValidationReport, unreadable_report
from mlops_assets.validation.specs import TableSpec, table_spec

__all__ = ["FailedExpectation", "ValidationReport", "table_spec", "unreadable_report", "validate_batch"]

_LOCK = threading.Lock()
_SPECS: dict[tuple[str, str], TableSpec] = {}


def validate_batch(
    name: str,
    spec: SourceSpec,
    df: pl.DataFrame | pd.DataFrame,
    batch_name: str,
    period: tuple[datetime, datetime] | None = None,
) -> ValidationReport:
    """Validate a batch of source `name`; a claimed `period` [start, end) also checks every row's time."""
    if period is not None and spec.time is None:
        raise ValueError(f"source {name!r} has no `time` column, so a batch of it cannot claim a period")
    if period is not None and not period[0] < period[1]:
        raise ValueError(
            f"period {period[0].isoformat()} .. {period[1].isoformat()} is empty; start must precede end"
        )
    fingerprint = spec.model_dump_json(by_alias=True)
    rules = _table_spec(name, spec, fingerprint)
    frame = as_pandas(df)
    checked, problems = add_helpers(normalise(frame, rules), rules, period)
    evaluated, failed = running.run(name, checked, running.suite_for(rules, fingerprint, period))
    return ValidationReport(
        table=name,
        batch_name=batch_name,
        row_count=len(frame),
        evaluated=evaluated,
        failures=collect_failures(failed, frame, problems),
    )


def _table_spec(name: str, spec: SourceSpec, fingerprint: str) -> TableSpec:
    """The rules of a declaration, generated once per process."""
    with _LOCK:
        if (name, fingerprint) not in _SPECS:
            _SPECS[(name, fingerprint)] = table_spec(name, spec)
        return _SPECS[(name, fingerprint)]
