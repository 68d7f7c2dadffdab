"""Judge a candidate on the test periods: its evaluation, the trivial baseline's, the champion's, the verdict.

The champion is scored only on test periods after the ones it trained on (its `train_window`
and `validation_window` tags); otherwise it would be judged on data it learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from mlops_assets.contract import SPLIT
from mlops_assets.evaluation.evaluate import Evaluation, evaluate_scores, explain, truth
from mlops_assets.evaluation.windows import FairWindow, fair_test_rows, require_rows, split_periods
from mlops_assets.project.spec import Project
from mlops_assets.registry.gate import Verdict, baseline_scores, bless
from mlops_assets.training.model import TabularModel


@dataclass(frozen=True)
class Judgement:
    challenger: Evaluation
    baseline: Evaluation
    baseline_name: str
    champion: Evaluation | None
    challenger_on_fair_rows: Evaluation | None
    window: FairWindow | None
    verdict: Verdict
    shap: pl.DataFrame
    contributions: np.ndarray
    scores: np.ndarray
    test_periods: list[str]


def _baseline(frame: pl.DataFrame, test: pl.DataFrame, project: Project,
              classes: list[str] | None) -> tuple[str, Evaluation]:
    train_truth = truth(frame.filter(pl.col(SPLIT) == "train"), project, classes)
    name, scores = baseline_scores(train_truth, project.problem, classes, test.height)
    return name, evaluate_scores(test, scores, project, classes)


def _champion_pair(candidate: TabularModel, champion: TabularModel, fair: pl.DataFrame,
                   project: Project) -> tuple[Evaluation, Evaluation]:
    """Both models on the same fair rows; a champion that cannot be scored there raises ValueError."""
    if champion.problem != project.problem:
        raise ValueError(f"the champion is a {champion.problem} model, the project is {project.problem}")
    raw = fair.to_pandas()
    try:
        champion_eval = evaluate_scores(fair, champion.predict(raw), project, champion.classes)
    except KeyError as exc:
        raise ValueError(str(exc)) from exc
    return evaluate_scores(fair, candidate.predict(raw), project, candidate.classes), champion_eval


def judge(candidate: TabularModel, champion: TabularModel | None, frame: pl.DataFrame, project: Project,
          champion_tags: dict[str, str] | None = None) -> Judgement:
    """Score the candidate, the baseline and (on fair rows) the champion, and apply the gate."""
    require_rows(frame, project, ("test",))
    test = frame.filter(pl.col(SPLIT) == "test")
    scores = candidate.predict(test.to_pandas())
    challenger = evaluate_scores(test, scores, project, candidate.classes)
    baseline_name, baseline = _baseline(frame, test, project, candidate.classes)
    shap, contributions = explain(candidate, test)
    pair, window, notes = None, None, []
    if champion is not None:
        fair, window = fair_test_rows(test, champion_tags or {})
        notes = list(window.notes)
        if window.comparable:
            try:
                pair = _champion_pair(candidate, champion, fair, project)
            except ValueError as exc:
                reason = (f"the champion cannot be scored on the challenger's test rows ({exc}); "
                          "compare by hand and use approve_model")
                verdict = Verdict(False, [reason], pl.DataFrame(), notes=notes)
                return Judgement(challenger, baseline, baseline_name, None, None, window, verdict, shap,
                                 contributions, scores, split_periods(frame, "test"))
    verdict = bless(challenger, baseline, project, pair, notes)
    return Judgement(challenger, baseline, baseline_name, pair[1] if pair else None, pair[0] if pair else None,
                     window, verdict, shap, contributions, scores, split_periods(frame, "test"))
