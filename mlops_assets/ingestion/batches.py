"""Load one delivery of a project source (landed file or embedded data), validate it, decide its fate.

No Dagster here: the asset only wires these functions and reports what they return. A batch
that passes is coerced to the declared schema (declared column order and dtypes), so every
stored batch of a source reads back together; a rejected one is kept exactly as delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from mlops_assets.ingestion.deliveries import Delivery
from mlops_assets.lake import BatchReadError, Lake
from mlops_assets.project.loading import LoadedProject
from mlops_assets.project.spec import ColumnType, SourceSpec
from mlops_assets.validation.pool import validate_batches
from mlops_assets.validation.reporting import ValidationReport, single_failure_report, unreadable_report

NULL_VALUES = ["NA", ""]
POLARS_TYPES: dict[str, pl.DataType] = {
    "int": pl.Int64(),
    "float": pl.Float64(),
    "str": pl.String(),
    "bool": pl.Boolean(),
    "date": pl.Date(),
    "datetime": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class Batch:
    """A delivered batch of `table` (a project source) and its verdict; `frame` is None when unreadable."""

    table: str
    period: str | None
    origin: str
    delivery: Delivery | None
    frame: pl.DataFrame | None
    report: ValidationReport


def load_period(
    project: LoadedProject, source: str, period_key: str, start: datetime, end: datetime,
    delivery: Delivery | None = None,
) -> Batch:
    """The delivery's file when there is one, else the embedded data cut to [start, end); either is validated."""
    return load_periods(project, source, [(period_key, start, end, delivery)])[0]


def load_periods(
    project: LoadedProject, source: str, periods: Sequence[tuple[str, datetime, datetime, Delivery | None]],
) -> list[Batch]:
    """`load_period` of each (key, start, end, delivery): all read first, then validated together (side by
    side in the validation workers once `validation.pool.start` ran, as `mlops-assets run` does)."""
    spec = project.spec.sources[source]
    read: list[Batch | _Read] = [_read_period(project, source, spec, *period) for period in periods]
    pending = [r for r in read if isinstance(r, _Read)]
    reports = iter(validate_batches(source, spec, [r.frame for r in pending], [r.batch_name for r in pending],
                                    [r.bounds for r in pending]))
    return [r if isinstance(r, Batch) else _judged(r, spec, next(reports)) for r in read]


@dataclass(frozen=True)
class _Read:
    """A period's rows, read and awaiting validation."""

    table: str
    period: str | None
    origin: str
    delivery: Delivery | None
    frame: pl.DataFrame
    batch_name: str
    bounds: tuple[datetime, datetime] | None


def _read_period(project: LoadedProject, source: str, spec: SourceSpec, period_key: str, start: datetime,
                 end: datetime, delivery: Delivery | None) -> Batch | _Read:
    """The period's rows to validate, or the Batch that says why there are none."""
    batch_name = f"{source} {period_key}"
    path = delivery.blob if delivery else project.source_path(source)
    if path is None:
        return _undelivered(source, period_key, batch_name)
    origin = delivery.describe() if delivery else str(path)
    try:
        if delivery is not None:
            frame = read_source_file(path, spec, delivery.suffix.removeprefix("."))
        else:
            frame = in_period(read_source_file(path, spec, spec.format), spec, start, end, path)
    except BatchReadError as exc:
        name = delivery.original_name if delivery else exc.path.name
        report = unreadable_report(source, batch_name, name, exc.reason)
        return Batch(source, period_key, origin, delivery, None, report)
    return _Read(source, period_key, origin, delivery, frame, batch_name, (start, end))


def _judged(read: _Read, spec: SourceSpec, report: ValidationReport) -> Batch:
    """A validated batch: coerced to the declared schema when it passed, kept as delivered when not."""
    kept = coerce(read.frame, spec) if report.passed else read.frame
    return Batch(read.table, read.period, read.origin, read.delivery, kept, report)


def load_reference(project: LoadedProject, source: str) -> Batch:
    """A reference source from the project's embedded file, validated as a whole."""
    spec = project.spec.sources[source]
    path = project.source_path(source)
    if path is None:
        return _undelivered(source, None, source)
    try:
        frame = read_source_file(path, spec, spec.format)
    except BatchReadError as exc:
        return Batch(
            source, None, str(path), None, None, unreadable_report(source, source, exc.path.name, exc.reason)
        )
    read = _Read(source, None, str(path), None, frame, source, None)
    return _judged(read, spec, validate_batches(source, spec, [frame], [source], [None])[0])


def _undelivered(source: str, period: str | None, batch_name: str) -> Batch:
    """Nothing landed and no embedded file to fall back on: a hard failure saying so."""
    report = single_failure_report(
        source, batch_name, "batch_is_delivered",
        f"nothing landed for {batch_name} and source {source} declares no `path` to read it from")
    return Batch(source, period, "nowhere", None, None, report)


def read_source_file(path: Path, spec: SourceSpec, file_format: str | None = None) -> pl.DataFrame:
    """Read a CSV or parquet file (by `file_format`, else its suffix); dates/datetimes parsed, text kept.

    Numbers are inferred, never forced: a text value in a numeric column leaves the column text,
    so validation names it instead of it silently becoming null.
    """
    kind = file_format or path.suffix.removeprefix(".")
    if kind not in ("csv", "parquet"):
        raise BatchReadError(path, f"unsupported file type {path.suffix!r}; use .csv or .parquet")
    text = {c: pl.String for c, col in spec.schema_.items() if col.type in ("str", "date", "datetime")}
    diagnose_file(path, kind)
    try:
        if kind == "parquet":
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_csv(
                path, null_values=NULL_VALUES, infer_schema_length=None, schema_overrides=text
            )
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise BatchReadError(path, str(exc).splitlines()[0]) from exc
    except pl.exceptions.PanicException as exc:  # a Rust panic is a BaseException: keep it to this file
        raise BatchReadError(path, f"the reader crashed on this file ({str(exc).splitlines()[0][:200]})") from exc
    garbled = [name for name in frame.columns if not name.isprintable()]
    if garbled:
        raise BatchReadError(
            path, f"column names with control characters ({garbled[0][:20]!r}): not a text table"
        )
    return parse_times(frame, spec)


SNIFF_BYTES = 1 << 16
DELIMITERS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


def diagnose_file(path: Path, kind: str) -> None:
    """Name the usual ways a delivered file is broken before a reader guesses wrong about it.

    Encoding (UTF-16, not UTF-8), the wrong delimiter and a cut-off end are each said plainly;
    a parquet file must end with its footer.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
            fh.seek(max(0, size - SNIFF_BYTES))
            tail = fh.read()
    except OSError as exc:
        raise BatchReadError(path, f"cannot open it ({exc.strerror})") from exc
    if kind == "parquet":
        if size < 12 or tail[-4:] != b"PAR1":
            raise BatchReadError(path, "truncated or not parquet: it does not end with the parquet footer (PAR1)")
        return
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        raise BatchReadError(path, "the file is UTF-16 (or binary), not UTF-8 text: save it as UTF-8 CSV")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if size <= len(head) or exc.start < len(head) - 4:  # only a character cut by the sniff may be partial
            raise BatchReadError(path, f"not UTF-8 text (byte 0x{head[exc.start]:02x} at offset {exc.start}): "
                                       "save it as UTF-8 CSV") from exc
        text = head[:exc.start].decode("utf-8")
    header = text.splitlines()[0] if text else ""
    for mark, name in DELIMITERS.items():
        if "," not in header and mark in header:
            raise BatchReadError(path, f"wrong delimiter: the header is separated by {name}, not commas")
    fields = header.count(",") + 1
    last = tail.decode("utf-8", errors="replace").rstrip("\r").rsplit("\n", 1)[-1]
    if size > len(header) + 1 and not tail.endswith(b"\n") and last.count(",") + 1 < fields:
        raise BatchReadError(path, f"truncated: the last line has {last.count(',') + 1} of {fields} fields "
                                   "and no line end (the transfer was cut off?)")


def parse_times(frame: pl.DataFrame, spec: SourceSpec) -> pl.DataFrame:
    """Text in declared date/datetime columns as pl.Date / UTC datetimes, when every value parses."""
    parsed = []
    for name, column in spec.schema_.items():
        if column.type not in ("date", "datetime") or frame.schema.get(name) != pl.String:
            continue
        text = pl.col(name)
        value = (
            text.str.to_date(strict=False)
            if column.type == "date"
            else text.str.to_datetime(
                time_unit="us", time_zone=spec.time_zone, strict=False
            ).dt.convert_time_zone("UTC")
        )
        candidate = frame.select(value).to_series()
        if candidate.null_count() == frame[name].null_count():
            parsed.append(candidate)
    return frame.with_columns(parsed)


def embedded_period(project: LoadedProject, source: str, start: datetime, end: datetime) -> pl.DataFrame:
    """The embedded history's rows of one period, as the upstream system would deliver them."""
    spec, path = project.spec.sources[source], project.source_path(source)
    if path is None:
        raise ValueError(f"source {source!r} has no embedded data (no `path` in the project file)")
    return in_period(read_source_file(path, spec, spec.format), spec, start, end, path)


def in_period(
    frame: pl.DataFrame, spec: SourceSpec, start: datetime, end: datetime, path: Path
) -> pl.DataFrame:
    """The rows of the embedded history whose `time` lies in [start, end), compared in UTC."""
    time = spec.time
    dtype = frame.schema.get(time) if time else None
    if time is None or not (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
        raise BatchReadError(
            path,
            f"cannot cut a period: the time column {time!r} is {dtype or 'missing'}, not a date or datetime",
        )
    moment = _as_utc(pl.col(time), dtype, spec.time_zone)
    low, high = (m.replace(tzinfo=UTC) if m.tzinfo is None else m.astimezone(UTC) for m in (start, end))
    return frame.filter((moment >= low) & (moment < high))


def _as_utc(expr: pl.Expr, dtype: pl.DataType, time_zone: str) -> pl.Expr:
    """A date (its midnight) or datetime column in UTC; dates and naive values are on `time_zone`'s clock."""
    if dtype == pl.Date:
        expr = expr.cast(pl.Datetime("us"))
    if getattr(dtype, "time_zone", None) is None:
        expr = expr.dt.replace_time_zone(time_zone, ambiguous="null", non_existent="null")
    return expr.dt.convert_time_zone("UTC").dt.cast_time_unit("us")


def coerce(frame: pl.DataFrame, spec: SourceSpec) -> pl.DataFrame:
    """The validated batch in the declared column order and dtypes (int->Int64, datetime->UTC us, ...)."""
    return frame.select(
        _cast(pl.col(name), frame.schema[name], column.type, spec.time_zone).alias(name)
        for name, column in spec.schema_.items()
    )


def _cast(expr: pl.Expr, dtype: pl.DataType, kind: ColumnType, time_zone: str) -> pl.Expr:
    """One column to its declared dtype; NaN (pandas' null in float columns) becomes null."""
    if kind == "datetime" and (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
        return _as_utc(expr, dtype, time_zone)
    if kind == "date" and isinstance(dtype, pl.Datetime):
        return expr.dt.date()
    if dtype.is_float():
        expr = expr.fill_nan(None)
    return expr.cast(POLARS_TYPES[kind])


def quarantine(lake: Lake, batch: Batch) -> Path:
    """Keep the rejected batch (the original file when there is one) with its report and lineage."""
    delivery = batch.delivery
    lineage = ({"delivery": delivery.name, "original_name": delivery.original_name,
                "original_path": delivery.original_path, "sha256": delivery.sha256, "size": delivery.size,
                "landed_at": delivery.landed_at, "landed_by": delivery.landed_by} if delivery else {"origin": batch.origin})
    return lake.quarantine(
        batch.table,
        batch.period or "reference",
        {**batch.report.to_dict(), "lineage": lineage},
        f"{batch.report.to_markdown()}\n\nLineage: {lineage}",
        df=batch.frame,
        source_file=batch.delivery.blob if batch.delivery else None,
        original_name=batch.delivery.original_name if batch.delivery else None,
    )


def failure_reasons(batch: Batch) -> str:
    return "; ".join(f.description for f in batch.report.hard_failures)


def rejection_message(rejected: list[tuple[Batch, Path]]) -> str:
    """One actionable line per rejected batch: which delivery or file, why, where it is kept."""
    lines = []
    for batch, folder in rejected:
        advice = (f" Fix the file and land it again, or `mlops-assets discard {batch.delivery.name}`."
                  if batch.delivery else "")
        lines.append(
            f"{batch.report.batch_name} from {batch.origin} rejected: {failure_reasons(batch)}. "
            f"Kept in {folder}; the last good data is unchanged.{advice}"
        )
    return "\n".join(lines)
