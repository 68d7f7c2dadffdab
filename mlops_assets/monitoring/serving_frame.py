"""The prediction log as a table: one row per served prediction, request fields typed, features flattened.

Request fields are typed from the project's request declaration the same way on every frame that
is joined by them (the log's JSON inputs, the labelled examples, batch scores), so a join by
`examples.id` never fails on int32 vs int64 or on a datetime's zone. A period is chosen by the
request's time field in UTC, the calendar the partitions use.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from mlops_assets.contract import LOG_FEATURES, LOG_INPUTS, LOG_PREDICTION, PERIOD, PREDICTION_TIME
from mlops_assets.project.spec import Project, RequestFieldSpec

RECORD_COLUMNS = ("request_id", "instance", "timestamp", PREDICTION_TIME, LOG_PREDICTION, "probability",
                  "decision", "probabilities", "model_name", "model_version", "arm", "latency_ms")
UTC_US = pl.Datetime("us", "UTC")
DTYPES: dict[str, pl.DataType] = {"int": pl.Int64(), "float": pl.Float64(), "str": pl.String(),
                                  "bool": pl.Boolean(), "date": pl.Date(), "datetime": UTC_US}


def _as_utc(column: str, spec: RequestFieldSpec, dtype: pl.DataType) -> pl.Expr:
    """Any datetime (ISO text with or without offset, naive or zoned) as UTC; naive means the field's zone."""
    zone = spec.time_zone or "UTC"
    if dtype == pl.String:
        text = pl.col(column)
        aware = text.str.to_datetime(time_zone="UTC", time_unit="us", strict=False)
        naive = text.str.to_datetime(time_unit="us", strict=False).dt.replace_time_zone(zone, ambiguous="earliest")
        return pl.coalesce(aware, naive.dt.convert_time_zone("UTC"))
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is None:
        return pl.col(column).dt.replace_time_zone(zone, ambiguous="earliest").dt.convert_time_zone("UTC")
    if isinstance(dtype, pl.Datetime):
        return pl.col(column).dt.convert_time_zone("UTC")
    return pl.col(column).cast(pl.Datetime("us")).dt.replace_time_zone(zone).dt.convert_time_zone("UTC")


def _typed(column: str, spec: RequestFieldSpec, dtype: pl.DataType) -> pl.Expr:
    if spec.type == "datetime":
        return _as_utc(column, spec, dtype).dt.cast_time_unit("us").alias(column)
    if spec.type == "date" and dtype == pl.String:
        return pl.col(column).str.to_date(strict=False).alias(column)
    return pl.col(column).cast(DTYPES[spec.type], strict=False).alias(column)


def typed_requests(frame: pl.DataFrame, project: Project) -> pl.DataFrame:
    """Request fields (those present) in their declared type: datetimes UTC (us), ints Int64, text String."""
    fields = project.request.fields
    return frame.with_columns([_typed(c, fields[c], frame.schema[c]) for c in fields if c in frame.columns])


def request_time(project: Project) -> str:
    return project.request.time


def in_period(frame: pl.DataFrame, project: Project, start: datetime, end: datetime) -> pl.DataFrame:
    """Rows whose request time (UTC) is in [start, end)."""
    moment = pl.col(request_time(project))
    return frame.filter((moment >= start) & (moment < end))


def _inputs(ok: pl.DataFrame, project: Project) -> pl.DataFrame:
    """The request fields out of the `inputs` struct; a field never sent is a null column."""
    present = set(ok.schema[LOG_INPUTS].to_schema()) if isinstance(ok.schema[LOG_INPUTS], pl.Struct) else set()
    columns = [pl.col(LOG_INPUTS).struct.field(f).alias(f) if f in present else pl.lit(None).alias(f)
               for f in project.request.fields]
    return typed_requests(ok.select(columns), project)


def _features(ok: pl.DataFrame, fields: set[str]) -> pl.DataFrame:
    """Model inputs as served; those that are request fields come from the inputs (the value the client sent)."""
    if LOG_FEATURES not in ok.columns or not isinstance(ok.schema[LOG_FEATURES], pl.Struct):
        return pl.DataFrame()
    features = ok.select(pl.col(LOG_FEATURES)).unnest(LOG_FEATURES)
    return features.select([c for c in features.columns if c not in fields])


def flatten_log(log: pl.DataFrame, project: Project, start: datetime, end: datetime, period: str) -> pl.DataFrame:
    """Successful predictions whose request time falls in [start, end), with a `period` column."""
    if log.height == 0 or LOG_INPUTS not in log.columns or "status" not in log.columns:
        return pl.DataFrame()
    ok = log.filter(pl.col("status") == 200)
    record = ok.select([c for c in RECORD_COLUMNS if c in ok.columns])
    if PREDICTION_TIME in record.columns and record.schema[PREDICTION_TIME] == pl.String:
        record = record.with_columns(pl.col(PREDICTION_TIME).str.to_datetime(time_zone="UTC", time_unit="us"))
    inputs = _inputs(ok, project)
    frame = pl.concat([record, inputs, _features(ok, set(inputs.columns))], how="horizontal")
    return in_period(frame, project, start, end).with_columns(pl.lit(period).alias(PERIOD))
