"""Load one delivery (landed file or embedded month), validate it, and decide its fate.

No Dagster here: the asset only wires these functions and reports what they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from mlops_assets.lake import BatchReadError, Lake, read_table_file

if TYPE_CHECKING:
    from mlops_assets.validation.suites import ValidationReport


@dataclass(frozen=True)
class Batch:
    """A delivered batch and its validation verdict; `frame` is None when the file was unreadable."""

    table: str
    month: str | None
    source: str
    source_file: Path | None
    frame: pl.DataFrame | None
    report: ValidationReport


def _unreadable(table: str, batch_name: str, error: BatchReadError) -> ValidationReport:
    from mlops_assets.validation.suites import FailedExpectation, ValidationReport

    failure = FailedExpectation(
        expectation="file_is_readable_table", column=None, severity="hard",
        description=f"{error.path.name} is not a readable table: {error.reason}",
        unexpected_count=None, sample_rows=[],
    )
    return ValidationReport(
        table=table, batch_name=batch_name, row_count=0, evaluated=1, failures=[failure]
    )


def load_month(lake: Lake, table: str, month: str) -> Batch:
    """A landed file for the month wins over the embedded upstream data; either is validated."""
    from mlops_assets.validation.suites import validate_batch  # GX takes seconds to import

    landed = lake.landed_file(table, month)
    source = str(landed) if landed else f"embedded data/{table}.parquet"
    batch_name = f"{table} {month}"
    expected = tuple(int(p) for p in month.split("-"))
    try:
        frame = read_table_file(landed) if landed else lake.embedded_month(table, month)
    except BatchReadError as exc:
        return Batch(table, month, source, landed, None, _unreadable(table, batch_name, exc))
    report = validate_batch(table, frame.to_pandas(), batch_name, expected_month=expected)
    return Batch(table, month, source, landed, frame, report)


def load_reference(lake: Lake, table: str) -> Batch:
    from mlops_assets.validation.suites import validate_batch

    frame = lake.embedded(table)
    report = validate_batch(table, frame.to_pandas(), table)
    return Batch(table, None, f"embedded data/{table}.parquet", None, frame, report)


def quarantine(lake: Lake, batch: Batch) -> Path:
    """Keep the rejected batch (the original file when there is one) with its report."""
    name = batch.month or "reference"
    return lake.quarantine(
        batch.table, name, batch.report.to_dict(), batch.report.to_markdown(),
        df=batch.frame, source_file=batch.source_file,
    )


def rejection_message(rejected: list[tuple[Batch, Path]]) -> str:
    """One actionable line per rejected batch: which batch, which file, why, where it is kept."""
    lines = []
    for batch, folder in rejected:
        reasons = "; ".join(f.description for f in batch.report.hard_failures)
        lines.append(f"{batch.report.batch_name} from {batch.source} rejected: {reasons}. "
                     f"Kept in {folder}; the last good data is unchanged.")
    return "\n".join(lines)
