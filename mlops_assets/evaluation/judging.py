"""Judge a candidate on the newest months: its evaluation, the champion's on the same rows, the verdict."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl

from mlops_assets.evaluation import plots
from mlops_assets.evaluation.evaluate import Evaluation, evaluate_scores, explain, report_markdown
from mlops_assets.registry.gate import Verdict, bless
from mlops_assets.task import TaskConfig
from mlops_assets.training.model import TabularModel


@dataclass(frozen=True)
class Judgement:
    challenger: Evaluation
    champion: Evaluation | None
    verdict: Verdict
    shap: pl.DataFrame
    contributions: np.ndarray
    scores: np.ndarray


def judge(candidate: TabularModel, champion: TabularModel | None, test: pl.DataFrame, task: TaskConfig) -> Judgement:
    """Score challenger and champion on exactly the same test rows and apply the gate."""
    if test.height == 0:
        raise ValueError("the test split is empty: no fresh data to judge the candidate on")
    raw = test.to_pandas()
    scores = candidate.predict(raw)
    challenger_eval = evaluate_scores(test, scores, task)
    shap, contributions = explain(candidate, test)
    try:
        champion_eval = evaluate_scores(test, champion.predict(raw), task) if champion is not None else None
    except KeyError as exc:
        verdict = Verdict(False, [f"the champion cannot be scored on the challenger's test rows ({exc}); "
                                  "compare by hand and use approve_model"], pl.DataFrame())
        return Judgement(challenger_eval, None, verdict, shap, contributions, scores)
    return Judgement(challenger_eval, champion_eval, bless(challenger_eval, champion_eval, task), shap,
                     contributions, scores)


def artifacts(j: Judgement, test: pl.DataFrame, task: TaskConfig, features: list[str]) -> dict[str, bytes | str]:
    """Everything the MLflow run keeps about this evaluation, by artifact path."""
    y = test[task.label].to_numpy()
    out: dict[str, bytes | str] = {
        "evaluation/report.md": evaluation_markdown(j, task),
        "evaluation/report.json": json.dumps(record(j), indent=2, default=str),
        "evaluation/shap_importance.csv": j.shap.write_csv(),
        "plots/shap_summary.png": plots.shap_summary_png(j.contributions, features),
    }
    if task.problem == "binary":
        out["plots/roc.png"] = plots.roc_curve_png(y, j.scores)
        out["plots/pr.png"] = plots.pr_curve_png(y, j.scores)
        out["plots/calibration.png"] = plots.calibration_png(y, j.scores)
    else:
        out["plots/residuals.png"] = plots.residuals_png(y, j.scores)
    return out


def comparison_markdown(verdict: Verdict, limit: int = 40) -> str:
    if verdict.comparison.height == 0:
        return "No champion yet: judged on the floors only."
    lines = ["| slice | value | rows | challenger | champion | worse by |", "|---|---|---|---|---|---|"]
    for r in verdict.comparison.head(limit).to_dicts():
        lines.append(f"| {r['slice']} | {r['value']} | {r['rows']} | {r['challenger']:.4f} | "
                     f"{r['champion']:.4f} | {r['worse_by']:.4f} |")
    return "\n".join(lines)


def evaluation_markdown(j: Judgement, task: TaskConfig) -> str:
    parts = [f"# Evaluation of the candidate ({task.name})", f"**Verdict:** {j.verdict.summary()}",
             report_markdown(j.challenger, task, "Candidate on the test months")]
    if j.champion is not None:
        parts.append(report_markdown(j.champion, task, "Champion on the same rows"))
    parts += ["## Challenger vs champion", comparison_markdown(j.verdict),
              "## Global explanation (mean |TreeSHAP|)", shap_markdown(j.shap)]
    return "\n\n".join(parts)


def shap_markdown(shap: pl.DataFrame, top: int = 15) -> str:
    rows = [f"| {r['feature']} | {r['mean_abs_shap']:.4f} | {r['mean_shap']:+.4f} |" for r in shap.head(top).to_dicts()]
    return "| feature | mean abs SHAP | mean SHAP |\n|---|---|---|\n" + "\n".join(rows)


def record(j: Judgement) -> dict:
    """The JSON hand-off to registration: metrics, verdict and reasons."""
    return {
        "challenger": j.challenger.to_dict(),
        "champion": j.champion.to_dict() if j.champion else None,
        "blessed": j.verdict.blessed, "reasons": j.verdict.reasons,
        "comparison": j.verdict.comparison.to_dicts(),
        "shap_top": j.shap.head(15).to_dicts(),
    }
