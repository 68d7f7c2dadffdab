"""A rollout replayed over real periods: each period's traffic split by the serving hash at the current
share, scored by both real models, judged on its labels by the real A/B test, then the next step.

No Dagster here. The split is the service's own (`serving.experiment.choose_arm` on the split key),
the scores come from the batch path (equal to the served ones: see the skew report), and the A/B
statistics are `monitoring.ab_test`, so what this shows is what the live loop would decide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from mlops_assets.batch_scoring.scoring import prediction_columns
from mlops_assets.contract import PERIOD
from mlops_assets.monitoring.ab_test import ab_test_report
from mlops_assets.project.spec import Project
from mlops_assets.rollout.policy import Step, decide_step
from mlops_assets.serving.experiment import choose_arm

Score = Callable[[object, pl.DataFrame], np.ndarray]


@dataclass(frozen=True)
class ReplayedStep:
    period: str
    share: float
    challenger_rows: int
    step: Step


def split_frame(project: Project, rows: pl.DataFrame, share: float, salt: str) -> pl.Series:
    """The arm of every row at `share`, as the service assigns it with `split_key: request_id` (one request
    per example, so the example id stands for it): the same stable hash, the same threshold."""
    keys = rows.select(pl.concat_str([pl.col(c).cast(pl.String) for c in project.examples.id], separator="|"))
    return pl.Series("arm", [choose_arm("canary", share, k, salt, True) for k in keys.to_series().to_list()])


def serve_period(project: Project, rows: pl.DataFrame, share: float, champion: object, challenger: object,
                 score: Score, salt: str) -> pl.DataFrame:
    """The period as the prediction log would hold it once its labels arrived: arm, version, score, label."""
    arm = split_frame(project, rows, share, salt)
    champion_scores, challenger_scores = score(champion, rows), score(challenger, rows)
    chosen = np.where((arm == "challenger").to_numpy(), challenger_scores, champion_scores)
    served = rows.select(project.label.name).with_columns(arm, *prediction_columns(project, chosen))
    version = pl.when(pl.col("arm") == "challenger").then(pl.lit("challenger")).otherwise(pl.lit("champion"))
    return served.with_columns(version.alias("model_version"))


def replay_rollout(project: Project, frame: pl.DataFrame, periods: list[str], champion: object, challenger: object,
                   score: Score, salt: str = "rollout") -> list[ReplayedStep]:
    """Start at the first step; after each period judge it and move; stop at a rollback or a promotion."""
    spec, share, steps = project.rollout, project.rollout.steps[0], []
    for period in periods:
        served = serve_period(project, frame.filter(pl.col(PERIOD) == period), share, champion, challenger, score, salt)
        report = ab_test_report(served, project, min_rows=spec.min_rows, alpha=1 - spec.confidence)
        step = decide_step(spec, share, report, challenger_error_rate=0.0)
        steps.append(ReplayedStep(period, share, report["arms"]["challenger"]["rows"], step))
        if step.action in ("rollback", "promote"):
            break
        share = step.share
    return steps
