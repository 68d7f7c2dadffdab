"""Training sets for single-table tasks: no joins, the task file names every column."""

from __future__ import annotations

import polars as pl

from mlops_assets.task import TaskConfig
from mlops_assets.training.dataset import MONTH, assign_splits


def table_training_set(table: pl.DataFrame, task: TaskConfig) -> pl.DataFrame:
    """Select the task's columns, derive the month from the timestamp, split by month."""
    needed = [task.timestamp, task.label, *task.features, *(s for s in task.slices if s != MONTH)]
    missing = sorted(set(needed) - set(table.columns))
    if missing:
        raise KeyError(f"task {task.name!r}: columns missing from {task.source.path}: {missing}")
    ts = pl.col(task.timestamp)
    if table.schema[task.timestamp] == pl.String:
        ts = ts.str.to_datetime(strict=True)
    frame = table.with_columns(ts.alias(task.timestamp)).with_columns(
        pl.col(task.timestamp).dt.strftime("%Y-%m").alias(MONTH)
    )
    frame = frame.filter(pl.col(task.label).is_not_null())
    columns = list(dict.fromkeys([*task.entity_keys, task.timestamp, MONTH, task.label, *task.features,
                                  *task.slices]))
    return assign_splits(frame.select(columns).sort(task.timestamp), task.split)
