"""Feature repository assets: each source's feature views in the offline store, and the online store.

One multi-asset per source computes the prepared source once for all of its views. Views are
recomputed over every validated period (the full flights year takes about a second) and stored
as month-partitioned parquet of events in the offline store.
"""


from collections.abc import Iterator

import dagster as dg
import polars as pl

from mlops_assets.features.online_store import EVENT_ID, SEQ
from mlops_assets.features.repository import view_events, view_feature_names, with_pushed
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
        prepared = load_prepared(store, loaded, [source])[source]
        for name in views:
            pushed = db.pushed_frame(loaded.spec, name).drop(EVENT_ID, SEQ, strict=False)
            events = with_pushed(loaded.spec, name, view_events(loaded.spec, name, prepared), pushed)
            yield store_view(store, loaded.spec, name, events)

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
