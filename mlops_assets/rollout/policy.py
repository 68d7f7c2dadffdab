"""Progressive delivery decisions: widen, hold, roll back or promote, from delayed labels and errors.

No Dagster here. Each period the challenger serves its share; once that period's labels arrive
the A/B test (bootstrap CI of challenger - champion on the primary metric) and the arms' error
rates decide the next step. A regression at the declared confidence, or errors above the bar,
rolls back at once; no regression with enough labelled rows widens to the next step; the last
step (everything) promotes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlops_assets.evaluation.metrics import higher_is_better
from mlops_assets.project.spec import RolloutSpec


@dataclass(frozen=True)
class Step:
    action: str  # "widen", "hold", "rollback" or "promote"
    share: float
    reason: str


def next_share(steps: list[float], share: float) -> float:
    """The first step above the current share (1.0 at the end)."""
    return next((s for s in steps if s > share + 1e-9), 1.0)


def decide_step(spec: RolloutSpec, share: float, report: dict, challenger_error_rate: float) -> Step:
    """The next traffic share of the challenger, from one period's A/B report and error rate."""
    if challenger_error_rate > spec.max_error_rate:
        return Step("rollback", 0.0, f"challenger error rate {challenger_error_rate:.2%} above "
                                     f"{spec.max_error_rate:.2%}")
    difference = report["difference"]
    metric, value, low, high = difference["metric"], difference["value"], difference["ci_low"], difference["ci_high"]
    rows = report["arms"]["challenger"]["rows"]
    if rows < spec.min_rows or not math.isfinite(low):
        return Step("hold", share, f"{rows} labelled challenger rows, {spec.min_rows} needed to judge the step")
    worse = high < 0 if higher_is_better(metric) else low > 0
    interval = f"{metric} difference {value:+.4f}, {spec.confidence:.0%} CI [{low:+.4f}, {high:+.4f}]"
    if worse:
        return Step("rollback", 0.0, f"regression at {spec.confidence:.0%}: {interval}")
    target = next_share(spec.steps, share)
    if target >= 1.0:
        return Step("promote", 1.0, f"no regression at {share:.0%} of traffic ({interval}): promote")
    return Step("widen", target, f"no regression at {share:.0%} of traffic ({interval}): widen to {target:.0%}")
