"""How a view's events are typed, stored in SQLite and identified: one codec for bulk writes and pushes.

Columns are typed by the source's declaration (so a bulk event and a pushed copy of it are equal,
and so are their ids). In storage, datetimes are epoch µs (UTC), dates are days since the epoch and
booleans 0/1. An event id is the view's `event_id` columns (every stored column when it declares
none) as text joined by `|`, datetimes as epoch µs, so it never depends on a time zone or a format.
Pushed rows are checked here against the source's schema: every column a view of the source reads
must be present (null allowed), typed as declared; a naive datetime is the source's local time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta

import polars as pl

from mlops_assets.features.repository import view_columns
from mlops_assets.features.request_features import localize
from mlops_assets.features.sources import DTYPES
from mlops_assets.project.loading import source_columns
from mlops_assets.project.spec import FeatureViewSpec, Project

SEPARATOR = "|"
EXPLICIT_ID = "event_id"
MAX_PROBLEMS = 20
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EPOCH_DAY = date(1970, 1, 1)


class EventError(ValueError):
    """Pushed events that cannot be stored: one problem per bad field, named like `events[2].origin`."""

    def __init__(self, problems: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['problem']}" for p in problems))
        self.problems = problems


def view_dtypes(project: Project, view_name: str) -> dict[str, pl.DataType]:
    """The columns stored per event of the view (keys, known_at, ids, inputs), typed by the source."""
    types = source_columns(project.sources[project.feature_views[view_name].source])
    return {c: DTYPES[types[c]] for c in view_columns(project, view_name, list(types))}


def _storage_dtype(dtype: pl.DataType) -> pl.DataType:
    if isinstance(dtype, pl.Datetime):
        return pl.Int64()
    if dtype == pl.Date:
        return pl.Int32()
    if dtype == pl.Boolean:
        return pl.Int8()
    return dtype


def _encoded(name: str, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime):
        return pl.col(name).dt.epoch("us")
    if dtype == pl.Date:
        return pl.col(name).cast(pl.Int32)
    if dtype == pl.Boolean:
        return pl.col(name).cast(pl.Int8)
    return pl.col(name)


def encode_frame(frame: pl.DataFrame, columns: Sequence[str], dtypes: dict[str, pl.DataType]) -> pl.DataFrame:
    """Storage values of the typed columns (others, like the event id, as they are)."""
    return frame.select([_encoded(c, dtypes[c]) if c in dtypes else pl.col(c) for c in columns])


def decode(rows: list[tuple], names: Sequence[str], dtypes: dict[str, pl.DataType]) -> pl.DataFrame:
    """Storage rows (from SQLite or a payload) -> a frame typed like the source; unknown columns as text."""
    storage = {n: _storage_dtype(dtypes[n]) if n in dtypes else pl.String() for n in names}
    frame = pl.DataFrame(rows, schema=storage, orient="row", strict=False)
    casts = []
    for name in names:
        dtype = dtypes.get(name)
        if isinstance(dtype, pl.Datetime):
            casts.append(pl.from_epoch(pl.col(name), "us").dt.replace_time_zone("UTC").alias(name))
        elif dtype == pl.Date or dtype == pl.Boolean:
            casts.append(pl.col(name).cast(dtype))
    return frame.with_columns(casts) if casts else frame


def _text(name: str, dtype: pl.DataType) -> pl.Expr:
    return _encoded(name, dtype).cast(pl.String).fill_null("")


def event_id_expr(view: FeatureViewSpec, dtypes: dict[str, pl.DataType]) -> pl.Expr:
    """The event's id: its `event_id` columns (or all stored columns) as text, joined."""
    columns = view.event_id or list(dtypes)
    return pl.concat_str([_text(c, dtypes[c]) for c in columns], separator=SEPARATOR)


def storage_row(value: object, kind: str, time_zone: str) -> object:
    """A JSON value of a declared column type -> its storage value; ValueError says what is expected.

    A naive datetime is local time of the source's zone.
    """
    if value is None:
        return None
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        return float(value)
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return int(value)
    if kind == "date":
        return _date_days(value)
    return _datetime_us(value, time_zone)


def _date_days(value: object) -> int:
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 date, e.g. 2013-06-01") from None
    if isinstance(value, datetime) or not isinstance(value, date):
        raise ValueError("must be an ISO 8601 date, e.g. 2013-06-01")
    return (value - EPOCH_DAY).days


def _datetime_us(value: object, time_zone: str) -> int:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 date-time, e.g. 2013-06-01T17:30:00Z") from None
    if not isinstance(value, datetime):
        raise ValueError("must be an ISO 8601 date-time string")
    moment = localize(value, time_zone)
    if moment is None:
        raise ValueError(f"this local time does not exist in {time_zone} (clocks moved forward)")
    return (moment - EPOCH) // timedelta(microseconds=1)


def parse_pushed(project: Project, source_name: str, views: list[str],
                 rows: list[object]) -> list[tuple[dict[str, object], str | None]]:
    """Each row as storage values of the source's columns (+ its explicit event id), or EventError."""
    source = project.sources[source_name]
    types = source_columns(source)
    required = list(dict.fromkeys(c for v in views for c in view_dtypes(project, v)))
    problems: list[dict[str, str]] = []
    parsed = []
    for i, row in enumerate(rows):
        where = f"events[{i}]"
        if not isinstance(row, Mapping):
            problems.append({"field": where, "problem": "must be a JSON object"})
            continue
        for name in row:
            if name not in types and name != EXPLICIT_ID:
                problems.append({"field": f"{where}.{str(name)[:40]}", "problem": f"unknown field of source {source_name!r}"})
        for name in required:
            if name not in row:
                problems.append({"field": f"{where}.{name}", "problem": "field required (a feature view reads it)"})
        values = {}
        for name in required:
            try:
                values[name] = storage_row(row.get(name), types[name], source.time_zone)
            except ValueError as exc:
                problems.append({"field": f"{where}.{name}", "problem": str(exc)})
        explicit = row.get(EXPLICIT_ID)
        if explicit is not None and not isinstance(explicit, str | int):
            problems.append({"field": f"{where}.{EXPLICIT_ID}", "problem": "must be a string"})
        parsed.append((values, None if explicit is None else str(explicit)))
    if not rows:
        problems.append({"field": "events", "problem": "must not be empty"})
    if problems:
        extra = len(problems) - MAX_PROBLEMS
        raise EventError(problems[:MAX_PROBLEMS] + ([{"field": "events", "problem": f"and {extra} more problems"}]
                                                     if extra > 0 else []))
    return parsed
