"""The Evidently part of the drift report, imported only when a report runs: evidently alone takes
about 2 s to import, which every process loading the definitions (CLI, daemon, code server, each
run and step) would otherwise pay.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import polars as pl
from evidently import DataDefinition, Dataset, Report
from evidently.core.metric_types import DataframeCalculation, DataframeMetric, DataframeValue
from evidently.legacy.calculations.stattests import get_stattest
from evidently.legacy.renderers.html_widgets import CounterData, counter, table_data
from evidently.metrics import ValueDrift

from mlops_assets.monitoring.drift import NO_VALUES, TABLE_COLUMNS


class ColumnDriftTable(DataframeMetric):
    """Evidently's per-column drift test, run once per column and shown as one table (no plots)."""

    columns: list[str]


class ColumnDriftTableCalculation(DataframeCalculation[ColumnDriftTable]):
    def calculate(self, context: object, current_data: Dataset,
                  reference_data: Dataset | None) -> DataframeValue:
        if reference_data is None:
            raise ValueError("drift needs reference data")
        rows = [_column_drift(column, current_data, reference_data) for column in self.metric.columns]
        table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
        result = self.result(table)
        result.widget = _table_widgets(table)
        return result

    def display_name(self) -> str:
        return "Drift per column"


def _finite(values: pd.Series) -> pd.Series:
    """Values a test can use: infinities and missing values dropped, as Evidently's own drift code does."""
    if pd.api.types.is_float_dtype(values):
        return values[np.isfinite(values.to_numpy())]
    return values.dropna()


def column_drift(column: str, column_type: str, ref: pd.Series, cur: pd.Series) -> dict[str, object]:
    """Evidently's automatic test for the column; a column empty on one side only counts as drifted."""
    ref, cur = _finite(ref), _finite(cur)
    row: dict[str, object] = {"column": column, "type": column_type}
    if ref.empty or cur.empty:
        return row | {"stattest": NO_VALUES, "score": math.nan, "threshold": math.nan,
                      "drifted": ref.empty != cur.empty}
    test = get_stattest(ref, cur, column_type, None)
    outcome = test(ref, cur, column_type, None)
    return row | {"stattest": test.display_name, "score": float(outcome.drift_score),
                  "threshold": float(outcome.actual_threshold), "drifted": bool(outcome.drifted)}


def _column_drift(column: str, current: Dataset, reference: Dataset) -> dict[str, object]:
    column_type = current.column(column).type.value
    return column_drift(column, column_type, reference.column(column).data, current.column(column).data)


def drift_table(reference: pl.DataFrame, current: pl.DataFrame, numerical: list[str],
                categorical: list[str]) -> pd.DataFrame:
    """The per-column table without a report (no HTML): what a calibration run needs, many times over."""
    ref, cur = _pandas(reference, numerical, categorical), _pandas(current, numerical, categorical)
    kinds = {**dict.fromkeys(numerical, "num"), **dict.fromkeys(categorical, "cat")}
    rows = [column_drift(c, kinds[c], ref[c], cur[c]) for c in [*numerical, *categorical]]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS).set_index("column")


def _table_widgets(table: pd.DataFrame) -> list:
    drifted = int(table["drifted"].sum())
    counters = [CounterData.int("Columns", len(table)), CounterData.int("Drifted columns", drifted),
                CounterData.float("Share drifted", drifted / max(len(table), 1), 3)]
    ordered = table.sort_values("drifted", ascending=False, kind="stable").round({"score": 4, "threshold": 4})
    return [counter(counters=counters, title="Drift per column"),
            table_data(title="", column_names=TABLE_COLUMNS, data=ordered.values.tolist())]


def _pandas(frame: pl.DataFrame, numerical: list[str], categorical: list[str]) -> pd.DataFrame:
    """Numbers as float (null -> NaN), everything else as strings (booleans, categoricals, dates)."""
    return frame.select(*[pl.col(c).cast(pl.Float64).fill_nan(None) for c in numerical],
                        *[pl.col(c).cast(pl.String) for c in categorical]).to_pandas()


def _dataset(frame: pl.DataFrame, numerical: list[str], categorical: list[str]) -> Dataset:
    pandas = _pandas(frame, numerical, categorical)
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    # Evidently's column statistics divide by the count of values, 0 for an all-null column.
    with np.errstate(invalid="ignore", divide="ignore"):
        return Dataset.from_pandas(pandas, data_definition=definition)


def _table_from(snapshot: object) -> pd.DataFrame:
    """The per-column table as serialized in the report itself, so the summary is what the report says."""
    first = snapshot.dict()["metrics"][0]  # type: ignore[attr-defined]
    return pd.DataFrame(first["value"])[TABLE_COLUMNS].set_index("column")


def run_report(reference: pl.DataFrame, current: pl.DataFrame, numerical: list[str], categorical: list[str],
               columns: list[str], prediction: str | None) -> tuple[pd.DataFrame, str]:
    """The per-column drift table (as the report serializes it) and the report's HTML."""
    metrics: list = [ColumnDriftTable(columns=columns)]
    if prediction:
        metrics.append(ValueDrift(column=prediction))
    snapshot = Report(metrics).run(_dataset(current, numerical, categorical),
                                   _dataset(reference, numerical, categorical))
    return _table_from(snapshot), snapshot.get_html_str(as_iframe=False)
