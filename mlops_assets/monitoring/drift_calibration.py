"""Drift calibration: how much the training data drifts between its own periods, by the report's own tests.

A share of drifted features means little on its own: seasonal data drifts every period (on the
flights data a good month and a storm month both showed about two thirds of the features
drifted against the training reference). So the same per-feature tests run between the training
periods, each period against the rows of the others, and two things are learnt from them:

- per feature, how far it drifts between normal periods: a served feature counts as *unusually*
  drifted only when Evidently says it drifted and its drift exceeds ``factor`` times the largest
  seen between training periods (drift as the test's distance, or -log10 p for a p-value test);
- how large the share of unusually drifted features gets for a normal period (each training
  period judged against the bounds the other periods give): the served share is graded WARN above
  the largest such share and ERROR above it plus ``margin``, the declared thresholds as a floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from mlops_assets.contract import PERIOD
from mlops_assets.monitoring.drift import REFERENCE_ROWS, SEED, DriftSummary, aligned, column_kinds

CALIBRATION_MARGIN = 0.1  # how far above the largest share seen between training periods is an error
SCORE_FACTOR = 1.5  # how many times the largest drift seen between training periods is unusual
MIN_PERIOD_ROWS = 20


def magnitude(stattest: str, score: float, drifted: bool) -> float:
    """Drift on one scale where larger is more: a distance as is, a p-value as -log10 p; an empty side is inf."""
    if not math.isfinite(score):
        return math.inf if drifted else 0.0
    if "p_value" in stattest:
        return -math.log10(max(score, 1e-300))
    return score


@dataclass(frozen=True)
class DriftCalibration:
    """Per feature and training period, the drift against the other periods; the grading derived from it."""

    magnitudes: dict[str, dict[str, float]]  # feature -> period -> drift magnitude
    drifted: dict[str, list[str]]  # period -> features Evidently flagged
    stattests: dict[str, str]  # feature -> test used between periods
    shares: dict[str, float]  # period -> share of features unusual against the other periods' bounds
    warn_at: float
    error_at: float
    declared_warn: float
    declared_error: float
    factor: float = SCORE_FACTOR
    margin: float = CALIBRATION_MARGIN
    rows_per_period: int = REFERENCE_ROWS

    @property
    def max_share(self) -> float | None:
        return max(self.shares.values()) if self.shares else None

    def bound(self, feature: str, excluding: str | None = None) -> float:
        """The drift above which a feature is unusual: ``factor`` x the largest seen between periods."""
        seen = [m for p, m in self.magnitudes.get(feature, {}).items() if p != excluding]
        return self.factor * max(seen) if seen else 0.0

    def unusual(self, summary: DriftSummary) -> list[str]:
        """Served features Evidently flagged whose drift is beyond the calibration (all flagged ones when
        uncalibrated or when the test differs from the calibration's, as when sample sizes differ)."""
        def beyond(feature: str) -> bool:
            row = summary.per_feature[feature]
            if not self.shares or self.stattests.get(feature) != row["stattest"]:
                return True
            return magnitude(row["stattest"], row["score"], row["drifted"]) > self.bound(feature)

        return [f for f in summary.drifted_features if beyond(f)]

    def describe(self) -> str:
        if not self.shares:
            return (f"no calibration (fewer than two training periods of {MIN_PERIOD_ROWS}+ rows): every "
                    f"drifted feature counts; WARN > {self.warn_at:.3f}, ERROR > {self.error_at:.3f}")
        shares = list(self.shares.values())
        return (f"calibrated on {len(shares)} training periods, each vs the others (<= {self.rows_per_period:,} "
                f"rows a side): a feature counts when its drift exceeds {self.factor}x the largest seen between "
                f"periods; a normal period has {min(shares):.3f}..{max(shares):.3f} of its features beyond the "
                f"others' bounds; WARN > {self.warn_at:.3f} (max seen, declared floor {self.declared_warn}), "
                f"ERROR > {self.error_at:.3f} (max seen + {self.margin}, declared floor {self.declared_error})")

    def as_dict(self) -> dict:
        return {"periods": sorted(self.drifted), "shares": self.shares, "max_share": self.max_share,
                "warn_at": self.warn_at, "error_at": self.error_at, "factor": self.factor, "margin": self.margin,
                "declared_warn": self.declared_warn, "declared_error": self.declared_error,
                "rows_per_period": self.rows_per_period, "bounds": {f: self.bound(f) for f in self.magnitudes},
                "description": self.describe()}


def _period_table(rows: pl.DataFrame, period: str, features: list[str], categorical: tuple[str, ...],
                  sample_rows: int) -> dict[str, dict]:
    from mlops_assets.monitoring.evidently_report import drift_table

    inside = pl.col(PERIOD) == period
    current, rest = rows.filter(inside), rows.filter(~inside)
    current = current.sample(n=sample_rows, seed=SEED) if current.height > sample_rows else current
    rest = rest.sample(n=sample_rows, seed=SEED) if rest.height > sample_rows else rest
    rest, current = aligned(rest, current, features)
    numerical, categorical_columns = column_kinds(rest, current, features, categorical)
    return drift_table(rest, current, numerical, categorical_columns).to_dict("index")


def calibrate_drift(training: pl.DataFrame, features: list[str], declared_warn: float, declared_error: float,
                    categorical: tuple[str, ...] = (), sample_rows: int = REFERENCE_ROWS,
                    factor: float = SCORE_FACTOR, margin: float = CALIBRATION_MARGIN) -> DriftCalibration:
    """Drift between the training rows' periods (``period`` column), each against the rest.

    Pass the rows the reference is drawn from (the train split). Periods with fewer than
    ``MIN_PERIOD_ROWS`` rows are skipped; with fewer than two left, the declared thresholds apply.
    """
    if PERIOD not in training.columns:
        raise ValueError(f"calibration needs a {PERIOD!r} column in the training rows")
    if not features:
        raise ValueError("calibration needs at least one feature")
    counts = training.group_by(PERIOD).len().filter(pl.col("len") >= MIN_PERIOD_ROWS)
    periods = sorted(counts.get_column(PERIOD).cast(pl.String).to_list())
    if len(periods) < 2:
        return DriftCalibration({}, {}, {}, {}, declared_warn, declared_error, declared_warn, declared_error,
                                factor, margin, sample_rows)
    rows = training.select(pl.col(PERIOD).cast(pl.String), *features)
    tables = {p: _period_table(rows, p, features, categorical, sample_rows) for p in periods}
    magnitudes = {f: {p: magnitude(t[f]["stattest"], t[f]["score"], t[f]["drifted"]) for p, t in tables.items()}
                  for f in features}
    stattests = {f: tables[periods[-1]][f]["stattest"] for f in features}
    drifted = {p: [f for f in features if t[f]["drifted"]] for p, t in tables.items()}
    draft = DriftCalibration(magnitudes, drifted, stattests, {}, declared_warn, declared_error, declared_warn,
                             declared_error, factor, margin, sample_rows)
    shares = {p: sum(magnitudes[f][p] > draft.bound(f, excluding=p) for f in drifted[p]) / len(features)
              for p in periods}
    seen = max(shares.values())
    error_at = max(declared_error, seen + margin)
    return DriftCalibration(magnitudes, drifted, stattests, shares, min(max(declared_warn, seen), error_at),
                            error_at, declared_warn, declared_error, factor, margin, sample_rows)
