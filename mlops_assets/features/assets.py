"""Feature repository: feature views in the offline store, and the online store.

Views are recomputed over every validated month (the full year takes well under a second)
and stored as month-partitioned parquet in the offline store.
"""


from collections.abc import Iterator
from datetime import timedelta

import dagster as dg
import polars as pl

from mlops_assets.features import transforms
from mlops_assets.features.views import (
    FEATURE_VIEWS,
    FeatureView,
    carrier_delay_view,
    origin_delay_view,
    origin_departure_view,
    plane_view,
    route_delay_view,
    weather_view,
)
from mlops_assets.lake import Lake
from mlops_assets.metadata import frame_metadata
from mlops_assets.resources import LakeResource, OnlineStoreResource, TaskResource

GROUP = "features"


def store_view(lake: Lake, view: FeatureView, data: pl.DataFrame) -> dg.MaterializeResult:
    """Write a view to the offline store and describe it for the UI."""
    paths = lake.write_view(view.name, transforms.with_event_month(data, view.timestamp_field), "month")
    return dg.MaterializeResult(
        asset_key=view.name,
        metadata={
            **view.as_metadata(),
            **frame_metadata(data),
            "offline_store": dg.MetadataValue.path(str(lake.view_dir(view.name))),
            "partitions": len(paths),
        },
    )


def _spec(view: FeatureView, deps: list[str]) -> dg.AssetSpec:
    return dg.AssetSpec(view.name, deps=deps, group_name=GROUP, description=view.description,
                        kinds={"polars", "parquet"}, metadata=view.as_metadata())


@dg.multi_asset(specs=[_spec(weather_view, ["weather"])])
def weather_features(lake: LakeResource) -> dg.MaterializeResult:
    store = lake.get()
    return store_view(store, weather_view, transforms.weather_features(store.read_batches("weather")))


@dg.multi_asset(specs=[_spec(plane_view, ["planes"])])
def plane_features(lake: LakeResource) -> dg.MaterializeResult:
    store = lake.get()
    return store_view(store, plane_view, transforms.plane_features(store.read_reference("planes")))


DELAY_VIEWS = (route_delay_view, carrier_delay_view, origin_delay_view, origin_departure_view)


@dg.multi_asset(specs=[_spec(v, ["flights"]) for v in DELAY_VIEWS], can_subset=False)
def delay_stats(lake: LakeResource, task: TaskResource) -> Iterator[dg.MaterializeResult]:
    """Trailing delay statistics, computed once from the flight events for all four views."""
    store = lake.get()
    lead = timedelta(hours=task.get().prediction_lead_hours)
    events = transforms.flight_events(store.read_batches("flights"), lead)
    for name, data in transforms.delay_views(events).items():
        yield store_view(store, FEATURE_VIEWS[name], data)


@dg.asset(group_name=GROUP, deps=list(FEATURE_VIEWS), kinds={"sqlite"})
def online_store(lake: LakeResource, online: OnlineStoreResource) -> dg.MaterializeResult:
    """Latest value of every feature view per entity key, for request-time lookup."""
    store, db = lake.get(), online.get()
    counts = {v.name: db.write_view(v, store.read_view(v.name)) for v in FEATURE_VIEWS.values()}
    return dg.MaterializeResult(
        metadata={"keys_per_view": dg.MetadataValue.json(counts), "path": dg.MetadataValue.path(str(db.path))}
    )


feature_assets = [weather_features, plane_features, delay_stats, online_store]
