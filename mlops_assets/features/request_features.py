"""Features computed from the request alone: calendar parts of a request datetime in its field's zone.

One definition, two shapes: `calendar_features` (a polars frame: the training set) and
`calendar_columns` (request dicts: the serving hot path; `calendar_values` for one); a test checks
them equal on real rows, daylight-saving days included. A naive datetime is local time of the field's declared
`time_zone` (UTC when none): the earlier instant when ambiguous, missing when it does not exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from functools import lru_cache
from zoneinfo import ZoneInfo

import polars as pl

from mlops_assets.project.spec import Project

POLARS_PARTS = {
    "hour": lambda e: e.dt.hour(),
    "weekday": lambda e: e.dt.weekday(),  # ISO: Monday 1 .. Sunday 7
    "month": lambda e: e.dt.month(),
    "day": lambda e: e.dt.day(),
    "day_of_year": lambda e: e.dt.ordinal_day(),
    "minute": lambda e: e.dt.minute(),
}
PYTHON_PARTS = {
    "hour": lambda t: t.hour,
    "weekday": lambda t: t.isoweekday(),
    "month": lambda t: t.month,
    "day": lambda t: t.day,
    "day_of_year": lambda t: t.timetuple().tm_yday,
    "minute": lambda t: t.minute,
}


@lru_cache(maxsize=64)
def zone(name: str | None) -> ZoneInfo:
    return ZoneInfo(name or "UTC")


def field_zone(project: Project, field: str) -> str:
    """The zone a request field's naive values are in, and calendar parts are taken in."""
    return project.request.fields[field].time_zone or "UTC"


def localize(value: datetime | date, zone_name: str | None) -> datetime | None:
    """An aware datetime: aware values keep their instant, naive ones are local time of the zone
    (fold 0 = the earlier instant when ambiguous); None for a local time that does not exist."""
    if not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if value.tzinfo is not None:
        return value
    tz = zone(zone_name)
    aware = value.replace(tzinfo=tz)
    if aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != value:
        return None
    return aware


def _as_zoned(expr: pl.Expr, dtype: pl.DataType, zone_name: str) -> pl.Expr:
    if isinstance(dtype, pl.Date) or dtype == pl.Date:
        expr, dtype = expr.cast(pl.Datetime("us")), pl.Datetime("us")
    if getattr(dtype, "time_zone", None) is None:
        return expr.dt.replace_time_zone(zone_name, ambiguous="earliest", non_existent="null")
    return expr.dt.convert_time_zone(zone_name)


def calendar_features(project: Project, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with one Int64 column per `request.calendar` feature (missing where the time is)."""
    columns = []
    for name, feature in project.request.calendar.items():
        zoned = _as_zoned(pl.col(feature.of), frame.schema[feature.of], field_zone(project, feature.of))
        columns.append(POLARS_PARTS[feature.part](zoned).cast(pl.Int64).alias(name))
    return frame.with_columns(columns) if columns else frame


def calendar_columns(project: Project, requests: Sequence[Mapping[str, object]]) -> dict[str, list[int | None]]:
    """The per-request twin of `calendar_features` for a batch, as columns: {feature: one int or None per
    request}. Each datetime field is put in its zone once per request, however many parts are taken of it;
    a serving pass takes its columns so, without a dict per request."""
    out: dict[str, list[int | None]] = {}
    local: dict[str, list[datetime | None]] = {}
    for name, feature in project.request.calendar.items():
        moments = local.get(feature.of)
        if moments is None:
            zone_name = field_zone(project, feature.of)
            tz = zone(zone_name)
            moments = local[feature.of] = [_in_zone(request.get(feature.of), zone_name, tz) for request in requests]
        part = PYTHON_PARTS[feature.part]
        out[name] = [None if moment is None else part(moment) for moment in moments]
    return out


def _in_zone(value: object, zone_name: str, tz: ZoneInfo) -> datetime | None:
    moment = localize(value, zone_name) if isinstance(value, datetime | date) else None
    return None if moment is None else moment.astimezone(tz)


def calendar_values(project: Project, request: Mapping[str, object]) -> dict[str, int | None]:
    """`calendar_columns` of one request: {feature: int or None}."""
    return {name: column[0] for name, column in calendar_columns(project, [request]).items()}


def prediction_time(project: Project, request: Mapping[str, object]) -> datetime | None:
    """When the prediction is made, in UTC: the request's time field minus the project's lead."""
    value = request.get(project.request.time)
    moment = localize(value, field_zone(project, project.request.time)) if isinstance(value, datetime | date) else None
    return None if moment is None else moment.astimezone(UTC) - project.prediction_time.lead
