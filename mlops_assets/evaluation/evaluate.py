"""Evaluate scores on the test months: overall, per slice, worst-slice gap, global TreeSHAP."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mlops_assets.evaluation.metrics import (
    BINARY_METRICS,
    REGRESSION_METRICS,
    compute_metrics,
    metrics_markdown,
    shap_importance,
    sliced_metrics,
    worst_slice_gap,
)
from mlops_assets.task import TaskConfig
from mlops_assets.training.model import TabularModel

SCORE = "__score"


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one model on one test frame; the gate compares two of these on the same rows."""

    overall: dict[str, float]
    sliced: pl.DataFrame
    worst_gap: dict[str, object]

    def to_dict(self) -> dict[str, object]:
        return {"overall": self.overall, "worst_slice_gap": self.worst_gap, "slices": self.sliced.to_dicts()}


def metric_names(task: TaskConfig) -> list[str]:
    return list(BINARY_METRICS if task.problem == "binary" else REGRESSION_METRICS)


def evaluate_scores(test: pl.DataFrame, scores: np.ndarray, task: TaskConfig) -> Evaluation:
    """Metrics of `scores` against the label of `test`, overall and on every configured slice."""
    frame = test.select(task.label, *task.slices).with_columns(pl.Series(SCORE, scores))
    overall = compute_metrics(task.problem, frame[task.label].to_numpy(), scores, task.threshold)
    sliced = sliced_metrics(frame, task.label, SCORE, task.slices, task.problem, task.threshold)
    gap = worst_slice_gap(sliced, overall, task.metric, task.gate.min_slice_rows)
    return Evaluation(overall, sliced, gap)


def explain(model: TabularModel, test: pl.DataFrame, sample_rows: int = 3000, seed: int = 7) -> tuple[pl.DataFrame, np.ndarray]:
    """Global explanation from LightGBM's native TreeSHAP on a sample of test rows."""
    sample = test.sample(min(sample_rows, test.height), seed=seed) if test.height else test
    contributions = model.contributions(sample.to_pandas())
    return shap_importance(contributions, model.features), contributions


def report_markdown(evaluation: Evaluation, task: TaskConfig, title: str) -> str:
    gap = evaluation.worst_gap
    head = (f"## {title}\n\nWorst slice on `{task.metric}`: {gap.get('slice')}={gap.get('value')} "
            f"({gap.get('worst')}), gap {gap.get('gap')} over {gap.get('slices_considered')} slices "
            f"with at least {task.gate.min_slice_rows} rows.\n\n")
    return head + metrics_markdown(evaluation.overall, evaluation.sliced, metric_names(task))
