"""The blessing gate: absolute floors, then no regression against the champion on the same rows.

Like TFX's evaluator, a challenger must hold up overall *and* on every slice big enough to
judge; with no champion yet, the floors alone decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from mlops_assets.evaluation.evaluate import Evaluation
from mlops_assets.evaluation.metrics import HIGHER_IS_BETTER
from mlops_assets.task import TaskConfig


@dataclass(frozen=True)
class Verdict:
    blessed: bool
    reasons: list[str]
    comparison: pl.DataFrame

    def summary(self) -> str:
        return "blessed" if self.blessed else "rejected: " + "; ".join(self.reasons)


def floor_failures(overall: dict[str, float], floors: dict[str, float]) -> list[str]:
    reasons = []
    for metric, floor in floors.items():
        value = overall.get(metric, math.nan)
        ok = value >= floor if HIGHER_IS_BETTER[metric] else value <= floor
        if not ok or math.isnan(value):
            reasons.append(f"{metric} {value:.4f} misses the floor {floor}")
    return reasons


def comparison_table(challenger: Evaluation, champion: Evaluation, metric: str) -> pl.DataFrame:
    """Side by side, overall first, then every slice present in both evaluations."""
    overall = pl.DataFrame({"slice": ["(overall)"], "value": ["all"], "rows": [int(challenger.overall["rows"])],
                            "challenger": [challenger.overall[metric]], "champion": [champion.overall[metric]]})
    slices = challenger.sliced.select("slice", "value", "rows", pl.col(metric).alias("challenger")).join(
        champion.sliced.select("slice", "value", pl.col(metric).alias("champion")), on=["slice", "value"]
    )
    return pl.concat([overall, slices.with_columns(pl.col("rows").cast(pl.Int64))], how="vertical_relaxed")


def bless(challenger: Evaluation, champion: Evaluation | None, task: TaskConfig) -> Verdict:
    """Floors always; against a champion: overall tolerance and per-slice tolerance (slices >= N rows)."""
    gate, metric = task.gate, task.metric
    reasons = floor_failures(challenger.overall, gate.floors)
    if champion is None:
        empty = pl.DataFrame(schema={"slice": pl.String, "value": pl.String, "rows": pl.Int64,
                                     "challenger": pl.Float64, "champion": pl.Float64})
        return Verdict(not reasons, reasons, empty)
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    table = comparison_table(challenger, champion, metric).with_columns(
        worse_by=sign * (pl.col("champion") - pl.col("challenger"))
    )
    for row in table.iter_rows(named=True):
        overall = row["slice"] == "(overall)"
        allowed = gate.tolerance if overall else gate.slice_tolerance
        judged = overall or row["rows"] >= gate.min_slice_rows
        if judged and row["worse_by"] is not None and not math.isnan(row["worse_by"]) and row["worse_by"] > allowed:
            where = "overall" if overall else f"slice {row['slice']}={row['value']} ({row['rows']} rows)"
            reasons.append(f"{metric} {where}: {row['challenger']:.4f} vs champion {row['champion']:.4f} "
                           f"(worse by {row['worse_by']:.4f} > tolerance {allowed})")
    return Verdict(not reasons, reasons, table)
