"""The ML task as configuration: what to predict, from which columns, judged how.

Flights is the default task; a single-table task needs only another YAML file (see README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(Strict):
    """Split by time: the newest months test, the ones before validate, the rest train."""

    test_months: int = Field(2, ge=1)
    validation_months: int = Field(1, ge=1)


class TuningConfig(Strict):
    n_trials: int = Field(6, ge=1)
    timeout_seconds: float = Field(90, gt=0)
    max_rounds: int = Field(1000, ge=10)
    early_stopping_rounds: int = Field(50, ge=5)


class GateConfig(Strict):
    """Blessing: absolute floors, and how far a challenger may fall behind the champion."""

    floors: dict[str, float] = Field(default_factory=dict)
    tolerance: float = Field(0.01, ge=0)
    slice_tolerance: float = Field(0.03, ge=0)
    min_slice_rows: int = Field(500, ge=1)


class InfraConfig(Strict):
    """Infra validation: canary rows scored by the registered model in a fresh process."""

    canary_rows: int = Field(200, ge=1)
    latency_budget_ms: float = Field(50.0, gt=0)
    timeout_seconds: float = Field(300.0, gt=0)


class MonitoringConfig(Strict):
    """Alert thresholds of the monitors (WARN first, ERROR beyond) and the retraining cool-down."""

    drift_warn_share: float = Field(0.3, ge=0, le=1)
    drift_error_share: float = Field(0.5, ge=0, le=1)
    skew_warn_rate: float = Field(0.05, ge=0, le=1)
    skew_error_rate: float = Field(0.5, ge=0, le=1)
    auc_drop_warn: float = Field(0.03, ge=0)
    auc_drop_error: float = Field(0.06, ge=0)
    retrain_on: Literal["WARN", "ERROR"] = "ERROR"
    retrain_cooldown_hours: float = Field(6.0, ge=0)


class SourceConfig(Strict):
    """Where the rows come from: the flights feature repository, or one table file."""

    kind: Literal["feature_repository", "table"] = "feature_repository"
    path: str | None = None
    feature_views: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _table_needs_path(self) -> SourceConfig:
        if self.kind == "table" and not self.path:
            raise ValueError("source.path is required when source.kind is 'table'")
        return self


class TaskConfig(Strict):
    name: str
    description: str
    model_name: str
    problem: Literal["binary", "regression"] = "binary"
    source: SourceConfig = SourceConfig()
    label: str
    timestamp: str
    entity_keys: list[str] = Field(default_factory=list)
    features: list[str]
    categorical: list[str] = Field(default_factory=list)
    slices: list[str] = Field(default_factory=list)
    metric: str = "auc"
    threshold: float = 0.5
    split: SplitConfig = SplitConfig()
    tuning: TuningConfig = TuningConfig()
    gate: GateConfig = GateConfig()
    infra: InfraConfig = InfraConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    promotion: Literal["auto", "manual"] = "auto"
    prediction_lead_hours: float = Field(2.0, ge=0)
    delayed_minutes: int = 15
    drop_cancelled_and_diverted: bool = True

    @model_validator(mode="after")
    def _categoricals_are_features(self) -> TaskConfig:
        unknown = sorted(set(self.categorical) - set(self.features))
        if unknown:
            raise ValueError(f"categorical columns not listed in features: {unknown}")
        return self


def load_task(path: Path) -> TaskConfig:
    """Parse and validate a task file; errors name the file and the offending field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"task config not found: {path} (set MLOPS_TASK)") from exc
    relative = (raw.get("source") or {}).get("path")
    if relative and not Path(relative).is_absolute():
        raw["source"]["path"] = str((path.parent / relative).resolve())
    return TaskConfig.model_validate(raw)
