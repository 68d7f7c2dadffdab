"""Training sets: labelled examples, features exactly as of each prediction time, splits by time.

Pure functions (no Dagster): the `training_set` asset, batch scoring and replay call them.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import polars as pl

from mlops_assets.contract import PERIOD, PREDICTION_TIME, SPLIT
from mlops_assets.features.repository import offline_features
from mlops_assets.features.request_features import calendar_features
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
    split = project.split
    periods = sorted(frame[PERIOD].unique().to_list())
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
    role = (pl.when(pl.col(PERIOD).is_in(test)).then(pl.lit("test"))
            .when(pl.col(PERIOD).is_in(validation)).then(pl.lit("validation"))
            .when(pl.col(PERIOD).is_in(train)).then(pl.lit("train")))
    out = frame.with_columns(role.alias(SPLIT)).filter(pl.col(SPLIT).is_not_null())
    _check_rows(out, project)
    return out


def _check_rows(frame: pl.DataFrame, project: Project) -> None:
    """Too few validation or test rows make a degenerate model look blessed: refuse them."""
    counts = dict(frame.group_by(SPLIT).len().iter_rows())
    for role in ("validation", "test"):
        rows = counts.get(role, 0)
        if rows < project.split.min_rows:
            periods = sorted(frame.filter(pl.col(SPLIT) == role)[PERIOD].unique().to_list())
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
