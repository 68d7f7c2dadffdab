"""Monitor verdicts: pass, WARN or ERROR against the project's thresholds, with the figures behind them."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from mlops_assets.evaluation.metrics import higher_is_better
from mlops_assets.monitoring.drift import DriftSummary
from mlops_assets.monitoring.drift_calibration import DriftCalibration
from mlops_assets.project.spec import MonitoringSpec, Project

# Error-like metrics have no natural scale (an RMSE in degrees, a log loss): their rise is judged
# relative to the offline figure. Scores bounded in [0, 1] (AUC, accuracy, F1, R²) by their drop.
RELATIVE_METRICS = frozenset({"rmse", "mae", "log_loss", "brier"})


@dataclass(frozen=True)
class Verdict:
    passed: bool
    severity: str
    message: str
    figures: dict[str, float] = field(default_factory=dict)


def _grade(value: float, warn: float, error: float, what: str, figures: dict[str, float]) -> Verdict:
    if value > error:
        return Verdict(False, "ERROR", f"{what} {value:.3f} above the error threshold {error:.3f}", figures)
    if value > warn:
        return Verdict(False, "WARN", f"{what} {value:.3f} above the warning threshold {warn:.3f}", figures)
    return Verdict(True, "WARN", f"{what} {value:.3f} within thresholds", figures)


def judge_drift(summary: DriftSummary, calibration: DriftCalibration) -> Verdict:
    """The share of unusually drifted features, against what the training periods show between themselves."""
    unusual = calibration.unusual(summary)
    share = len(unusual) / len(summary.per_feature) if summary.per_feature else 0.0
    seen = calibration.max_share
    figures = {"share_unusual": share, "share_drifted": summary.share_drifted, "unusual": float(len(unusual)),
               "warn_at": calibration.warn_at, "error_at": calibration.error_at,
               **({"calibration_max_share": seen} if seen is not None else {})}
    context = (f" (a normal training period reaches {seen:.3f}); unusual: {', '.join(unusual[:8]) or 'none'}"
               if seen is not None else " (uncalibrated: declared thresholds)")
    verdict = _grade(share, calibration.warn_at, calibration.error_at, "share of unusually drifted features",
                     figures)
    return Verdict(verdict.passed, verdict.severity, verdict.message + context, figures)


def judge_skew(report: pl.DataFrame, config: MonitoringSpec) -> Verdict:
    worst = report.sort("mismatch_rate", descending=True, nulls_last=True).row(0, named=True) if report.height \
        else None
    rate = float(worst["mismatch_rate"] or 0.0) if worst else 0.0
    figures = {"max_mismatch_rate": rate}
    return _grade(rate, config.skew_warn_rate, config.skew_error_rate,
                  f"training-serving mismatch rate of {worst['feature'] if worst else 'no feature'}", figures)


def judge_performance(result: dict, project: Project) -> Verdict:
    """Concept drift: how far the primary metric moved the wrong way from the model's offline test figure."""
    metric, config = project.primary_metric, project.monitoring
    delta = result["deltas"].get(metric)
    if delta is None or delta["worse_by"] is None:
        return Verdict(True, "WARN", f"no offline {metric} to compare with", {})
    relative = metric in RELATIVE_METRICS and delta["offline"] > 0
    worse = delta["worse_by"] / delta["offline"] if relative else delta["worse_by"]
    figures = {f"live_{metric}": delta["live"], f"offline_{metric}": delta["offline"],
               "worse_by": delta["worse_by"], "relative": float(relative)}
    what = f"{metric} {'relative rise' if relative else 'drop' if higher_is_better(metric) else 'rise'} vs offline"
    return _grade(worse, config.metric_drop_warn, config.metric_drop_error, what, figures)

