"""Which periods a model saw, enough rows to judge on, and the test rows a champion never saw.

Period labels sort in time order as strings at one granularity (2013-11, 2013-W05, 2013-11-05),
so windows are plain string ranges: `first..last`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from mlops_assets.contract import PERIOD, SPLIT
from mlops_assets.project.spec import Project

WINDOW_SEPARATOR = ".."
TRAIN_WINDOW = "train_window"
VALIDATION_WINDOW = "validation_window"
NO_FAIR_ROWS = "no fair rows: the champion trained on the test periods"


def split_periods(frame: pl.DataFrame, split: str) -> list[str]:
    """The sorted periods of one split."""
    return sorted(frame.filter(pl.col(SPLIT) == split).get_column(PERIOD).unique().drop_nulls().to_list())


def window(periods: list[str]) -> str:
    """`first..last` of sorted periods ('' when there are none)."""
    return f"{periods[0]}{WINDOW_SEPARATOR}{periods[-1]}" if periods else ""


def training_windows(frame: pl.DataFrame) -> dict[str, str]:
    """The run and model-version tags that say which periods trained and early-stopped the model."""
    return {TRAIN_WINDOW: window(split_periods(frame, "train")),
            VALIDATION_WINDOW: window(split_periods(frame, "validation"))}


def require_rows(frame: pl.DataFrame, project: Project, splits: tuple[str, ...] = ("validation", "test")) -> None:
    """Fewer than `split.min_rows` rows in a judged split is an error, not a noisy figure."""
    for split in splits:
        rows = frame.filter(pl.col(SPLIT) == split).height
        if rows < project.split.min_rows:
            periods = ", ".join(split_periods(frame, split)) or "none"
            raise ValueError(f"the {split} split has {rows} rows, fewer than split.min_rows={project.split.min_rows} "
                             f"(periods: {periods}); add periods or lower split.min_rows")


def last_trained_period(tags: dict[str, str]) -> str | None:
    """The newest period a model trained or early-stopped on, from its window tags (None if untagged)."""
    ends = [tags[t].split(WINDOW_SEPARATOR)[-1] for t in (TRAIN_WINDOW, VALIDATION_WINDOW) if tags.get(t)]
    return max(ends) if ends else None


@dataclass(frozen=True)
class FairWindow:
    """The test rows on which challenger and champion are compared, and why."""

    champion_trained_until: str | None
    compared_periods: list[str]
    excluded_periods: list[str]
    rows: int
    notes: list[str] = field(default_factory=list)

    @property
    def comparable(self) -> bool:
        return self.rows > 0

    def to_dict(self) -> dict[str, object]:
        return {"champion_trained_until": self.champion_trained_until, "compared_periods": self.compared_periods,
                "excluded_periods": self.excluded_periods, "rows": self.rows, "notes": self.notes}


def fair_test_rows(test: pl.DataFrame, champion_tags: dict[str, str]) -> tuple[pl.DataFrame, FairWindow]:
    """Test rows after the champion's last trained period: a champion is never judged on data it learned."""
    periods = sorted(test.get_column(PERIOD).unique().drop_nulls().to_list())
    until = last_trained_period(champion_tags)
    if until is None:
        note = "the champion records no training window; compared on every test row"
        return test, FairWindow(None, periods, [], test.height, [note])
    fair = test.filter(pl.col(PERIOD) > until)
    compared = [p for p in periods if p > until]
    excluded = [p for p in periods if p <= until]
    notes = [NO_FAIR_ROWS] if fair.height == 0 else []
    if excluded and fair.height:
        notes.append(f"champion compared on {', '.join(compared)} only: it trained up to {until}")
    return fair, FairWindow(until, compared, excluded, fair.height, notes)
