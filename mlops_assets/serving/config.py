"""Serving configuration: one typed object, read from the environment so every worker sees the same.

Each option `x` is read from `MLOPS_SERVING_X` (e.g. `MLOPS_SERVING_POLL_SECONDS=5`); the MLflow
store from `MLFLOW_TRACKING_URI` / `MLFLOW_REGISTRY_URI`; the state folder and project from
`MLOPS_STATE_DIR` / `MLOPS_PROJECT` like the rest of the platform.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlops_assets.settings import alert_webhook, default_tracking_uri, project_path, state_dir

ENV_PREFIX = "MLOPS_SERVING_"
ExperimentMode = Literal["off", "ab", "shadow", "canary"]


class ServingConfig(BaseModel):
    """Everything the service needs; defaults serve the platform's own state folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Path = Field(default_factory=state_dir)
    project_path: Path = Field(default_factory=project_path)
    tracking_uri: str = Field(default_factory=default_tracking_uri)
    registry_uri: str = ""
    online_store_path: Path | None = None
    log_dir: Path | None = None
    poll_seconds: float = Field(10.0, gt=0)
    explain_top_k: int = Field(5, ge=1)
    max_batch: int = Field(100, ge=1)
    pass_rows: int = Field(300, ge=1, description="rows of requests ready together scored in one pass at most "
                           "(1: every request alone)")
    max_body_bytes: int = Field(1_048_576, ge=1024)
    max_events: int = Field(1000, ge=1, description="events per POST /v1/events/{source}")
    body_timeout_seconds: float = Field(10.0, gt=0, description="a body not received by then is a 408")
    keep_alive_seconds: int = Field(5, ge=1, description="an idle keep-alive connection is closed after this")
    request_id_memory: int = Field(100_000, ge=1, description="caller request ids remembered to refuse repeats")
    token: str | None = None
    experiment: ExperimentMode = "off"
    challenger_share: float = Field(0.1, ge=0, le=1)
    split_key: str | None = Field(None, description="request field (or 'request_id') that picks the arm; "
                                                    "default: the first key of the first feature view")
    split_salt: str = ""
    log_queue_size: int = Field(10_000, ge=1, description="records held in memory while the disk fails")
    log_ack: Literal["fsync", "queued"] = Field("fsync", description="answer after the record is fsynced "
                                                "(group commit), or once queued (fsync every log_flush_seconds)")
    log_unavailable: Literal["answer", "refuse"] = Field(
        "answer", description="while the log cannot be written: answer with X-Prediction-Log: not-logged "
                              "(records kept and written later), or refuse predictions with 503")
    log_flush_seconds: float = Field(1.0, gt=0)
    log_file_records: int = Field(100_000, ge=1)
    alerts_path: Path | None = None
    alert_webhook: str = Field(default_factory=alert_webhook)
    switch_interval_ms: float = Field(0.5, gt=0, le=100)

    @model_validator(mode="after")
    def _resolve_paths(self) -> ServingConfig:
        """Online store and log default to the state folder (set after the state folder is known)."""
        if self.online_store_path is None:
            object.__setattr__(self, "online_store_path", self.state_dir / "online_store.db")
        if self.log_dir is None:
            object.__setattr__(self, "log_dir", self.state_dir / "prediction_log")
        if self.alerts_path is None:
            object.__setattr__(self, "alerts_path", self.state_dir / "alerts" / "alerts.jsonl")
        return self

    @property
    def online_store(self) -> Path:
        assert self.online_store_path is not None
        return self.online_store_path

    @property
    def prediction_log_dir(self) -> Path:
        assert self.log_dir is not None
        return self.log_dir

    @property
    def effective_registry_uri(self) -> str:
        return self.registry_uri or self.tracking_uri


class ConfigError(ValueError):
    """A serving option from the environment that does not validate; names the variable."""


def from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> ServingConfig:
    """Options from `MLOPS_SERVING_*` (and the MLflow variables), then explicit overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name in ServingConfig.model_fields:
        if f"{ENV_PREFIX}{name.upper()}" in env:
            values[name] = env[f"{ENV_PREFIX}{name.upper()}"]
    if "MLOPS_SERVING_TOKEN" in env and not env["MLOPS_SERVING_TOKEN"]:
        values.pop("token")
    if env.get("MLFLOW_TRACKING_URI"):
        values.setdefault("tracking_uri", env["MLFLOW_TRACKING_URI"])
    if env.get("MLFLOW_REGISTRY_URI"):
        values.setdefault("registry_uri", env["MLFLOW_REGISTRY_URI"])
    values.update(overrides)
    try:
        return ServingConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid serving configuration: {problems}") from exc
