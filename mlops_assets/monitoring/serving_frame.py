"""The prediction log as a table: one row per served prediction, features flattened."""

from __future__ import annotations

import polars as pl

from mlops_assets.features.transforms import LOCAL_TZ

RECORD_COLUMNS = ("request_id", "instance", "timestamp", "prediction_time", "probability", "decision", "model_version",
                  "arm", "latency_ms")


def flatten_log(log: pl.DataFrame, month: str) -> pl.DataFrame:
    """Successful predictions whose scheduled departure (local date) falls in `month`."""
    if log.height == 0 or "features" not in log.columns:
        return pl.DataFrame()
    ok = log.filter(pl.col("status") == 200).with_columns(
        pl.col("prediction_time").str.to_datetime(time_zone="UTC", time_unit="us"),
        scheduled_departure=pl.col("inputs").struct.field("scheduled_departure")
        .str.to_datetime(time_zone="UTC", time_unit="us"),
        flight=pl.col("inputs").struct.field("flight"),
        tailnum=pl.col("inputs").struct.field("tailnum"),
    )
    local_month = pl.col("scheduled_departure").dt.convert_time_zone(LOCAL_TZ).dt.strftime("%Y-%m")
    ok = ok.filter(local_month == month)
    features = ok.select("features").unnest("features")
    keys = ok.select(*RECORD_COLUMNS, "scheduled_departure", "flight", "tailnum")
    return pl.concat([keys, features], how="horizontal").with_columns(month=pl.lit(month))
