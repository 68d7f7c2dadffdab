"""MLflow as experiment tracker and model registry, behind one typed resource.

The tracking and registry URIs always come from config (never MLflow's implicit `mlflow.db`
in the working directory); the default is an embedded SQLite store in the state folder.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import mlflow
from mlflow import MlflowClient

from mlops_assets.settings import PROJECT_ROOT, default_tracking_uri, mlflow_server_uri, state_dir


def code_version() -> str:
    """The git commit of the code that trained a model ('unknown' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


class MlflowResource(dg.ConfigurableResource):
    """Tracking + registry client; `configure()` points the global mlflow module at the same store."""

    tracking_uri: str = default_tracking_uri()
    registry_uri: str = ""
    artifact_root: str = str(state_dir() / "mlflow" / "artifacts")
    experiment: str = "mlops_assets"
    ui_url: str = mlflow_server_uri() or "http://127.0.0.1:5000"

    @property
    def effective_registry_uri(self) -> str:
        return self.registry_uri or self.tracking_uri

    def configure(self) -> str:
        """Set URIs and the experiment (created with our artifact root); returns the experiment id."""
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.effective_registry_uri)
        found = mlflow.get_experiment_by_name(self.experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            experiment_id = mlflow.create_experiment(self.experiment, artifact_location=self._artifact_location())
        mlflow.set_experiment(experiment_id=experiment_id)
        return experiment_id

    def _artifact_location(self) -> str | None:
        """A URI as given; a local folder for a local store; a tracking server picks (and proxies) its own."""
        if "://" in self.artifact_root:
            return self.artifact_root
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        return Path(self.artifact_root).resolve().as_uri()

    def client(self) -> MlflowClient:
        self.configure()
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.effective_registry_uri)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_url(self, name: str, version: str | int) -> str:
        return f"{self.ui_url}/#/models/{name}/versions/{version}"

    def env(self) -> dict[str, str]:
        """Environment for a child process that must see the same stores (infra validation)."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_REGISTRY_URI": self.effective_registry_uri}


def log_bytes(run_id: str, data: bytes | str, artifact_file: str) -> None:
    """Log an in-memory artifact (plot, report) to a run, keeping its file name."""
    path = Path(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / path.name
        if isinstance(data, str):
            local.write_text(data)
        else:
            local.write_bytes(data)
        MlflowClient().log_artifact(run_id, str(local), artifact_path=str(path.parent) if path.parent.parts else None)


def log_report_run(tracking: MlflowResource, run_name: str, tags: dict[str, str], files: dict[str, bytes | str],
                   metrics: dict[str, float] | None = None) -> str:
    """A finished MLflow run holding a report's files and figures; returns its URL for asset metadata."""
    experiment = tracking.configure()
    client = tracking.client()
    run = client.create_run(experiment, run_name=run_name, tags=tags)
    for name, value in (metrics or {}).items():
        client.log_metric(run.info.run_id, name, float(value))
    for path, data in files.items():
        log_bytes(run.info.run_id, data, path)
    client.set_terminated(run.info.run_id)
    return tracking.run_url(experiment, run.info.run_id)


def load_tabular_model(model_uri: str):
    """The TabularModel inside a logged pyfunc model (same object serving uses in-process)."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().model
