"""Feature repository assets: each source's feature views in the offline store, and the online store.

One multi-asset per source computes the prepared source once for all of its views. Views are
recomputed over every validated period (the full flights year takes about a second) and stored
as month-partitioned parquet of events in the offline store.
"""


import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from mlops_assets.features.online_store import EVENT_ID, SEQ
from mlops_assets.features.repository import view_columns, view_events, view_feature_names, with_pushed
from mlops_assets.features.sources import prepare_all
from mlops_assets.lake import Lake
from mlops_assets.metadata import frame_metadata
from mlops_assets.project.loading import LoadedProject
from mlops_assets.project.spec import Project
from mlops_assets.resources import LakeResource, OnlineStoreResource, ProjectResource

GROUP = "features"
STATIC_PARTITION = "static"


def load_prepared(store: Lake, project: LoadedProject, sources: list[str]) -> dict[str, pl.DataFrame]:
    """Validated batches of the sources (and the references their derive functions read), prepared."""
    spec = project.spec
    needed = set(sources) | {i for s in sources if spec.sources[s].derive for i in spec.sources[s].derive.inputs}
    raw = {n: store.read_reference(n) if spec.sources[n].kind == "reference" else store.read_batches(n)
           for n in needed}
    return prepare_all(project, raw)


def _prepared_batches(store: Lake, project: LoadedProject, source: str, views: list[str],
                      scratch: Path) -> tuple[list[str], dict[str, dict[datetime, list[Path]]]]:
    """The source prepared one validated batch at a time, each batch's view columns to a scratch parquet
    file; returns the columns kept, in the prepared order (so `where` columns come out the same), and per
    known-at column of the views, which files (in batch order) hold each UTC month: a month is then built
    from those files only, not from the whole history."""
    spec = project.spec
    derive = spec.sources[source].derive
    references = {n: store.read_reference(n) for n in (derive.inputs if derive else [])}
    known_ats = list(dict.fromkeys(k for k in (spec.feature_views[n].known_at for n in views) if k))
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    available: list[str] = []
    files: dict[str, dict[datetime, list[Path]]] = {k: {} for k in known_ats}
    for i, period in enumerate(store.available_periods(source)):
        prepared = prepare_all(project, {source: store.read_batches(source, [period]), **references})[source]
        wanted = {c for name in views for c in view_columns(spec, name, prepared.columns)}
        available = [c for c in prepared.columns if c in wanted]
        path = scratch / f"{i:06d}.parquet"
        prepared.select(available).write_parquet(path)
        for known_at in known_ats:
            for start in _utc_months_of(prepared, known_at):
                files[known_at].setdefault(start, []).append(path)
    if not available:
        raise FileNotFoundError(f"no validated {source} batches in {store.root / 'warehouse' / source}")
    return available, files


def _utc_months_of(frame: pl.DataFrame, column: str) -> list[datetime]:
    """The first instants of the UTC months the column's values fall in."""
    t = pl.col(column)
    if frame.schema[column].time_zone is not None:  # type: ignore[attr-defined]
        t = t.dt.convert_time_zone("UTC")
    return frame.select(t.dt.truncate("1mo").unique().drop_nulls()).to_series().to_list()


def _month_label(start: datetime) -> str:
    return f"{start.year}-{start.month:02d}"


def _next_month(start: datetime) -> datetime:
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def source_view_events(store: Lake, project: LoadedProject, source: str,
                       views: list[str]) -> Iterator[tuple[str, pl.DataFrame]]:
    """Each view's events, the source prepared one validated batch at a time, so memory follows the views'
    own columns rather than every prepared column of every period at once.

    Equal to `view_events` on `load_prepared` (same rows, same order: the batches in period order, then the
    stable sort by known-at) because `derive` adds columns row by row (it may not change the row count).
    """
    spec = project.spec
    if spec.sources[source].kind == "reference":
        prepared = load_prepared(store, project, [source])[source]
        yield from ((name, view_events(spec, name, prepared)) for name in views)
        return
    scratch = store.offline_store_dir / f".{source}.prepared"
    try:
        available, _ = _prepared_batches(store, project, source, views, scratch)
        for name in views:
            columns = view_columns(spec, name, available)
            yield name, view_events(spec, name, pl.scan_parquet(scratch / "*.parquet").select(columns).collect())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_source_views(store: Lake, project: LoadedProject, source: str, views: list[str]) -> dict[str, int]:
    """`source_view_events` + `store_view` one known-at month at a time: memory follows one month of one
    view. Returns the events stored per view.

    The same files as storing the whole view: a month's events are those of the whole view's stable sort
    that fall in it, in the same order (filtering by known-at before the sort keeps their input order).
    Pushed events are not merged here (the feature-view asset does that).
    """
    spec = project.spec
    if spec.sources[source].kind == "reference":
        counts = {}
        for name, events in source_view_events(store, project, source, views):
            known_at = spec.feature_views[name].known_at
            month = pl.col(known_at).dt.strftime("%Y-%m") if known_at else pl.lit(STATIC_PARTITION)
            store.write_view(name, events.with_columns(month.alias("month")), "month")
            counts[name] = events.height
        return counts
    scratch = store.offline_store_dir / f".{source}.prepared"
    counts = {}
    try:
        available, files = _prepared_batches(store, project, source, views, scratch)
        for name in views:
            view, columns = spec.feature_views[name], view_columns(spec, name, available)
            if view.known_at is None:
                events = view_events(spec, name, pl.scan_parquet(scratch / "*.parquet").select(columns).collect())
                store.write_view_parts(name, [(STATIC_PARTITION, events)])
                counts[name] = events.height
                continue
            tally = [0]
            store.write_view_parts(name, _month_parts(spec, name, columns, files[view.known_at], tally))
            counts[name] = tally[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return counts


def _month_parts(spec: Project, name: str, columns: list[str], files: dict[datetime, list[Path]],
                 tally: list[int]) -> Iterator[tuple[str, pl.DataFrame]]:
    """The view's events of each UTC known-at month (non-empty ones, in month order), counted into
    `tally[0]`. A month reads only the batch files that hold it (in batch order, so its rows keep the
    whole view's input order): every batch is read once per month it holds, not once per month of history."""
    t = pl.col(spec.feature_views[name].known_at)
    for start in sorted(files):
        lo, hi = start.replace(tzinfo=UTC), _next_month(start).replace(tzinfo=UTC)
        part = view_events(spec, name, pl.scan_parquet(files[start]).select(columns).filter((t >= lo) & (t < hi)).collect())
        if part.height:
            tally[0] += part.height
            yield _month_label(start), part


def view_metadata(project: Project, name: str) -> dict[str, str]:
    view = project.feature_views[name]
    return {"source": view.source, "entity keys": ", ".join(project.entities[view.entity]),
            "known at": view.known_at or "static (reference table)",
            "ttl": str(view.ttl) if view.ttl else "none", "features": ", ".join(view_feature_names(project, name))}


def store_view(store: Lake, project: Project, name: str, events: pl.DataFrame) -> dg.MaterializeResult:
    known_at = project.feature_views[name].known_at
    month = (pl.col(known_at).dt.strftime("%Y-%m") if known_at else pl.lit(STATIC_PARTITION)).alias("month")
    paths = store.write_view(name, events.with_columns(month), "month")
    return dg.MaterializeResult(asset_key=name, metadata={
        **view_metadata(project, name), **frame_metadata(events),
        "offline_store": dg.MetadataValue.path(str(store.view_dir(name))), "partitions": len(paths)})


def _views_asset(project: Project, source: str, views: list[str]) -> dg.AssetsDefinition:
    spec = project.sources[source]
    deps = [source, *(spec.derive.inputs if spec.derive else [])]
    specs = [dg.AssetSpec(v, deps=deps, group_name=GROUP, description=project.feature_views[v].description or None,
                          kinds={"polars", "parquet"}, metadata=view_metadata(project, v)) for v in views]

    @dg.multi_asset(name=f"{source}_feature_views", specs=specs, can_subset=False)
    def _asset(lake: LakeResource, online: OnlineStoreResource,
               project: ProjectResource) -> Iterator[dg.MaterializeResult]:
        """The source's views from its validated batches plus the events pushed to the service."""
        store, db, loaded = lake.get(), online.get(), project.get()
        for name, events in source_view_events(store, loaded, source, views):
            pushed = db.pushed_frame(loaded.spec, name).drop(EVENT_ID, SEQ, strict=False)
            yield store_view(store, loaded.spec, name, with_pushed(loaded.spec, name, events, pushed))

    return _asset


def feature_assets(project: Project) -> list[dg.AssetsDefinition]:
    """One multi-asset per source with views, plus the online store fed from all of them."""
    by_source: dict[str, list[str]] = {}
    for name, view in project.feature_views.items():
        by_source.setdefault(view.source, []).append(name)

    @dg.asset(group_name=GROUP, deps=list(project.feature_views), kinds={"sqlite"})
    def online_store(lake: LakeResource, online: OnlineStoreResource, project: ProjectResource) -> dg.MaterializeResult:
        """Every view's recent events per key (and static rows), for exact windows at request time."""
        store, db, loaded = lake.get(), online.get(), project.get()
        counts = {name: db.write_view_events(loaded.spec, name, store.read_view(name), None)
                  for name in loaded.spec.feature_views}
        return dg.MaterializeResult(metadata={"events_per_view": dg.MetadataValue.json(counts),
                                              "path": dg.MetadataValue.path(str(db.path))})

    return [*(_views_asset(project, s, v) for s, v in by_source.items()), online_store]
