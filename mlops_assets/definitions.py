"""The asset graph, jobs and resources: what `dagster dev` and the CLI load."""

from __future__ import annotations

import warnings

import dagster as dg

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from mlops_assets.features.assets import feature_assets
from mlops_assets.ingestion.assets import ingestion_assets
from mlops_assets.partitions import monthly_partitions
from mlops_assets.resources import LakeResource, OnlineStoreResource
from mlops_assets.settings import executor_name
from mlops_assets.training.assets import training_set

monthly_ingestion = dg.AssetSelection.assets("flights", "weather")

ingestion_job = dg.define_asset_job(
    "ingestion_job", selection=monthly_ingestion, partitions_def=monthly_partitions,
    description="Ingest and validate one month (or a range) of flights and weather.",
)
feature_repository_job = dg.define_asset_job(
    "feature_repository_job",
    selection=dg.AssetSelection.groups("features", "training")
    | dg.AssetSelection.assets("planes", "airlines", "airports"),
    description="Reference tables, feature views, online store and training set from validated months.",
)


EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}


def build_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[*ingestion_assets, *feature_assets, training_set],
        jobs=[ingestion_job, feature_repository_job],
        resources={"lake": LakeResource(), "online": OnlineStoreResource()},
        executor=EXECUTORS[executor_name()],
    )


defs = build_definitions()
