"""Backtest of continuous-training policies: which policy buys how much live quality for its compute.

No Dagster here. The examples of every period carry exact point-in-time features (the training
set's own computation), so a model trained "at" period P on the periods before it sees exactly
what it would have seen then, and scoring period P with it is what serving would have answered
(the skew report shows served = offline features). Each policy decides at the start of every
period from what was known then: the drift of the last period against its model's training
data, and the model's live metric on the last period, whose labels have arrived by then. A
retrained challenger replaces the model only if the gate passes: on the last labelled period it
trails the serving model by at most `gate.tolerance`.

Shared work is cached: a model is keyed by the last period it trained on, so policies that
retrain at the same moment share one training; each policy is still charged its seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from mlops_assets.contract import PERIOD
from mlops_assets.evaluation.evaluate import truth
from mlops_assets.evaluation.metrics import compute_metrics, higher_is_better
from mlops_assets.project.spec import PolicySpec, Project
from mlops_assets.validation.semantics import column_psi

SHIFTED_PSI = 0.25
Trainer = Callable[[pl.DataFrame, pl.DataFrame], object]
Scorer = Callable[[object, pl.DataFrame], np.ndarray]


@dataclass(frozen=True)
class PeriodOutcome:
    """One policy in one period: which model served, whether it had just retrained, how it did live."""

    period: str
    policy: str
    trained_through: str
    retrained: bool
    reason: str
    live_metric: float
    compute_seconds: float


@dataclass
class _Trained:
    model: object
    seconds: float
    validation_metric: float
    through: str


@dataclass
class BacktestResult:
    metric: str
    higher_is_better: bool
    outcomes: list[PeriodOutcome]
    trainings: int
    wall_seconds: float
    cached: list[str] = field(default_factory=list)

    def summary(self, reference: str) -> list[dict[str, object]]:
        """Per policy: mean live metric, retrains, compute seconds, regret against `reference`."""
        by_policy: dict[str, list[PeriodOutcome]] = {}
        for outcome in self.outcomes:
            by_policy.setdefault(outcome.policy, []).append(outcome)
        base = {o.period: o.live_metric for o in by_policy.get(reference, [])}
        sign = 1.0 if self.higher_is_better else -1.0
        rows = []
        for policy, outcomes in by_policy.items():
            regret = [sign * (base[o.period] - o.live_metric) for o in outcomes if o.period in base]
            rows.append({"policy": policy, "mean_live_metric": float(np.mean([o.live_metric for o in outcomes])),
                         "retrains": sum(o.retrained for o in outcomes),
                         "compute_seconds": round(sum(o.compute_seconds for o in outcomes), 2),
                         "mean_regret": float(np.mean(regret)) if regret else float("nan")})
        return rows


def drift_share(reference: pl.DataFrame, batch: pl.DataFrame, features: list[str]) -> float:
    """Share of features whose PSI against the model's training data is above 0.25."""
    shifted = [f for f in features if column_psi(reference[f], batch[f]) > SHIFTED_PSI]
    return len(shifted) / max(1, len(features))


def decide(policy: PolicySpec, served: int, drift: float, live: float | None, trained_metric: float,
           higher: bool) -> tuple[bool, str]:
    """Retrain before this period? `served` counts periods the current model has served."""
    if policy.retrain == "never":
        return False, "never retrains"
    if policy.retrain == "every":
        due = served >= policy.every
        return due, f"{served} period(s) since training" + (" (due)" if due else "")
    if policy.retrain == "drift":
        due = drift > policy.drift_share
        return due, f"drift share {drift:.2f}" + (f" > {policy.drift_share}" if due else "")
    if live is None:
        return False, "no live metric yet"
    drop = (trained_metric - live) if higher else (live - trained_metric)
    due = drop > policy.metric_drop
    return due, f"live metric {live:.4f} vs {trained_metric:.4f} at training" + (" (dropped)" if due else "")


def gate_passes(challenger: float, champion: float, higher: bool, tolerance: float) -> bool:
    """The challenger may not trail the champion on the latest labelled period by more than `tolerance`."""
    return challenger >= champion - tolerance if higher else challenger <= champion + tolerance


def run_backtest(project: Project, frame: pl.DataFrame, features: list[str], train: Trainer, score: Scorer,
                 classes: list[str] | None = None) -> BacktestResult:
    """Serve `backtest.periods` periods after `backtest.initial` under every declared policy."""
    started = time.perf_counter()
    metric, higher = project.primary_metric, higher_is_better(project.primary_metric)
    periods = sorted(frame[PERIOD].unique().to_list())
    spec = project.backtest
    if len(periods) <= spec.initial:
        raise ValueError(f"the backtest needs more than backtest.initial={spec.initial} periods; there are "
                         f"{len(periods)}")
    served_periods = periods[spec.initial:][: spec.periods]
    by_period = {p: frame.filter(pl.col(PERIOD) == p) for p in periods}
    cache: dict[str, _Trained] = {}
    cached: list[str] = []

    def evaluate(model: object, period: str) -> float:
        rows = by_period[period]
        return float(compute_metrics(project.problem, truth(rows, project, classes), score(model, rows),
                                     project.threshold, classes)[metric])

    def trained_through(last: str) -> _Trained:
        """A model on the periods up to `last`, early-stopped on `last` itself (cached by `last`)."""
        if last in cache:
            cached.append(last)
            return cache[last]
        history = [p for p in periods if p <= last]
        fit = pl.concat([by_period[p] for p in history[:-1]])
        clock = time.perf_counter()
        model = train(fit, by_period[last])
        cache[last] = _Trained(model, time.perf_counter() - clock, evaluate(model, last), last)
        return cache[last]

    outcomes: list[PeriodOutcome] = []
    first = trained_through(periods[spec.initial - 1])
    live_cache: dict[tuple[str, str], float] = {}

    def live(model: _Trained, period: str) -> float:
        key = (model.through, period)
        if key not in live_cache:
            live_cache[key] = evaluate(model.model, period)
        return live_cache[key]

    drift_cache: dict[tuple[str, str], float] = {}
    for policy in spec.policies:
        current, served = first, 0
        for index, period in enumerate(served_periods):
            previous = periods[spec.initial + index - 1]
            seconds, retrained, reason = 0.0, False, "first model"
            if index > 0:
                key = (current.through, previous)
                if key not in drift_cache:
                    reference = pl.concat([by_period[p] for p in periods if p <= current.through])
                    drift_cache[key] = drift_share(reference, by_period[previous], features)
                due, reason = decide(policy, served, drift_cache[key], live(current, previous),
                                     current.validation_metric, higher)
                if due:
                    candidate = trained_through(previous)
                    seconds = candidate.seconds
                    if gate_passes(candidate.validation_metric, live(current, previous), higher,
                                   project.gate.tolerance):
                        current, served, retrained = candidate, 0, True
                    else:
                        reason += "; gate refused the challenger"
            else:
                seconds = first.seconds
            outcomes.append(PeriodOutcome(period, policy.name, current.through, retrained, reason,
                                          live(current, period), seconds))
            served += 1
    return BacktestResult(metric, higher, outcomes, len(cache), time.perf_counter() - started, cached)
