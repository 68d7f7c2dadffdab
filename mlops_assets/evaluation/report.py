"""What an evaluation leaves behind: the JSON record for registration, markdown reports, plots."""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from mlops_assets.contract import SPLIT
from mlops_assets.evaluation import plots
from mlops_assets.evaluation.evaluate import markdown_table, report_markdown, truth
from mlops_assets.evaluation.judging import Judgement
from mlops_assets.project.spec import Project
from mlops_assets.registry.gate import Verdict


def artifacts(j: Judgement, frame: pl.DataFrame, project: Project, features: list[str],
              classes: list[str] | None) -> dict[str, bytes | str]:
    """Everything the MLflow run keeps about this evaluation, by artifact path."""
    y = truth(frame.filter(pl.col(SPLIT) == "test"), project, classes)
    out: dict[str, bytes | str] = {
        "evaluation/report.md": evaluation_markdown(j, project),
        "evaluation/report.json": json.dumps(record(j), indent=2, default=str),
        "evaluation/shap_importance.csv": j.shap.write_csv(),
        "plots/shap_summary.png": plots.shap_summary_png(j.contributions, features),
    }
    if project.problem == "binary" and np.unique(y).size == 2:
        out["plots/roc.png"] = plots.roc_curve_png(y, j.scores)
        out["plots/pr.png"] = plots.pr_curve_png(y, j.scores)
        out["plots/calibration.png"] = plots.calibration_png(y, j.scores)
    elif project.problem == "multiclass":
        out["plots/confusion_matrix.png"] = plots.confusion_matrix_png(y, j.scores, classes or [])
    elif project.problem == "regression":
        out["plots/residuals.png"] = plots.residuals_png(y, j.scores)
    return out


def comparison_markdown(verdict: Verdict, limit: int = 40) -> str:
    if verdict.comparison.height == 0:
        return "No comparison with a champion: judged on the floors, the baseline and the slices."
    rows = [[r["slice"], r["value"], r["rows"], r["challenger"], r["champion"], r["worse_by"]]
            for r in verdict.comparison.head(limit).to_dicts()]
    return "\n".join(markdown_table(["slice", "value", "rows", "challenger", "champion", "worse by"], rows))


def baseline_markdown(verdict: Verdict, baseline_name: str) -> str:
    rows = [[r["metric"], r["challenger"], r["baseline"], r["improvement"], r["required"],
             "yes" if r["passed"] else "NO"] for r in verdict.baseline]
    table = markdown_table(["metric", "challenger", "baseline", "improvement", "required", "passed"], rows)
    return f"Baseline: {baseline_name}.\n\n" + "\n".join(table)


def window_markdown(j: Judgement) -> str:
    if j.window is None:
        return "No champion yet."
    w = j.window
    return (f"Champion trained up to {w.champion_trained_until or 'an unrecorded period'}; compared on "
            f"{', '.join(w.compared_periods) or 'no period'} ({w.rows} rows); excluded (the champion trained "
            f"on them): {', '.join(w.excluded_periods) or 'none'}.")


def evaluation_markdown(j: Judgement, project: Project) -> str:
    parts = [f"# Evaluation of the candidate ({project.name})", f"**Verdict:** {j.verdict.summary()}",
             f"Test periods: {', '.join(j.test_periods)}.",
             report_markdown(j.challenger, project, "Candidate on the test periods"),
             "## Candidate vs the trivial baseline", baseline_markdown(j.verdict, j.baseline_name),
             "## Challenger vs champion", window_markdown(j), comparison_markdown(j.verdict)]
    if j.champion is not None:
        parts.append(report_markdown(j.champion, project, "Champion on the fair rows"))
    parts += ["## Global explanation (mean |TreeSHAP|)", shap_markdown(j.shap)]
    return "\n\n".join(parts)


def shap_markdown(shap: pl.DataFrame, top: int = 15) -> str:
    rows = [f"| {r['feature']} | {r['mean_abs_shap']:.4f} | {r['mean_shap']:+.4f} |" for r in shap.head(top).to_dicts()]
    return "| feature | mean abs SHAP | mean SHAP |\n|---|---|---|\n" + "\n".join(rows)


def record(j: Judgement) -> dict:
    """The JSON hand-off to registration: metrics, baseline, champion window, verdict and reasons."""
    return {
        "challenger": j.challenger.to_dict(),
        "baseline": {"name": j.baseline_name, **j.baseline.to_dict()},
        "champion": j.champion.to_dict() if j.champion else None,
        "challenger_on_fair_rows": j.challenger_on_fair_rows.overall if j.challenger_on_fair_rows else None,
        "comparison_window": j.window.to_dict() if j.window else None,
        "test_periods": j.test_periods,
        "blessed": j.verdict.blessed, "reasons": j.verdict.reasons, "notes": j.verdict.notes,
        "baseline_checks": j.verdict.baseline,
        "comparison": j.verdict.comparison.to_dicts(),
        "shap_top": j.shap.head(15).to_dicts(),
    }
