"""Point-in-time correct joins of feature views onto an entity frame.

Every entity row comes out exactly once and in its original order: rows sharing a key and a
timestamp are all kept, and a row with no value inside a view's TTL gets nulls.
"""

from __future__ import annotations

import polars as pl

from mlops_assets.features.views import FeatureView

ROW_ID = "__entity_row"


def event_ts_column(view: FeatureView) -> str:
    return f"{view.name}__event_ts"


def _prepare_view(view: FeatureView, data: pl.DataFrame, ts_dtype: pl.DataType) -> pl.DataFrame:
    """One row per (key, event time), timestamps aligned to the entity frame, sorted for as-of."""
    ts = event_ts_column(view)
    return (
        data.select(*view.entity_keys, pl.col(view.timestamp_field).cast(ts_dtype).alias(ts), *view.features)
        .unique(subset=[*view.entity_keys, ts], keep="last", maintain_order=False)
        .sort(ts)
    )


def point_in_time_join(
    entities: pl.DataFrame,
    views: list[tuple[FeatureView, pl.DataFrame]],
    timestamp: str,
    keep_event_timestamps: bool = False,
) -> pl.DataFrame:
    """Attach, to each entity row, the latest value of each view known at the row's timestamp.

    A value counts when its event time is at or before the row's timestamp and not older than
    the view's TTL. `keep_event_timestamps` keeps `<view>__event_ts` columns for auditing.
    """
    missing = [(v.name, k) for v, _ in views for k in v.entity_keys if k not in entities.columns]
    if missing:
        raise KeyError(f"entity frame lacks the key columns of these views: {missing}")
    ts_dtype = entities.schema[timestamp]
    in_time_order = entities[timestamp].is_sorted() and entities[timestamp].null_count() == 0
    out = entities if in_time_order else entities.with_row_index(ROW_ID).sort(timestamp)
    for view, data in views:
        right = _prepare_view(view, data, ts_dtype)
        out = out.join_asof(
            right, left_on=timestamp, right_on=event_ts_column(view), by=list(view.entity_keys),
            strategy="backward", tolerance=view.ttl, check_sortedness=False,
        )
        if not keep_event_timestamps and event_ts_column(view) in out.columns:
            out = out.drop(event_ts_column(view))
    return out if in_time_order else out.sort(ROW_ID).drop(ROW_ID)
