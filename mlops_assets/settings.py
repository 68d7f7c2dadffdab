"""Where local state lives and which task runs: the one place that reads the environment."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
PROJECTS_DIR = PROJECT_ROOT / "projects"


def state_dir() -> Path:
    """All git-ignored local state of a project lives in one folder: `.mlops_state/<project>/` by
    default (projects never share tables or runs), or exactly MLOPS_STATE_DIR when set."""
    if os.environ.get("MLOPS_STATE_DIR"):
        return Path(os.environ["MLOPS_STATE_DIR"]).resolve()
    return (PROJECT_ROOT / ".mlops_state" / project_path().parent.name).resolve()


def project_path() -> Path:
    """The project file: MLOPS_PROJECT is a project folder, a project file, or a name under projects/."""
    value = os.environ.get("MLOPS_PROJECT", "flights")
    candidate = Path(value)
    if candidate.suffix in {".yaml", ".yml"} or candidate.is_dir():
        return candidate.resolve()
    return PROJECTS_DIR / value / "project.yaml"


EXECUTOR_NAMES = ("in_process", "multiprocess", "k8s")


def executor_name() -> str:
    """`in_process` (default: one process, no per-step start-up), `multiprocess` (parallel steps)
    or `k8s` (each step a Kubernetes Job; needs the `k8s` extra and a cluster, see deploy/kubernetes)."""
    value = os.environ.get("MLOPS_EXECUTOR", "in_process")
    if value not in EXECUTOR_NAMES:
        raise ValueError(f"MLOPS_EXECUTOR must be one of {', '.join(EXECUTOR_NAMES)}, not {value!r}")
    return value


def mlflow_server_uri() -> str:
    """An MLflow tracking server (e.g. deploy/mlflow) replacing the profile's store. Not MLflow's own
    MLFLOW_TRACKING_URI: mlflow.set_tracking_uri() writes that one into the process environment."""
    return os.environ.get("MLOPS_MLFLOW_TRACKING_URI", "")


def alert_webhook() -> str:
    """Where alerts are posted besides the alert log (MLOPS_ALERT_WEBHOOK; empty = log only)."""
    return os.environ.get("MLOPS_ALERT_WEBHOOK", "")


def profile() -> str:
    """`embedded` (SQLite files, the default) or `postgres` (Dagster and MLflow on PostgreSQL)."""
    value = os.environ.get("MLOPS_PROFILE", "embedded")
    if value not in {"embedded", "postgres"}:
        raise ValueError(f"MLOPS_PROFILE must be 'embedded' or 'postgres', not {value!r}")
    if value == "postgres" and not os.environ.get("MLOPS_POSTGRES_URL"):
        raise ValueError("MLOPS_PROFILE=postgres needs MLOPS_POSTGRES_URL (postgresql://user:password@host:port)")
    return value


DAGSTER_DATABASE = "mlops_dagster"
MLFLOW_DATABASE = "mlops_mlflow"


def postgres_url(database: str, sqlalchemy: bool = True) -> str:
    """A database on the profile's PostgreSQL server (MLOPS_POSTGRES_URL names the server).

    SQLAlchemy 2.1 maps `postgresql://` to psycopg 3; Dagster and MLflow get the psycopg2 driver
    named explicitly, the one the `postgres` extra installs.
    """
    url = os.environ.get("MLOPS_POSTGRES_URL", "").rstrip("/") + f"/{database}"
    return url.replace("postgresql://", "postgresql+psycopg2://", 1) if sqlalchemy else url


def default_tracking_uri() -> str:
    """An MLflow server when one is named, else SQLite in the state folder or the `postgres` profile's database."""
    if mlflow_server_uri():
        return mlflow_server_uri()
    if profile() == "postgres":
        return postgres_url(MLFLOW_DATABASE)
    return f"sqlite:///{state_dir() / 'mlflow' / 'mlflow.db'}"
