"""The outcome of validating one batch, as data (`to_dict`) and as text for a UI (`to_markdown`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, time
from typing import Any


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


def single_failure_report(table: str, batch_name: str, expectation: str, description: str) -> ValidationReport:
    """A batch that cannot be validated at all: one hard failure, nothing else evaluated."""
    failure = FailedExpectation(expectation=expectation, column=None, severity="hard", description=description,
                                unexpected_count=None)
    return ValidationReport(table=table, batch_name=batch_name, row_count=0, evaluated=1, failures=[failure])


def unreadable_report(table: str, batch_name: str, file_name: str, reason: str) -> ValidationReport:
    """The report of a file that is not a table at all."""
    return single_failure_report(table, batch_name, "file_is_readable_table",
                                 f"{file_name} is not a readable table: {reason}")


def fmt(value: Any) -> str:
    """Compact rendering: integral floats without '.0', text quoted, times in ISO (naive midnight: a date)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, datetime):
        midnight = value.tzinfo is None and value.time() == time(0)
        return value.date().isoformat() if midnight else value.isoformat()
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
    text = value if isinstance(value, str) else fmt(value)
    return text.replace("|", "\\|")
