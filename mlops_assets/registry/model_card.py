"""The model card: what a reviewer reads before approving a version, generated from the project file.

Every word about the data comes from the project (description, sources, feature views, label,
splits, slices) and every figure from the candidate and evaluation records.
"""

from __future__ import annotations

from mlops_assets.project.spec import LabelSpec, Project, duration_label


def _table(header: list[str], rows: list[list[object]]) -> str:
    def cell(v: object) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def label_text(label: LabelSpec) -> str:
    if label.threshold is not None:
        return f"`{label.name}` = 1 when `{label.threshold.column}` > {label.threshold.above}, else 0"
    if label.future is not None:
        return f"`{label.name}` = `{label.future.column}` of the same entity {duration_label(label.future.offset)} later"
    return f"`{label.name}` = `{label.column}`"


def data_section(project: Project) -> str:
    sources = [[n, s.kind, s.time or "-", s.description.strip() or "-"] for n, s in project.sources.items()]
    views = [[n, v.source, v.entity, v.known_at or "static", duration_label(v.ttl) if v.ttl else "-", v.description.strip() or "-"]
             for n, v in project.feature_views.items() if n in project.used_views]
    return "\n\n".join([
        _table(["source", "kind", "time column", "description"], sources),
        "Feature views, each joined as of the prediction time (an event is used only once known):",
        _table(["view", "source", "entity", "known at", "ttl", "description"], views) if views else "_No views._",
    ])


def metrics_section(evaluation: dict, project: Project) -> str:
    """Candidate vs the trivial baseline vs the champion (on the fair rows), overall."""
    challenger, baseline = evaluation["challenger"]["overall"], evaluation["baseline"]["overall"]
    fair, champion = evaluation.get("challenger_on_fair_rows") or {}, (evaluation.get("champion") or {}).get("overall", {})
    rows = [[m, v, baseline.get(m, float("nan")), fair.get(m, "-"), champion.get(m, "-")]
            for m, v in challenger.items() if m != "rows"]
    return (f"Baseline: {evaluation['baseline']['name']}. Primary metric: `{project.primary_metric}`.\n\n"
            + _table(["metric", "candidate", "baseline", "candidate (fair rows)", "champion (fair rows)"], rows))


def slices_section(evaluation: dict, project: Project) -> str:
    metric, min_rows = project.primary_metric, project.gate.min_slice_rows
    rows = [[s["slice"], s["value"], s["rows"], s[metric]] for s in evaluation["challenger"]["slices"]
            if s["rows"] >= min_rows]
    declared = ", ".join(s if isinstance(s, str) else f"{s.name} ({s.column} cut at {s.bins})" for s in project.slices)
    return (f"Declared slices: {declared or 'none'}. Slices with at least {min_rows} rows:\n\n"
            + _table(["slice", "value", "rows", metric], rows)
            + "\n\n" + worst_slice_text(evaluation["challenger"]["worst_slice_gap"], min_rows))


def worst_slice_text(gap: dict, min_rows: int) -> str:
    if gap.get("slice") is None:
        return f"Worst slice: none with at least {min_rows} rows."
    return (f"Worst slice: {gap['slice']}={gap['value']} with {gap['metric']} {gap['worst']:.4f}, "
            f"{gap['gap']:.4f} behind overall ({gap['slices_considered']} slices considered).")


def window_section(candidate: dict, evaluation: dict, project: Project) -> str:
    window = evaluation.get("comparison_window") or {}
    split = project.split
    lines = [f"Split by {split.granularity}: the newest {split.test} test, the {split.validation} before them "
             f"validate (early stopping, tuning), gap {split.gap}, the rest train.",
             f"- train: {candidate.get('train_window') or '?'}; validation: {candidate.get('validation_window') or '?'}; "
             f"test: {', '.join(evaluation.get('test_periods', [])) or '?'}",
             f"- rows per split: {candidate['rows']}"]
    if window:
        lines.append(f"- champion compared on {', '.join(window['compared_periods']) or 'no period'}; excluded "
                     f"(the champion trained on them): {', '.join(window['excluded_periods']) or 'none'}")
    return "\n".join(lines)


def model_card(project: Project, version: str, candidate: dict, evaluation: dict, code: str) -> str:
    """Intended use, data, label, splits, metrics vs baseline vs champion, slices, explanations, limits."""
    verdict = "blessed" if evaluation["blessed"] else "rejected: " + "; ".join(evaluation["reasons"])
    notes = "".join(f"\n- note: {n}" for n in evaluation.get("notes", []))
    shap = "\n".join(f"{i + 1}. `{r['feature']}` (mean |SHAP| {r['mean_abs_shap']:.4f})"
                     for i, r in enumerate(evaluation["shap_top"][:10]))
    lead = project.prediction_time.lead
    when = f"`{project.prediction_time.column}`" + (f" minus {duration_label(lead)}" if lead.total_seconds() else "")
    classes = f"; classes {', '.join(candidate['classes'])}" if candidate.get("classes") else ""
    threshold = f"; decision threshold {project.threshold}" if project.problem == "binary" else ""
    champion = evaluation.get("champion_version") or "none (first model)"
    return f"""# Model card: {project.model_name} version {version}

## Intended use
{project.description.strip()}

Problem: {project.problem}{classes}{threshold}. Project `{project.name}`
(file hash `{candidate.get('project_hash', '?')}`).

## Data
{data_section(project)}

Label: {label_text(project.label)}. Prediction time: {when}.
Features ({len(candidate['features'])}): {', '.join(candidate['features'])}.
Training set `{candidate['training_set_hash']}`.

## Splits
{window_section(candidate, evaluation, project)}

## Metrics on the test periods
{metrics_section(evaluation, project)}

Champion: version {champion}. Verdict: **{verdict}**{notes}

## Slices
{slices_section(evaluation, project)}

## Explanations (global TreeSHAP)
{shap}

## Provenance
MLflow run `{candidate['run_id']}`; code version `{code}`; tuning params {candidate['params']}.

## Limits
- Trained on {candidate.get('train_window') or 'the train periods'} only; periods, seasons or entities
  absent from them are unseen, and a category unseen in training is treated as missing.
- Features are joined as of the prediction time; serving must use the same online features, or
  predictions drift from these figures (see the skew report).
- Slice metrics on small slices are noisy; the gate ignores slices under {project.gate.min_slice_rows} rows.
- The champion is compared only on test periods after the ones it trained on.
"""
