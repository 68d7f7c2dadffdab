"""The feature repository of a project: view feature names, view event frames, offline features.

A view's plain `features` are `last` values over its TTL window and its `aggregations` are
windowed aggregates, all computed over the events known in (t - window, t] by the same engine
(`windows`) offline and online, so served values equal training values by construction.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import polars as pl

from mlops_assets.contract import PREDICTION_TIME
from mlops_assets.features.windows import Aggregation, aggregate_at
from mlops_assets.project.spec import FeatureViewSpec, Project, duration_label

# A plain feature of a view without TTL: the latest value ever known (a century is "ever").
FOREVER = timedelta(days=36525)


def aggregation_name(view_name: str, view: FeatureViewSpec, index: int, window: timedelta) -> str:
    """<prefix>_<column>_<function>_<window> unless the declaration names it ({prefix}, {window})."""
    agg = view.aggregations[index]
    prefix = view.prefix or view_name
    label = duration_label(window)
    if agg.name:
        return agg.name.format(prefix=prefix, window=label)
    return f"{prefix}_{agg.column or 'events'}_{agg.function}_{label}"


def view_feature_names(project: Project, view_name: str) -> list[str]:
    """Every feature a view provides, in a stable order: plain columns, then each aggregation per window."""
    view = project.feature_views[view_name]
    names = list(view.features)
    for i, agg in enumerate(view.aggregations):
        names += [aggregation_name(view_name, view, i, w) for w in agg.windows]
    return names


def model_features(project: Project) -> list[str]:
    """The model's inputs: the project's direct features, then every used view's features."""
    return [*project.features, *(f for v in project.used_views for f in view_feature_names(project, v))]


def view_keys(project: Project, view_name: str) -> list[str]:
    return list(project.entities[project.feature_views[view_name].entity])


def is_static(project: Project, view_name: str) -> bool:
    """A view without known-at time (a reference table): joined by key, valid at any time."""
    return project.feature_views[view_name].known_at is None


def view_aggregations(project: Project, view_name: str) -> list[Aggregation]:
    """Plain features as `last` over the TTL, then the declared aggregations, one per window."""
    view = project.feature_views[view_name]
    ttl = view.ttl or FOREVER
    out = [Aggregation(name=f, function="last", column=f, window=ttl) for f in view.features]
    for i, agg in enumerate(view.aggregations):
        out += [Aggregation(name=aggregation_name(view_name, view, i, w), function=agg.function,
                            column=agg.column, window=w, where=agg.where) for w in agg.windows]
    return out


def _where_columns(project: Project, view_name: str, available: list[str]) -> list[str]:
    """Columns a `where` condition names (matched as whole words against the source's columns)."""
    text = " ".join(a.where or "" for a in project.feature_views[view_name].aggregations)
    return [c for c in available if re.search(rf"\b{re.escape(c)}\b", text)]


def view_columns(project: Project, view_name: str, available: list[str]) -> list[str]:
    """What the offline and online stores keep per event of the view: keys, known-at, id, inputs."""
    view = project.feature_views[view_name]
    wanted = [*view_keys(project, view_name), *([view.known_at] if view.known_at else []), *view.event_id,
              *view.features, *(a.column for a in view.aggregations if a.column),
              *_where_columns(project, view_name, available)]
    return list(dict.fromkeys(wanted))


def view_events(project: Project, view_name: str, source: pl.DataFrame) -> pl.DataFrame:
    """The view's events from its prepared source: known events with complete keys, in time order.

    A static view keeps the latest row per key instead.
    """
    view = project.feature_views[view_name]
    keys = view_keys(project, view_name)
    frame = source.select(view_columns(project, view_name, source.columns)).drop_nulls(keys)
    if view.known_at is None:
        return frame.unique(subset=keys, keep="last", maintain_order=True)
    return frame.drop_nulls([view.known_at]).sort(view.known_at, maintain_order=True)


def _view_columns(project: Project, name: str, queries: pl.DataFrame, views: dict[str, pl.DataFrame]) -> list[pl.Series]:
    """One view's feature columns for the query rows (same order), from a frame of keys and times only."""
    keys, view = view_keys(project, name), project.feature_views[name]
    slim = queries.select(*keys, PREDICTION_TIME)
    if is_static(project, name):
        static = views[name].select(*keys, *view.features).cast({k: slim.schema[k] for k in keys})
        joined = slim.join(static, on=keys, how="left", maintain_order="left")
    else:
        joined = aggregate_at(views[name], keys, view.known_at, view_aggregations(project, name), slim,
                              PREDICTION_TIME)
    return joined.drop(slim.columns).get_columns()


def offline_features(project: Project, queries: pl.DataFrame, views: dict[str, pl.DataFrame],
                     names: list[str] | None = None) -> pl.DataFrame:
    """The views' features (default: the used views) for each query row as of its `prediction_time`,
    same rows, same order. Views are computed side by side: polars and numpy release the GIL."""
    names = project.used_views if names is None else names
    clashes = sorted({f for n in names for f in view_feature_names(project, n)} & set(queries.columns))
    if clashes:
        raise ValueError(f"view features would overwrite example columns: {clashes}")
    with ThreadPoolExecutor(max_workers=min(len(names), os.cpu_count() or 1) or 1) as pool:
        parts = list(pool.map(lambda n: _view_columns(project, n, queries, views), names))
    return queries.with_columns([column for part in parts for column in part])


def with_pushed(project: Project, view_name: str, events: pl.DataFrame, pushed: pl.DataFrame) -> pl.DataFrame:
    """Ingested events plus the pushed ones the ingested data does not hold (same event id), in time order,
    so the next training set sees the events the service saw."""
    view = project.feature_views[view_name]
    if pushed.height == 0 or view.known_at is None:
        return events
    pushed = pushed.select([c for c in events.columns if c in pushed.columns]).cast(
        {c: events.schema[c] for c in events.columns if c in pushed.columns})
    if view.event_id:
        pushed = pushed.join(events.select(view.event_id), on=view.event_id, how="anti")
    return pl.concat([events, pushed], how="diagonal").sort(view.known_at, maintain_order=True)
