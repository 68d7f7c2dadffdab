"""The model card: what a reviewer reads before approving a version (markdown, logged to MLflow)."""

from __future__ import annotations

from mlops_assets.task import TaskConfig


def _metrics_table(overall: dict[str, float]) -> str:
    rows = [f"| {k} | {v:.4f} |" for k, v in overall.items() if k != "rows"]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def _slices_table(slices: list[dict], metric: str, min_rows: int) -> str:
    rows = [f"| {s['slice']} | {s['value']} | {s['rows']} | {s[metric]:.4f} |" for s in slices if s["rows"] >= min_rows]
    return f"| slice | value | rows | {metric} |\n|---|---|---|---|\n" + "\n".join(rows)


def model_card(task: TaskConfig, version: str, candidate: dict, evaluation: dict, code: str) -> str:
    """Intended use, data, metrics by slice, comparison with the champion, explanations, caveats."""
    challenger = evaluation["challenger"]
    verdict = "blessed" if evaluation["blessed"] else "rejected: " + "; ".join(evaluation["reasons"])
    shap = "\n".join(f"{i + 1}. `{r['feature']}` (mean |SHAP| {r['mean_abs_shap']:.4f})"
                     for i, r in enumerate(evaluation["shap_top"][:10]))
    champion = evaluation.get("champion_version") or "none (first model: floors only)"
    comparison = "\n".join(f"| {r['slice']} | {r['value']} | {r['rows']} | {r['challenger']:.4f} | {r['champion']:.4f} |"
                           for r in evaluation["comparison"][:25])
    return f"""# Model card: {task.model_name} version {version}

## Intended use
{task.description.strip()}
Problem: {task.problem}; decision threshold {task.threshold}. Not for use on routes, carriers or
periods absent from the training data without re-validation.

## Data
Training set `{candidate['training_set_hash']}`; rows per split: {candidate['rows']}.
Features ({len(candidate['features'])}): {', '.join(candidate['features'])}.
Label: `{task.label}`. Split by time: the newest {task.split.test_months} month(s) test, the
{task.split.validation_months} before validate (early stopping, tuning), the rest train.

## Metrics on the test months
{_metrics_table(challenger['overall'])}

### By slice (slices with at least {task.gate.min_slice_rows} rows)
{_slices_table(challenger['slices'], task.metric, task.gate.min_slice_rows)}

Worst slice: {challenger['worst_slice_gap']}

## Comparison with the champion (version {champion}), same rows
| slice | value | rows | challenger | champion |
|---|---|---|---|---|
{comparison}

Verdict: **{verdict}**

## Explanations (global TreeSHAP)
{shap}

## Provenance
MLflow run `{candidate['run_id']}`; code version `{code}`; tuning params {candidate['params']}.

## Caveats
- Trained on one year of NYC departures (for the flights task); seasonality beyond it is unseen.
- Features from the feature repository are joined as of the prediction time; serving must use the
  same online features, or predictions drift from these figures (see the skew report).
- Slice metrics on small slices are noisy; the gate ignores slices under {task.gate.min_slice_rows} rows.
"""
