"""Training sets: labelled examples, features exactly as of each prediction time, splits by time.

Pure functions (no Dagster): the `training_set` asset, batch scoring and replay call them.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from mlops_assets.contract import PERIOD, PREDICTION_TIME, SPLIT
from mlops_assets.features.repository import is_static, offline_features, view_aggregations
from mlops_assets.features.request_features import calendar_features
from mlops_assets.features.sources import prepare_all
from mlops_assets.lake import Lake, training_set_dir
from mlops_assets.project.loading import LoadedProject
from mlops_assets.project.spec import BinSlice, Granularity, LabelSpec, Project

PERIOD_FORMAT = {"month": "%Y-%m", "day": "%Y-%m-%d", "week": "%Y-%m-%d"}


def period_of(times: pl.Expr, granularity: Granularity, zone: str = "UTC") -> pl.Expr:
    """The label of the period a time is in, in the source's zone: month 2013-11, day 2013-11-05, week its Monday."""
    times = times.cast(pl.Datetime("us", "UTC")).dt.convert_time_zone(zone)
    if granularity == "week":
        times = times.dt.truncate("1w")
    return times.dt.strftime(PERIOD_FORMAT[granularity])


def _label(frame: pl.DataFrame, project: Project) -> pl.DataFrame:
    spec: LabelSpec = project.label
    if spec.threshold is not None:
        value = (pl.col(spec.threshold.column) > spec.threshold.above).cast(pl.Int8)
        value = pl.when(pl.col(spec.threshold.column).is_null()).then(None).otherwise(value)
    elif spec.future is not None:
        frame = _future_label(frame, project)
        value = pl.col("__future")
    else:
        value = pl.col(spec.column)
    frame = frame.with_columns(value.alias(spec.name))
    if spec.drop_missing:
        frame = frame.filter(pl.col(spec.name).is_not_null())
    elif spec.missing_as is not None:
        frame = frame.with_columns(pl.col(spec.name).fill_null(spec.missing_as))
    kind = {"binary": pl.Int8, "multiclass": pl.String, "regression": pl.Float64}[project.problem]
    return frame.with_columns(pl.col(spec.name).cast(kind)).drop("__future", strict=False)


def _future_label(frame: pl.DataFrame, project: Project) -> pl.DataFrame:
    """The same entity's value `offset` later, matched exactly on the prediction-time column."""
    future = project.label.future
    assert future is not None
    time = project.prediction_time.column
    keys = [c for c in project.examples.id if c != time]
    later = frame.select(*keys, (pl.col(time) - future.offset).alias(time), pl.col(future.column).alias("__future"))
    return frame.join(later.unique([*keys, time]), on=[*keys, time], how="left", maintain_order="left")


def _slices(frame: pl.DataFrame, project: Project) -> pl.DataFrame:
    bins = [s for s in project.slices if isinstance(s, BinSlice)]
    return frame.with_columns(_band(s).alias(s.name) for s in bins)


def _band(spec: BinSlice) -> pl.Expr:
    edges = [f"{b:g}" for b in spec.bins]
    labels = [f"<{edges[0]}", *(f"{a}-{b}" for a, b in zip(edges, edges[1:], strict=False)), f"{edges[-1]}+"]
    return pl.col(spec.column).cut(spec.bins, labels=labels, left_closed=True).cast(pl.String)


def examples_frame(project: LoadedProject, sources: dict[str, pl.DataFrame], labelled: bool = True) -> pl.DataFrame:
    """Examples with request fields, calendar features, prediction time, period, slices and the label.

    `sources` are prepared sources (`features.sources.prepare_all`). Rows are in prediction-time order.
    `labelled=False` keeps every example without a label (batch scoring and replay score those too).
    """
    spec = project.spec
    frame = sources[spec.examples.source]
    if spec.examples.filter:
        frame = frame.filter(pl.sql_expr(spec.examples.filter))
    lead = timedelta(seconds=spec.prediction_time.lead.total_seconds())
    frame = (_label(frame, spec) if labelled else frame).with_columns(
        (pl.col(spec.prediction_time.column).cast(pl.Datetime("us", "UTC")) - lead).alias(PREDICTION_TIME))
    frame = frame.filter(pl.col(PREDICTION_TIME).is_not_null())
    source = spec.sources[spec.examples.source]
    period = period_of(pl.col(source.time or spec.prediction_time.column), spec.split.granularity, source.time_zone)
    frame = calendar_features(spec, frame).with_columns(period.alias(PERIOD))
    label = [spec.label.name] if labelled else []
    keep = list(dict.fromkeys([*spec.examples.id, *spec.request.fields, *spec.request.calendar, *spec.features,
                               *label, PREDICTION_TIME, PERIOD]))
    return _slices(frame.select(keep), spec).sort(PREDICTION_TIME, maintain_order=True)


def assign_splits(frame: pl.DataFrame, project: Project) -> pl.DataFrame:
    """Newest periods test, the ones before validate, `gap` periods dropped before each; the rest train."""
    out = frame.with_columns(split_role(frame[PERIOD].unique().to_list(), project).alias(SPLIT))
    out = out.filter(pl.col(SPLIT).is_not_null())
    _check_rows(out, project)
    return out


def split_role(periods: list[str], project: Project) -> pl.Expr:
    """The split of each period as an expression on PERIOD (null: a dropped gap period)."""
    split = project.split
    periods = sorted(periods)
    needed = split.test + split.validation + 2 * split.gap + 1
    if len(periods) < needed:
        raise ValueError(f"the split needs at least {needed} {split.granularity}s of examples "
                         f"(test {split.test}, validation {split.validation}, gap {split.gap}, 1 to train); "
                         f"there are {len(periods)}: {periods[:3]}…{periods[-3:]}")
    test = periods[len(periods) - split.test:]
    validation_end = len(periods) - split.test - split.gap
    validation = periods[validation_end - split.validation:validation_end]
    train_end = validation_end - split.validation - split.gap
    train = periods[:train_end]
    return (pl.when(pl.col(PERIOD).is_in(test)).then(pl.lit("test"))
            .when(pl.col(PERIOD).is_in(validation)).then(pl.lit("validation"))
            .when(pl.col(PERIOD).is_in(train)).then(pl.lit("train")))


def _check_rows(frame: pl.DataFrame, project: Project) -> None:
    """Too few validation or test rows make a degenerate model look blessed: refuse them."""
    counts = frame.group_by(SPLIT, PERIOD).len()
    _check_counts({(r, p): n for r, p, n in counts.iter_rows()}, project)


def _check_counts(counts: dict[tuple[str, str], int], project: Project) -> None:
    for role in ("validation", "test"):
        rows = sum(n for (r, _), n in counts.items() if r == role)
        if rows < project.split.min_rows:
            periods = sorted(p for (r, p) in counts if r == role)
            raise ValueError(f"the {role} split has {rows} rows (periods {periods}), fewer than "
                             f"split.min_rows={project.split.min_rows}: declare more {role} periods or a coarser "
                             "split.granularity")


def build_training_set(project: LoadedProject, sources: dict[str, pl.DataFrame],
                       views: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """One row per labelled example with every declared view's features as of its prediction time, split by
    time: the model reads the used views, and any champion can be scored on exactly these rows."""
    examples = examples_frame(project, sources)
    names = [n for n in project.spec.feature_views if n in views]
    return assign_splits(offline_features(project.spec, examples, views, names), project.spec)


def content_hash(frame: pl.DataFrame) -> str:
    """Stable fingerprint of schema and rows (in order): same data, same hash."""
    digest = hashlib.sha256(str(frame.schema).encode())
    digest.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def split_summary(frame: pl.DataFrame) -> dict[str, dict[str, object]]:
    counts = frame.group_by(SPLIT).agg(rows=pl.len(), periods=pl.col(PERIOD).unique().sort())
    return {r[SPLIT]: {"rows": r["rows"], "first": r["periods"][0], "last": r["periods"][-1],
                       "periods": len(r["periods"])} for r in counts.to_dicts()}


def write_training_set_by_period(project: LoadedProject, store: Lake) -> tuple[Path, str, int]:
    """`build_training_set` one validated batch (period) of the examples' source at a time, written to the
    lake as it goes: memory follows one period, not the whole history. Returns path, content hash, rows.

    Same rows in the same order as `build_training_set` on every batch: a period's examples have their
    prediction times in that period (sorted within it), and each view is read from the offline store for
    the months its longest window reaches back from them. Counts and lasts are identical; sums and means
    can differ in the last bits (each part's prefix sums start from zero), far below 1e-9 relative, so the
    content hash can differ from the whole-history build's. A label from the future, which needs the next
    period, is refused (use `build_training_set`).
    """
    spec = project.spec
    if spec.label.future is not None:
        raise ValueError("a future label reads the next period: build the training set whole")
    source = spec.examples.source
    derive = spec.sources[source].derive
    references = {n: store.read_reference(n) for n in (derive.inputs if derive else [])}
    periods = store.available_periods(source)
    role = split_role(periods, spec)
    names = list(spec.feature_views)
    static = {n: store.read_view(n) for n in names if is_static(spec, n)}
    reach = {n: max(a.window for a in view_aggregations(spec, n)) for n in names if n not in static}
    folder = training_set_dir(store.root)
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".writing-{os.getpid()}.parquet"
    writer, digest, schema, counts = None, None, None, {}
    try:
        for period in periods:
            prepared = prepare_all(project, {source: store.read_batches(source, [period]), **references})
            examples = examples_frame(project, prepared)
            del prepared
            if examples.height == 0:
                continue
            if examples[PERIOD].unique().to_list() != [period]:
                raise ValueError(f"batch {period} holds examples of periods {examples[PERIOD].unique().to_list()}")
            first, last = examples[PREDICTION_TIME].min(), examples[PREDICTION_TIME].max()
            views = {n: static[n] if n in static else store.read_view(n, _months(first - reach[n], last))
                     for n in names}
            part = offline_features(spec, examples, views, names).with_columns(role.alias(SPLIT))
            part = part.filter(pl.col(SPLIT).is_not_null())
            if part.height == 0:
                continue
            if writer is None:
                schema, digest = part.schema, hashlib.sha256(str(part.schema).encode())
                writer = pq.ParquetWriter(partial, part.to_arrow().schema)
            part = part.cast(dict(schema))
            digest.update(part.hash_rows(seed=0).to_numpy().tobytes())
            writer.write_table(part.to_arrow())
            counts[(part[SPLIT][0], period)] = part.height
        if writer is None:
            raise ValueError(f"no labelled examples in the {source} batches")
        writer.close()
        _check_counts(counts, spec)
        content = digest.hexdigest()[:16]
        path = folder / f"{content}.parquet"
        os.replace(partial, path)
        (folder / "current.json").write_text(json.dumps({"hash": content, "path": str(path)}))
        return path, content, sum(counts.values())
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)


def _months(start: datetime, end: datetime) -> list[str]:
    """The UTC months (%Y-%m, the offline store's partitions) from start's to end's."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    months, year, month = [], start.year, start.month
    while (year, month) <= (end.year, end.month):
        months.append(f"{year}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months
