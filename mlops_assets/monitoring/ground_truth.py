"""Labels of a period's examples, keyed as the prediction log is keyed (the project's example id).

The labelled examples come from the training set's own example builder, so a live label is
defined exactly as a training label (threshold, future value, missing-label rule). The slice
columns the examples carry (binned ones too) come along, so live metrics slice as offline ones.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from mlops_assets.contract import PERIOD, PREDICTION_TIME
from mlops_assets.monitoring.serving_frame import in_period, typed_requests
from mlops_assets.project.spec import BinSlice, Project


def label_columns(project: Project) -> list[str]:
    """Example id, then the label: the layout of the `ground_truth` asset."""
    return [*project.examples.id, project.label.name]


def period_labels(examples: pl.DataFrame, project: Project, start: datetime, end: datetime) -> pl.DataFrame:
    """One row per labelled example whose request time is in [start, end): id, prediction time, label, slices."""
    label = project.label.name
    missing = [c for c in [*label_columns(project), project.request.time] if c not in examples.columns]
    if missing:
        raise ValueError(f"the labelled examples lack column(s): {', '.join(missing)}")
    slices = [s.name if isinstance(s, BinSlice) else s for s in project.slices]
    extra = [c for c in [PREDICTION_TIME, *slices] if c in examples.columns and c != PERIOD]
    typed = typed_requests(examples, project)
    rows = in_period(typed, project, start, end).filter(pl.col(label).is_not_null())
    return rows.select(*dict.fromkeys([*project.examples.id, *extra, label]))
