"""A throwaway but real platform for tests: own state folder, SQLite MLflow, Dagster instance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from mlops_assets.alerts import AlertSink
from mlops_assets.definitions import build_definitions
from mlops_assets.resources import LakeResource, OnlineStoreResource, ProjectResource
from mlops_assets.settings import DATA_DIR
from mlops_assets.tracking import MlflowResource
from mlops_assets_tests.projects import project_copy

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
@dataclass
class PipelineEnv:
    root: Path
    project_file: Path
    instance: dg.DagsterInstance

    @property
    def resources(self) -> dict:
        return {
            "lake": LakeResource(state_dir=str(self.root / "state"), data_dir=str(DATA_DIR)),
            "online": OnlineStoreResource(path=str(self.root / "state" / "online.db")),
            "project": ProjectResource(path=str(self.project_file)),
            "mlflow_tracking": MlflowResource(tracking_uri=f"sqlite:///{self.root / 'mlflow.db'}",
                                              artifact_root=str(self.root / "artifacts")),
            "alerts": AlertSink(path=str(self.root / "state" / "alerts" / "alerts.jsonl"), webhook_url=""),
        }

    def defs(self) -> dg.Definitions:
        return build_definitions(self.project_file, self.resources)

    def run(self, job: str, tags: dict[str, str] | None = None, config: dict | None = None):
        return self.defs().resolve_job_def(job).execute_in_process(
            instance=self.instance, tags=tags or {}, run_config=config, raise_on_error=False
        )

    def ingest(self, first: str, last: str):
        """An explicit range run of the periodic sources (first/last as partition keys or YYYY-MM)."""
        first, last = (p if len(p) == 10 else f"{p}-01" for p in (first, last))
        return self.run("ingestion_job", {RANGE_START: first, RANGE_END: last})

    def write_project(self, name: str, **overrides: object) -> Path:
        return project_copy(name, self.project_file, **overrides)
