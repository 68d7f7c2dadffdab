"""Monitor verdicts: pass, WARN or ERROR against the task's thresholds, with the figures behind them."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from mlops_assets.monitoring.drift import DriftSummary
from mlops_assets.task import MonitoringConfig


@dataclass(frozen=True)
class Verdict:
    passed: bool
    severity: str
    message: str
    figures: dict[str, float] = field(default_factory=dict)


def _grade(value: float, warn: float, error: float, what: str, figures: dict[str, float]) -> Verdict:
    if value > error:
        return Verdict(False, "ERROR", f"{what} {value:.3f} above the error threshold {error}", figures)
    if value > warn:
        return Verdict(False, "WARN", f"{what} {value:.3f} above the warning threshold {warn}", figures)
    return Verdict(True, "WARN", f"{what} {value:.3f} within thresholds", figures)


def judge_drift(summary: DriftSummary, config: MonitoringConfig) -> Verdict:
    figures = {"share_drifted": summary.share_drifted, "drifted": float(len(summary.drifted_features))}
    return _grade(summary.share_drifted, config.drift_warn_share, config.drift_error_share,
                  "share of drifted features", figures)


def judge_skew(report: pl.DataFrame, config: MonitoringConfig) -> Verdict:
    worst = report.sort("mismatch_rate", descending=True).row(0, named=True) if report.height else None
    rate = float(worst["mismatch_rate"]) if worst else 0.0
    figures = {"max_mismatch_rate": rate}
    return _grade(rate, config.skew_warn_rate, config.skew_error_rate,
                  f"training-serving mismatch rate of {worst['feature'] if worst else 'no feature'}", figures)


def judge_performance(result: dict, config: MonitoringConfig) -> Verdict:
    """Concept drift: how far live AUC fell below the model's offline AUC (labelled rows only)."""
    delta = result["deltas"].get("auc")
    if delta is None or delta["worse_by"] is None:
        return Verdict(True, "WARN", "no offline AUC to compare with", {})
    figures = {"live_auc": delta["live"], "offline_auc": delta["offline"], "auc_drop": delta["worse_by"]}
    return _grade(delta["worse_by"], config.auc_drop_warn, config.auc_drop_error, "AUC drop vs offline", figures)
