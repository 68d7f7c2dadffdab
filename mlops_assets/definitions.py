"""The asset graph, jobs and resources: what `dagster dev` and the CLI load.

The graph follows the task file (MLOPS_TASK): the flights task includes ingestion and the
feature repository; a single-table task starts at its training set.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import dagster as dg

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from mlops_assets.alerts import AlertSink
from mlops_assets.automation.sensors import (
    landing_folder_sensor,
    monitor_retraining_sensor,
    retraining_schedule,
    run_failure_alert,
)
from mlops_assets.batch_scoring.assets import batch_predictions
from mlops_assets.evaluation.assets import model_evaluation
from mlops_assets.features.assets import feature_assets
from mlops_assets.features.views import FEATURE_VIEWS
from mlops_assets.ingestion.assets import REFERENCE_TABLES, ingestion_assets
from mlops_assets.monitoring.assets import monitoring_assets, monitoring_automation
from mlops_assets.partitions import monthly_partitions
from mlops_assets.registry.assets import champion_model, registered_model_version, serving_infra_validation
from mlops_assets.registry.jobs import approve_model, rollback_champion
from mlops_assets.resources import LakeResource, OnlineStoreResource, TaskResource
from mlops_assets.settings import executor_name, task_path
from mlops_assets.task import load_task
from mlops_assets.tracking import MlflowResource
from mlops_assets.training.assets import candidate_model, training_set_factory


def _k8s_job_executor() -> dg.ExecutorDefinition:
    """Each step as its own Kubernetes Job; imported on demand because dagster-k8s is an optional extra."""
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:
        raise ImportError("MLOPS_EXECUTOR=k8s needs dagster-k8s, the `k8s` extra: "
                          "pip install 'mlops_assets[k8s]'") from exc
    return k8s_job_executor


# Looked up by MLOPS_EXECUTOR; a factory per name so only the selected executor's package is imported.
EXECUTORS: dict[str, Callable[[], dg.ExecutorDefinition]] = {
    "in_process": lambda: dg.in_process_executor,
    "multiprocess": lambda: dg.multiprocess_executor,
    "k8s": _k8s_job_executor,
}
MODEL_GROUPS = ("training", "evaluation", "registry")


def _flights_jobs() -> list[dg.UnresolvedAssetJobDefinition]:
    return [
        dg.define_asset_job(
            "ingestion_job", selection=dg.AssetSelection.assets("flights", "weather"),
            partitions_def=monthly_partitions,
            description="Ingest and validate one month (or a range) of flights and weather.",
        ),
        dg.define_asset_job(
            "feature_repository_job",
            selection=dg.AssetSelection.groups("features") | dg.AssetSelection.assets("training_set", *REFERENCE_TABLES),
            description="Reference tables, feature views, online store and training set from validated months.",
        ),
        dg.define_asset_job(
            "continuous_training_job",
            selection=dg.AssetSelection.groups("features", *MODEL_GROUPS) | dg.AssetSelection.assets(*REFERENCE_TABLES),
            description="Features -> training set -> tuned candidate -> evaluation vs champion -> registry and promotion.",
            tags={"mlops/stage": "training"},
        ),
        dg.define_asset_job(
            "monitoring_job", selection=dg.AssetSelection.groups("monitoring"), partitions_def=monthly_partitions,
            description="Prediction log, labels, drift, skew, live performance and A/B reports for a month.",
        ),
        dg.define_asset_job(
            "batch_scoring_job", selection=dg.AssetSelection.assets("batch_predictions"),
            partitions_def=monthly_partitions, description="Score a month of scheduled flights with the champion.",
        ),
        dg.define_asset_job(
            "landed_month_job",
            selection=dg.AssetSelection.all() - dg.AssetSelection.assets("batch_predictions") - dg.AssetSelection.groups("monitoring"),
            partitions_def=monthly_partitions,
            description="Ingest one month and carry it through features, training, evaluation and registry; "
                        "a batch failing validation stops the run before training.",
            tags={"mlops/stage": "training"},
        ),
    ]


def build_definitions(task_file: Path | None = None, resources: dict | None = None) -> dg.Definitions:
    task_file = task_file or task_path()
    task = load_task(task_file)
    model_assets = [candidate_model, model_evaluation, registered_model_version, champion_model]
    if task.source.kind == "feature_repository":
        assets = [*ingestion_assets, *feature_assets, training_set_factory(["flights", *FEATURE_VIEWS]), *model_assets,
                  batch_predictions, *monitoring_assets]
        jobs = _flights_jobs()
        sensors = [landing_folder_sensor, run_failure_alert, monitor_retraining_sensor, monitoring_automation]
    else:
        assets = [training_set_factory([]), *model_assets]
        jobs = [dg.define_asset_job("continuous_training_job", selection=dg.AssetSelection.groups(*MODEL_GROUPS),
                                    tags={"mlops/stage": "training"})]
        sensors = [run_failure_alert]
    default_resources = {"lake": LakeResource(), "online": OnlineStoreResource(),
                         "task": TaskResource(path=str(task_file)), "mlflow_tracking": MlflowResource(),
                         "alerts": AlertSink()}
    return dg.Definitions(
        assets=assets, asset_checks=[serving_infra_validation], jobs=[*jobs, approve_model, rollback_champion],
        sensors=sensors, schedules=[retraining_schedule],
        resources={**default_resources, **(resources or {})}, executor=EXECUTORS[executor_name()](),
    )


defs = build_definitions()
