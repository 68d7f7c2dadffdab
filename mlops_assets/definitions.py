"""The asset graph, jobs and resources of one project: what `dagster dev` and the CLI load.

Everything is built from the project file (MLOPS_PROJECT, default projects/flights): its
sources become ingestion assets with generated validation, its views feature assets, its
periods the partitions. A user's project runs through exactly this code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import dagster as dg

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from mlops_assets.alerts import AlertSink
from mlops_assets.automation.sensors import (
    landing_sensor,
    monitor_retraining_sensor,
    retraining_schedule,
    run_failure_alert,
)
from mlops_assets.backtest.assets import policy_backtest
from mlops_assets.batch_scoring.assets import batch_scoring_assets
from mlops_assets.evaluation.assets import model_evaluation
from mlops_assets.features.assets import feature_assets
from mlops_assets.ingestion.assets import ingestion_assets
from mlops_assets.monitoring.assets import monitoring_assets, monitoring_automation
from mlops_assets.monitoring.efficiency_asset import serving_efficiency_asset
from mlops_assets.partitions import period_partitions
from mlops_assets.project.loading import load_project
from mlops_assets.project.spec import Project
from mlops_assets.registry.assets import champion_model, registered_model_version, serving_infra_validation
from mlops_assets.registry.jobs import approve_model, rollback_champion
from mlops_assets.registry.report_asset import governance_report
from mlops_assets.registry.review_job import request_changes
from mlops_assets.resources import InfraProbeResource, LakeResource, OnlineStoreResource, ProjectResource
from mlops_assets.rollout.assets import rollout_assets
from mlops_assets.settings import executor_name, project_path
from mlops_assets.tracking import MlflowResource
from mlops_assets.training.assets import candidate_model
from mlops_assets.training.dataset_asset import training_set_asset


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


def _jobs(project: Project) -> list[dg.UnresolvedAssetJobDefinition]:
    periods = period_partitions(project)
    periodic = dg.AssetSelection.assets(*project.periodic_sources)
    references = dg.AssetSelection.assets(*project.reference_sources)
    return [
        dg.define_asset_job("ingestion_job", selection=periodic, partitions_def=periods,
                            description="Ingest and validate one period (or a range) of every periodic source."),
        dg.define_asset_job("feature_repository_job",
                            selection=dg.AssetSelection.groups("features") | dg.AssetSelection.assets("training_set")
                            | references,
                            description="Reference tables, feature views, online store and training set."),
        dg.define_asset_job("continuous_training_job",
                            selection=dg.AssetSelection.groups("features", *MODEL_GROUPS) | references,
                            description="Features -> training set -> tuned candidate -> evaluation vs baseline and "
                                        "champion -> registry and promotion.",
                            tags={"mlops/stage": "training"}),
        dg.define_asset_job("monitoring_job", selection=dg.AssetSelection.groups("monitoring"), partitions_def=periods,
                            description="Prediction log, labels, drift, skew, live performance and A/B reports."),
        dg.define_asset_job("batch_scoring_job", selection=dg.AssetSelection.assets("batch_predictions"),
                            partitions_def=periods, description="Score a period's examples with the champion."),
        dg.define_asset_job("landed_period_job",
                            selection=dg.AssetSelection.all() - dg.AssetSelection.assets("batch_predictions")
                            - dg.AssetSelection.groups("monitoring", "backtest"),
                            partitions_def=periods,
                            description="Ingest one period and carry it through features, training, evaluation and "
                                        "registry; a batch failing validation stops the run before training.",
                            tags={"mlops/stage": "training"}),
    ]


def after_ingestion(assets: list[dg.AssetsDefinition], project: Project) -> list[dg.AssetKey]:
    """What a landed period's run carries the delivered sources through: all but ingestion, scoring, monitoring
    and the backtest."""
    skipped = set(project.periodic_sources) | {"batch_predictions"}
    return [key for a in assets for key in a.keys
            if key.to_user_string() not in skipped and a.group_names_by_key.get(key) not in ("monitoring", "backtest")]


def build_definitions(project_file: Path | None = None, resources: dict | None = None) -> dg.Definitions:
    project_file = project_file or project_path()
    project = load_project(project_file).spec
    assets = [*ingestion_assets(project), *feature_assets(project), training_set_asset(project), candidate_model,
              model_evaluation, registered_model_version, champion_model, *batch_scoring_assets(project),
              *monitoring_assets(project), serving_efficiency_asset(project), *rollout_assets(project),
              governance_report, policy_backtest]
    default_resources = {"lake": LakeResource(), "online": OnlineStoreResource(),
                         "project": ProjectResource(path=str(project_file)), "mlflow_tracking": MlflowResource(),
                         "alerts": AlertSink(), "infra_probe": InfraProbeResource()}
    return dg.Definitions(
        assets=assets, asset_checks=[serving_infra_validation],
        jobs=[*_jobs(project), approve_model, rollback_champion, request_changes],
        sensors=[landing_sensor(after_ingestion(assets, project)), run_failure_alert, monitor_retraining_sensor, monitoring_automation(project)],
        schedules=[retraining_schedule],
        resources={**default_resources, **(resources or {})}, executor=EXECUTORS[executor_name()](),
    )


defs = build_definitions()
