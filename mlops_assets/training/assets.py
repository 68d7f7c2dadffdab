"""Training: the point-in-time correct training set (and, later, the candidate model)."""


from datetime import timedelta

import dagster as dg
import polars as pl

from mlops_assets.features.transforms import flight_events
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.lake import write_training_set
from mlops_assets.metadata import frame_metadata
from mlops_assets.resources import LakeResource
from mlops_assets.task import current_task
from mlops_assets.training.dataset import SPLIT, content_hash, flight_training_set

GROUP = "training"


@dg.asset(group_name=GROUP, deps=["flights", *FEATURE_VIEWS], kinds={"polars", "parquet"})
def training_set(lake: LakeResource) -> dg.MaterializeResult:
    """Labelled flights with point-in-time features, split by month; named by its content hash."""
    task = current_task()
    store = lake.get()
    views = [FEATURE_VIEWS[name] for name in task.source.feature_views]
    events = flight_events(store.read_batches("flights"), timedelta(hours=task.prediction_lead_hours))
    frame = flight_training_set(events, [(v, store.read_view(v.name)) for v in views], task)
    digest = content_hash(frame)
    path = write_training_set(store, frame, digest)
    counts = frame.group_by(SPLIT).agg(rows=pl.len(), months=pl.col("month").unique().sort().str.join(","))
    return dg.MaterializeResult(
        metadata={
            **frame_metadata(frame),
            "content_hash": digest,
            "path": dg.MetadataValue.path(str(path)),
            "splits": dg.MetadataValue.json({r["split"]: {"rows": r["rows"], "months": r["months"]} for r in counts.to_dicts()}),
            "positive_rate": float(frame[task.label].mean()),
        },
        data_version=dg.DataVersion(digest),
    )
