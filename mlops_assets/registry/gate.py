"""The blessing gate: floors, a trivial baseline, the worst slice, then no regression against the champion.

Like TFX's evaluator, a challenger must hold up overall *and* on every slice big enough to
judge. It must also beat a model that knows nothing but the training labels (the prior, the
class priors, the mean) on the primary metric and on a metric of its decisions: a model that
never predicts the positive class can have a fine AUC and still be useless. The champion is
compared only on test periods it never trained on; with no such rows, or no champion yet, the
floors, the baseline and the slices decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mlops_assets.evaluation.evaluate import Evaluation
from mlops_assets.evaluation.metrics import PROBLEM_METRICS, higher_is_better
from mlops_assets.project.spec import Project

# The metric of decisions (at the threshold, the most probable class, the value) each problem must win.
DECISION_METRIC = {"binary": "balanced_accuracy", "multiclass": "accuracy", "regression": "mae"}
COMPARISON_SCHEMA = {"slice": pl.String, "value": pl.String, "rows": pl.Int64, "challenger": pl.Float64,
                     "champion": pl.Float64, "worse_by": pl.Float64}


@dataclass(frozen=True)
class Verdict:
    blessed: bool
    reasons: list[str]
    comparison: pl.DataFrame
    baseline: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = "blessed" if self.blessed else "rejected: " + "; ".join(self.reasons)
        return head + (f" (note: {'; '.join(self.notes)})" if self.notes else "")


def baseline_scores(train_truth: np.ndarray, problem: str, classes: list[str] | None,
                    rows: int) -> tuple[str, np.ndarray]:
    """What a model knowing only the training labels predicts for `rows` rows, and its name."""
    if train_truth.size == 0:
        raise ValueError("the train split is empty: no baseline (and no model) can be fitted")
    if problem == "binary":
        prior = float(train_truth.mean())
        return f"train prior probability {prior:.4f}", np.full(rows, prior)
    if problem == "multiclass":
        names = classes or []
        priors = np.bincount(train_truth.astype(np.int64), minlength=len(names)) / train_truth.size
        majority = names[int(priors.argmax())]
        return f"train class priors (majority class {majority!r})", np.tile(priors, (rows, 1))
    mean = float(train_truth.mean())
    return f"train mean {mean:.4f}", np.full(rows, mean)


def _improvement(metric: str, challenger: float, reference: float) -> float:
    return (challenger - reference) * (1.0 if higher_is_better(metric) else -1.0)


def floor_failures(overall: dict[str, float], floors: dict[str, float], problem: str) -> list[str]:
    reasons = []
    for metric, floor in floors.items():
        if metric not in overall:
            reasons.append(f"floor on {metric}: a {problem} evaluation has no such metric "
                           f"(it has {', '.join(PROBLEM_METRICS[problem])})")
            continue
        value = overall[metric]
        ok = value >= floor if higher_is_better(metric) else value <= floor
        if not ok or math.isnan(value):
            reasons.append(f"{metric} {value:.4f} misses the floor {floor}")
    return reasons


def baseline_checks(challenger: dict[str, float], baseline: dict[str, float],
                    project: Project) -> tuple[list[dict[str, object]], list[str]]:
    """The primary metric must beat the baseline by `gate.baseline_margin`, the decision metric at all."""
    wanted = {project.primary_metric: project.gate.baseline_margin}
    wanted.setdefault(DECISION_METRIC[project.problem], 0.0)
    rows, reasons = [], []
    for metric, margin in wanted.items():
        mine, theirs = challenger.get(metric, math.nan), baseline.get(metric, math.nan)
        gained = _improvement(metric, mine, theirs)
        passed = not math.isnan(gained) and gained > 0 and gained >= margin
        rows.append({"metric": metric, "challenger": mine, "baseline": theirs, "improvement": gained,
                     "required": margin, "passed": passed})
        if not passed:
            reasons.append(f"{metric} {mine:.4f} does not beat the trivial baseline's {theirs:.4f} "
                           f"(improvement {gained:.4f}, required > 0 and >= {margin})")
    return rows, reasons


def slice_gap_failures(challenger: Evaluation, project: Project) -> list[str]:
    """The worst slice (>= gate.min_slice_rows rows) may trail overall by at most `gate.max_slice_gap`."""
    limit, gap = project.gate.max_slice_gap, challenger.worst_gap
    value = float(gap.get("gap", math.nan))  # type: ignore[arg-type]
    if limit is None or math.isnan(value) or value <= limit:
        return []
    return [f"{project.primary_metric} on slice {gap['slice']}={gap['value']} is {gap['worst']:.4f}, "
            f"{value:.4f} behind overall (max_slice_gap {limit})"]


def comparison_table(challenger: Evaluation, champion: Evaluation, metric: str) -> pl.DataFrame:
    """Side by side, overall first, then every slice present in both evaluations."""
    overall = pl.DataFrame({"slice": ["(overall)"], "value": ["all"], "rows": [int(challenger.overall["rows"])],
                            "challenger": [challenger.overall[metric]], "champion": [champion.overall[metric]]})
    slices = challenger.sliced.select("slice", "value", "rows", pl.col(metric).alias("challenger")).join(
        champion.sliced.select("slice", "value", pl.col(metric).alias("champion")), on=["slice", "value"]
    )
    sign = 1.0 if higher_is_better(metric) else -1.0
    table = pl.concat([overall, slices.with_columns(pl.col("rows").cast(pl.Int64))], how="vertical_relaxed")
    return table.with_columns(worse_by=sign * (pl.col("champion") - pl.col("challenger")))


def champion_failures(table: pl.DataFrame, project: Project) -> list[str]:
    """Overall within `gate.tolerance`, each slice with enough rows within `gate.slice_tolerance`."""
    gate, metric, reasons = project.gate, project.primary_metric, []
    for row in table.iter_rows(named=True):
        overall = row["slice"] == "(overall)"
        allowed = gate.tolerance if overall else gate.slice_tolerance
        judged = overall or row["rows"] >= gate.min_slice_rows
        if judged and row["worse_by"] is not None and not math.isnan(row["worse_by"]) and row["worse_by"] > allowed:
            where = "overall" if overall else f"slice {row['slice']}={row['value']} ({row['rows']} rows)"
            reasons.append(f"{metric} {where}: {row['challenger']:.4f} vs champion {row['champion']:.4f} "
                           f"(worse by {row['worse_by']:.4f} > tolerance {allowed})")
    return reasons


def bless(challenger: Evaluation, baseline: Evaluation, project: Project,
          champion: tuple[Evaluation, Evaluation] | None = None, notes: list[str] | None = None) -> Verdict:
    """Every rule; `champion` is (challenger, champion) evaluated on the fair test rows, if any."""
    reasons = floor_failures(challenger.overall, project.gate.floors, project.problem)
    checks, baseline_reasons = baseline_checks(challenger.overall, baseline.overall, project)
    reasons += baseline_reasons + slice_gap_failures(challenger, project)
    table = pl.DataFrame(schema=COMPARISON_SCHEMA)
    if champion is not None:
        table = comparison_table(*champion, project.primary_metric)
        reasons += champion_failures(table, project)
    return Verdict(not reasons, reasons, table, checks, list(notes or []))
