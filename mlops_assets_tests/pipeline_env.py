"""A throwaway but real platform for tests: own state folder, SQLite MLflow, Dagster instance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from mlops_assets.alerts import AlertSink
from mlops_assets.definitions import build_definitions
from mlops_assets.resources import LakeResource, OnlineStoreResource, TaskResource
from mlops_assets.settings import DATA_DIR, TASKS_DIR
from mlops_assets.tracking import MlflowResource

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


@dataclass
class PipelineEnv:
    root: Path
    task_file: Path
    instance: dg.DagsterInstance

    @property
    def resources(self) -> dict:
        return {
            "lake": LakeResource(state_dir=str(self.root / "state"), data_dir=str(DATA_DIR)),
            "online": OnlineStoreResource(path=str(self.root / "state" / "online.db")),
            "task": TaskResource(path=str(self.task_file)),
            "mlflow_tracking": MlflowResource(tracking_uri=f"sqlite:///{self.root / 'mlflow.db'}",
                                              artifact_root=str(self.root / "artifacts")),
            "alerts": AlertSink(path=str(self.root / "state" / "alerts" / "alerts.jsonl"), webhook_url=""),
        }

    def defs(self) -> dg.Definitions:
        return build_definitions(self.task_file, self.resources)

    def run(self, job: str, tags: dict[str, str] | None = None, config: dict | None = None):
        return self.defs().resolve_job_def(job).execute_in_process(
            instance=self.instance, tags=tags or {}, run_config=config, raise_on_error=False
        )

    def ingest(self, first: str, last: str):
        return self.run("ingestion_job", {RANGE_START: f"{first}-01", RANGE_END: f"{last}-01"})

    def write_task(self, **overrides: object) -> Path:
        """A copy of the flights task with small tuning, plus overrides (dotted keys nest)."""
        task = yaml.safe_load((TASKS_DIR / "flights.yaml").read_text())
        task["tuning"] = {"n_trials": 1, "timeout_seconds": 60, "max_rounds": 60, "early_stopping_rounds": 10}
        task["gate"]["min_slice_rows"] = 300
        for key, value in overrides.items():
            node = task
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        self.task_file.write_text(yaml.safe_dump(task))
        return self.task_file
