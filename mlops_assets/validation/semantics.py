"""Semantic checks of a valid batch against earlier periods: what is wrong but passes every rule.

What TFX's ExampleValidator does between spans: a timestamp that disagrees with its own calendar
columns, a period with far fewer rows or days than usual, and a distribution that moved further
than earlier periods ever moved between themselves. A finding does not reject the batch; it holds
the challenger trained on it for a person to approve.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from mlops_assets.project.spec import SemanticChecks, SourceSpec

EPSILON = 1e-4
TOP_CATEGORIES = 50


@dataclass(frozen=True)
class ColumnShift:
    """A watched column: its PSI against the reference, what earlier periods showed, the bar."""

    column: str
    psi: float
    calibration: float
    threshold: float

    @property
    def shifted(self) -> bool:
        return self.psi > self.threshold


@dataclass(frozen=True)
class SemanticReport:
    """Findings hold the batch's challengers for approval; notes say what could not be checked."""

    batch_name: str
    earlier_periods: int
    findings: list[str]
    shifts: list[ColumnShift] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return bool(self.findings)

    def to_dict(self) -> dict:
        return {"batch_name": self.batch_name, "held": self.held, "earlier_periods": self.earlier_periods,
                "findings": self.findings, "notes": self.notes, "shifts": [asdict(s) for s in self.shifts]}

    def to_markdown(self) -> str:
        verdict = "HELD for approval" if self.held else "consistent with earlier periods"
        lines = [f"### {self.batch_name}: {verdict}", f"Compared with {self.earlier_periods} earlier period(s)."]
        lines += [f"- **HOLD**: {f}" for f in self.findings] + [f"- note: {n}" for n in self.notes]
        if self.shifts:
            lines += ["", "| column | PSI | largest PSI between earlier periods | bar | shifted |",
                      "|---|---|---|---|---|"]
            lines += [f"| {s.column} | {s.psi:.3f} | {s.calibration:.3f} | {s.threshold:.3f} | "
                      f"{'yes' if s.shifted else 'no'} |" for s in self.shifts]
        return "\n".join(lines)


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = np.clip(expected, EPSILON, None), np.clip(actual, EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


class Bins:
    """The reference's bins for one column: quantile edges (numbers) or its common categories (text);
    missing values always get a bin of their own."""

    def __init__(self, reference: pl.Series, bins: int) -> None:
        self.text = reference.dtype == pl.String
        if self.text:
            self.categories = reference.drop_nulls().value_counts(sort=True).head(TOP_CATEGORIES)[
                reference.name].to_list()
        else:
            known = reference.drop_nulls().cast(pl.Float64).drop_nans().to_numpy()
            quantiles = np.linspace(0, 1, bins + 1)[1:-1]
            self.edges = np.unique(np.quantile(known, quantiles)) if known.size else np.array([])

    def shares(self, values: pl.Series) -> np.ndarray:
        """Share of `values` in each bin (the last bin: missing)."""
        if values.len() == 0:
            return np.zeros(len(self.categories) + 2 if self.text else self.edges.size + 2)
        if self.text:
            index = {c: i for i, c in enumerate(self.categories)}
            counts = values.cast(pl.String).value_counts()
            result = np.zeros(len(self.categories) + 2)
            for value, count in zip(counts[values.name].to_list(), counts["count"].to_list(), strict=True):
                result[-1 if value is None else index.get(value, len(self.categories))] += count
            return result / values.len()
        numbers = values.cast(pl.Float64).fill_nan(None)
        known = numbers.drop_nulls().to_numpy()
        counts = np.bincount(np.searchsorted(self.edges, known, side="right"), minlength=self.edges.size + 1)
        return np.append(counts, numbers.null_count()) / values.len()


def column_psi(reference: pl.Series, batch: pl.Series, bins: int = 10) -> float:
    """How far `batch` moved from `reference`: numbers by the reference's quantile bins, text by category."""
    binning = Bins(reference, bins)
    return _psi(binning.shares(reference), binning.shares(batch))


def watched_columns(spec: SourceSpec) -> list[str]:
    """The declared columns, or every numeric/text column that is no key, time or calendar column."""
    checks = spec.semantics
    if checks.shift.columns is not None:
        return list(checks.shift.columns)
    skip = {*spec.keys, *(c for u in spec.unique for c in u), *checks.calendar.values(), spec.time}
    return [name for name, column in spec.schema_.items()
            if column.type in ("int", "float", "str") and name not in skip]


def shift_findings(spec: SourceSpec, batch: pl.DataFrame, earlier: list[pl.DataFrame]) -> list[ColumnShift]:
    """Each watched column's PSI against the earlier periods, and the largest PSI of one of them against all."""
    shift, columns = spec.semantics.shift, watched_columns(spec)
    reference = pl.concat([e.select(columns) for e in earlier], how="vertical_relaxed")
    result = []
    for column in columns:
        binning = Bins(reference[column], shift.bins)
        expected = binning.shares(reference[column])
        calibration = max(_psi(expected, binning.shares(e[column])) for e in earlier)
        result.append(ColumnShift(column, _psi(expected, binning.shares(batch[column])), calibration,
                                  max(shift.floor, shift.margin * calibration)))
    return result


def _local_time(spec: SourceSpec, batch: pl.DataFrame) -> pl.Expr:
    """The time column on the source's clock (a date column is on it already)."""
    column = pl.col(str(spec.time))
    return column if batch.schema[str(spec.time)] == pl.Date else column.dt.convert_time_zone(spec.time_zone)


def calendar_mismatch(spec: SourceSpec, batch: pl.DataFrame) -> tuple[float, dict]:
    """Share of rows whose time column, on the source's clock, disagrees with a calendar column."""
    calendar = spec.semantics.calendar
    if not calendar or spec.time is None or batch.is_empty():
        return 0.0, {}
    local = _local_time(spec, batch)
    parts = {"year": local.dt.year(), "month": local.dt.month(), "day": local.dt.day(), "hour": local.dt.hour(),
             "minute": local.dt.minute()}
    disagrees = pl.any_horizontal([parts[part].cast(pl.Int64) != pl.col(col).cast(pl.Int64)
                                   for part, col in calendar.items()])
    flagged = batch.filter(disagrees)
    example = flagged.select(spec.time, *calendar.values()).head(1).to_dicts()
    return flagged.height / batch.height, ({k: str(v) for k, v in example[0].items()} if example else {})


def completeness_findings(spec: SourceSpec, batch: pl.DataFrame, earlier: list[pl.DataFrame],
                          bounds: tuple[datetime, datetime] | None) -> list[str]:
    """Far fewer rows than the earlier periods' median, or too few of the period's days covered."""
    checks = spec.semantics.completeness
    if checks is None:
        return []
    findings = []
    if earlier:
        median = float(np.median([e.height for e in earlier]))
        if batch.height < checks.min_row_ratio * median:
            findings.append(f"{batch.height:,} rows, under {checks.min_row_ratio:.0%} of the median "
                            f"{median:,.0f} of the earlier periods")
    if bounds is not None and spec.time is not None and not batch.is_empty():
        start, end = bounds
        days = max(1, (end - start).days)
        covered = batch.select(_local_time(spec, batch).dt.date().n_unique()).item()
        if covered / days < checks.min_day_coverage:
            findings.append(f"rows on {covered} of the period's {days} days, under {checks.min_day_coverage:.0%}")
    return findings


def semantic_report(batch_name: str, spec: SourceSpec, checks: SemanticChecks, batch: pl.DataFrame,
                    earlier: list[pl.DataFrame], bounds: tuple[datetime, datetime] | None) -> SemanticReport:
    """All semantic checks of one coerced batch against up to `shift.history` earlier coerced periods."""
    earlier = earlier[-checks.shift.history:]
    findings, notes = [], []
    share, example = calendar_mismatch(spec, batch)
    if share > checks.max_calendar_mismatch:
        findings.append(f"{share:.1%} of rows have a {spec.time} that disagrees with their calendar columns "
                        f"on the {spec.time_zone} clock (e.g. {example})")
    findings += completeness_findings(spec, batch, earlier, bounds)
    shifts: list[ColumnShift] = []
    if batch.height < checks.shift.min_rows:
        notes.append(f"distribution shift not checked: {batch.height} rows, under the {checks.shift.min_rows} "
                     "a stable PSI needs")
    elif len(earlier) >= checks.shift.min_periods:
        shifts = shift_findings(spec, batch, earlier)
        findings += [f"{s.column} shifted: PSI {s.psi:.2f} against the earlier periods, above the bar {s.threshold:.2f} "
                     f"({checks.shift.margin:g} x their own largest {s.calibration:.3f}, at least {checks.shift.floor:g})"
                     for s in shifts if s.shifted]
    else:
        notes.append(f"distribution shift not checked: {len(earlier)} earlier period(s), "
                     f"{checks.shift.min_periods} needed to calibrate")
    return SemanticReport(batch_name, len(earlier), findings, shifts, notes)
